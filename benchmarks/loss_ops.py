"""How many operations a loss dispatches per training call: the host cost that a GPU waits on.

On a GPU a small loss is launch-bound: each operation costs a few microseconds of CPU dispatch
(and a kernel launch) whatever its size, so the count, not the arithmetic, sets its time. This
counts, for one training-mode forward + backward:

* ``python``: torch calls made from Python in the forward (``TorchFunctionMode``);
* ``ATen fwd`` / ``ATen bwd``: the ATen operators they and the backward run (``TorchDispatchMode``);
* ``kernels``: those ATen operators that launch work on a GPU (views, ``detach`` and the wrapped
  Python scalars of ``torch.where(c, x, 0.0)`` launch nothing);
* ``reads``: values read back to the host (``aten._local_scalar_dense``: ``.item()``, ``int(t)``): each a
  device sync on a GPU.

The losses run on CPU tensors but take the path they take on a GPU: the bad-input check that
reads the labels at once where that is free (a CPU tensor) is switched off for the count.

    python benchmarks/loss_ops.py [--shape 256x1000] [--src PATH] [--show]

``--src`` imports ``ols`` from another tree (say, a ``git worktree`` of an older commit) to compare.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode


class CountPython(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


#: ATen operators that launch no GPU kernel: views, aliases and CPU-side wrapped scalars
NO_KERNEL = {"aten.detach", "aten.unsqueeze", "aten.squeeze", "aten.view", "aten.expand", "aten.slice",
             "aten.select", "aten.alias", "aten.scalar_tensor", "aten._local_scalar_dense", "aten.t",
             "aten.transpose", "aten.as_strided", "aten._unsafe_view", "aten.permute", "aten.lift_fresh",
             "aten.empty", "aten.empty_like"}


class CountAten(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count(loss_fn, z0, y):
    """Counts of one forward + backward (after a warm-up call): see the module docstring."""
    loss_fn(z0.clone().requires_grad_(), y).backward()
    z = z0.clone().requires_grad_()
    with CountPython() as py, CountAten() as fwd:
        loss = loss_fn(z, y)
    with CountAten() as bwd:
        loss.backward()
    both = fwd.calls + bwd.calls
    kernels = sum(n for op, n in both.items() if op not in NO_KERNEL)
    return {"python": sum(py.calls.values()), "fwd": sum(fwd.calls.values()), "bwd": sum(bwd.calls.values()),
            "kernels": kernels, "reads": both["aten._local_scalar_dense"], "ops": fwd.calls,
            "bwd_ops": bwd.calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="256x1000", metavar="BxK")
    parser.add_argument("--src", default=None, help="import ols from this src/ directory instead")
    parser.add_argument("--show", action="store_true", help="list the ATen operators of each forward")
    parser.add_argument("--quick", action="store_true", help="a smoke run at (16, 10) (the tests run it)")
    args = parser.parse_args()
    if args.quick:
        args.shape = "16x10"
    if args.src:
        sys.path.insert(0, args.src)
    from ols import OnlineLabelSmoothing, create_loss

    try:  # the path a GPU takes: no read of the labels at once (an older tree has no such switch)
        import ols.losses.base as base

        base.reads_are_free = lambda t: False
    except AttributeError:
        pass

    b, k = (int(v) for v in args.shape.split("x"))
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(b, k, generator=g) * 2
    y = torch.randint(0, k, (b,), generator=g)
    y[: b // 2] = z0[: b // 2].argmax(1)  # half the rows correct: the statistics are fed
    losses = {"F.cross_entropy": F.cross_entropy, "ce (registry)": create_loss("ce", k),
              "ls (registry)": create_loss("ls", k), "ols": OnlineLabelSmoothing(k),
              "ols, validate=False": OnlineLabelSmoothing(k, validate=False),
              "ols, eval mode": OnlineLabelSmoothing(k).eval(),
              "ols topk=32": OnlineLabelSmoothing(k, topk=32)}
    print(f"ols from {sys.modules['ols'].__file__}, (B, K) = ({b}, {k}), torch {torch.__version__}")
    print("\n| loss | python calls (fwd) | ATen fwd | ATen bwd | GPU kernels (fwd + bwd) | host reads |")
    print("|---|---|---|---|---|---|")
    for name, fn in losses.items():
        c = count(fn, z0, y)
        print(f"| {name} | {c['python']} | {c['fwd']} | {c['bwd']} | {c['kernels']} | {c['reads']} |")
        if args.show:
            for part in ("ops", "bwd_ops"):
                print(f"|  | {part}: " + ", ".join(f"{op.replace('aten.', '')} {n}"
                                                 for op, n in c[part].most_common()) + " | | | | |")


if __name__ == "__main__":
    main()
