"""Two source trees of ``ols`` side by side in one process: top-k OLS training forward + backward.

    python benchmarks/topk_ab.py OLD_SRC NEW_SRC [--repeats R]

``OLD_SRC`` and ``NEW_SRC`` are ``src`` folders, e.g. of two ``git worktree`` checkouts. Each
round times ``F.cross_entropy``, the old loss and the new one on the same logits (half the
rows correct), so drift on a shared machine hits all three alike; the table gives medians
and ratios to ``F.cross_entropy``. Only eager mode: the second tree's ``ols::add_rows``
operator is not registered again (one registration per process).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def _import_ols(src: str):
    for name in [n for n in sys.modules if n == "ols" or n.startswith("ols.")]:
        del sys.modules[name]
    sys.path.insert(0, src)
    try:
        import ols
    finally:
        sys.path.remove(src)
    return ols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_src")
    parser.add_argument("new_src")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    old = _import_ols(args.old_src)
    if hasattr(torch.library, "register_fake"):
        del torch.library.register_fake  # the second tree then skips its operator (eager only)
    new = _import_ols(args.new_src)
    print(f"# {old.__file__} against {new.__file__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| (B, K) | F.cross_entropy ms | old ms | new ms | old / CE | new / CE |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for b, k_all in ((256, 21_841), (128, 100_000)):
        z0 = torch.randn(b, k_all, generator=g)
        y = torch.randint(0, k_all, (b,), generator=g)
        hit = torch.rand(b, generator=g) < 0.5
        z0[hit, y[hit]] += 10.0
        losses = {"ce": F.cross_entropy, "old": old.OnlineLabelSmoothing(k_all, topk=32),
                  "new": new.OnlineLabelSmoothing(k_all, topk=32)}
        times = {name: [] for name in losses}
        for rnd in range(args.repeats + 1):
            for name, fn in losses.items():
                z = z0.clone().requires_grad_()
                t0 = time.perf_counter()
                fn(z, y).backward()
                if rnd:  # round 0 warms up
                    times[name].append(time.perf_counter() - t0)
        med = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
        print(f"| ({b}, {k_all:,}) | {med['ce']:.1f} | {med['old']:.1f} | {med['new']:.1f} | "
              f"{med['old'] / med['ce']:.2f} | {med['new'] / med['ce']:.2f} |")


if __name__ == "__main__":
    main()
