"""Float32 OLS against the same loss in float64, with learned (peaked) soft labels, beside F.cross_entropy.

    python benchmarks/loss_precision.py [--src PATH]

Each loss is computed in float32 and in float64 from the same logits, targets and soft labels;
the table gives the relative error of the float32 value. ``--src`` imports ``ols`` from another
tree (a ``git worktree`` of an older commit) to compare.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run at (16, 100) (the tests run it)")
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    from ols import OnlineLabelSmoothing

    print("| (B, K) | OLS float32 relative error | F.cross_entropy float32 relative error |")
    print("|---|---|---|")
    for b, k in ((16, 100),) if args.quick else ((256, 1000), (256, 10_000), (512, 10_000)):
        g = torch.Generator().manual_seed(0)
        z = torch.randn(b, k, generator=g) * 3
        y = torch.randint(0, k, (b,), generator=g)
        soft = torch.softmax(torch.randn(k, k, generator=g) * 4, 1)  # peaked rows, as learned ones are
        errors = []
        for dtype in (torch.float32, torch.float64):
            crit = OnlineLabelSmoothing(k).eval()
            crit.store.soft_labels = soft.clone()
            errors.append(crit(z.to(dtype), y).double())
        ce32, ce64 = F.cross_entropy(z, y).double(), F.cross_entropy(z.double(), y)
        print(f"| ({b}, {k:,}) | {float((errors[0] - errors[1]).abs() / errors[1]):.1e} | "
              f"{float((ce32 - ce64).abs() / ce64):.1e} |")


if __name__ == "__main__":
    main()
