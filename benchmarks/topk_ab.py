"""Two source trees of ``ols`` side by side in one process: OLS training forward + backward.

    python benchmarks/topk_ab.py OLD_SRC NEW_SRC [--repeats R] [--dense] [--shapes BxK ...]

Top-k OLS (``topk=32``) at (256, 21,841) and (128, 100,000), or with ``--dense`` dense OLS
at the shapes of ``loss_overhead.py``, each round a loop of calls at the small ones;
``--shapes`` replaces either list.

``OLD_SRC`` and ``NEW_SRC`` are ``src`` folders, e.g. of two ``git worktree`` checkouts. Each
round times ``F.cross_entropy``, the old loss and the new one on the same logits (half the
rows correct unless ``--correct``), so drift on a shared machine hits all three alike; the table gives medians
and ratios to ``F.cross_entropy``. Only eager mode: the second tree's ``ols::add_rows``
operator is not registered again (one registration per process).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from unittest import mock

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


class _NoRegistration:
    """Stands in for ``torch.library.Library`` while the second tree imports: it registers nothing."""

    def __init__(self, *args) -> None:
        pass

    def define(self, *args) -> None:
        pass

    def impl(self, *args) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_src")
    parser.add_argument("new_src")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--dense", action="store_true", help="dense OLS at (128, 10) ... (256, 10,000)")
    parser.add_argument("--correct", type=float, default=0.5, help="fraction of rows made correct")
    parser.add_argument("--shapes", nargs="+", metavar="BxK", help="shapes to time, e.g. 256x2000 128x1000")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: one round at (16, 500) (the tests run it)")
    args = parser.parse_args()
    if args.quick:
        args.shapes, args.repeats = ["16x500"], 1
    try:  # the BxK form of loss_overhead.py
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else None
    except ValueError:
        parser.error(f"--shapes takes BxK pairs such as 256x1000, got {args.shapes}")
    if not 0.0 <= args.correct <= 1.0:
        parser.error(f"--correct is a fraction of the rows, in [0, 1]; got {args.correct}")
    old = _import_ols(args.old_src)
    # one registration of ols::add_rows per process: the second tree's is skipped (it is used compiled only)
    with mock.patch.object(torch.library, "Library", _NoRegistration), \
            mock.patch.object(torch.library, "register_fake", lambda *args, **kwargs: None):
        new = _import_ols(args.new_src)
    print(f"# {old.__file__} against {new.__file__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| (B, K) | F.cross_entropy µs | old µs | new µs | old / CE | new / CE |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    if shapes is None:
        shapes = ((128, 10), (128, 100), (256, 1000), (256, 10_000)) if args.dense \
            else ((256, 21_841), (128, 100_000))
    topk = None if args.dense else 32
    for b, k_all in shapes:
        inner = max(1, 200_000 // (b * k_all))
        z0 = torch.randn(b, k_all, generator=g)
        y = torch.randint(0, k_all, (b,), generator=g)
        hit = torch.rand(b, generator=g) < args.correct
        z0[hit, y[hit]] += 10.0
        losses = {"ce": F.cross_entropy, "old": old.OnlineLabelSmoothing(k_all, topk=topk),
                  "new": new.OnlineLabelSmoothing(k_all, topk=topk)}
        times = {name: [] for name in losses}
        for rnd in range(args.repeats + 1):
            for name, fn in losses.items():
                t0 = time.perf_counter()
                for _ in range(inner):
                    z = z0.clone().requires_grad_()
                    fn(z, y).backward()
                if rnd:  # round 0 warms up
                    times[name].append((time.perf_counter() - t0) / inner)
        med = {name: 1e6 * statistics.median(ts) for name, ts in times.items()}
        print(f"| ({b}, {k_all:,}) | {med['ce']:.0f} | {med['old']:.0f} | {med['new']:.0f} | "
              f"{med['old'] / med['ce']:.2f} | {med['new'] / med['ce']:.2f} |")


if __name__ == "__main__":
    main()
