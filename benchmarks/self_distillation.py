"""The training-step cost of self-distillation: exits (BYOT) and two views (Xu et al.) against plain CE.

On CIFAR-100-shaped synthetic data (3x32x32 uint8, crop + flip on the device) it times
whole training steps of ``ols.engine.train_one_epoch`` (data, augmentation, forward,
loss, backward, SGD) of one model in these set-ups:

- ``ce``: the plain network and cross-entropy (the reference, 1.00);
- ``ols``: the plain network and OLS;
- ``byot``, ``byot+ols``, ``ds+ols``: the network with exits (``--exits byot``) and that loss;
- ``ddgsd``: the plain network on two views of each image, one forward of ``2B``.

    python benchmarks/self_distillation.py [--model resnet56] [--device cpu] [--batch-size 128]
                                           [--steps 4] [--rounds 3]

Set-ups run in interleaved rounds, each figure the median over rounds, so drift of a
shared machine hits all alike; the ratio to ``ce`` is the figure to quote.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from ols.config import TrainConfig
from ols.data.augment import BatchAugment
from ols.data.batches import TensorSource
from ols.data.splits import TensorSplit
from ols.engine import EpochState, train_one_epoch
from ols.losses.protocol import views_of
from ols.models import Classifier, create_model
from ols.run_setup import build_loss, build_task

SETUPS = {"ce": ("none", "ce"), "ols": ("none", "ols"), "byot": ("byot", "byot"),
          "byot+ols": ("byot", "byot+ols"), "ds+ols": ("byot", "ds+ols"), "ddgsd": ("none", "ddgsd")}


def build(name: str, model_name: str, num_classes: int, device: torch.device):
    """The model, task and optimiser of a set-up, chosen by the same run set-up as ``ols train``."""
    exits, loss = SETUPS[name]
    torch.manual_seed(0)
    model = Classifier(create_model(model_name, num_classes, exits=exits), (0.5,) * 3, (0.25,) * 3).to(device)
    cfg = TrainConfig(dataset="synthetic-cifar", model=model_name, loss=loss, exits=exits)  # crop + flip
    crit = build_loss(cfg, num_classes, 0, model.num_exits).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, build_task(cfg, crit, model), opt, views_of(crit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--quick", action="store_true", help="a smoke run: resnet20, batch 4, 1 step, 1 round")
    args = p.parse_args()
    if args.quick:
        args.model, args.batch_size, args.steps, args.rounds = "resnet20", 4, 1, 1
    device = torch.device(args.device)
    n, k = args.batch_size * (args.steps + 1), 100
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, k, (n,), generator=g)
    split = TensorSplit(x, y, x[:8], y[:8], k, tuple(map(str, range(k))), (0.5,) * 3, (0.25,) * 3)
    source = TensorSource(split, device, BatchAugment(("crop", "flip")))
    labels = y.to(device)
    built = {name: build(name, args.model, k, device) for name in args.setups}
    times = {name: [] for name in args.setups}
    for r in range(args.rounds):
        order = args.setups if r % 2 == 0 else args.setups[::-1]
        for name in order:
            model, task, opt, views = built[name]
            gen = torch.Generator(device=device).manual_seed(r)
            warm = EpochState.new(n, device)  # one step first: allocator and autograd warm-up
            train_one_epoch(model, task, opt, source.train(range(args.batch_size), args.batch_size, 0, gen,
                                                           views=views), labels, warm, 1)
            state = EpochState.new(n, device)
            batches = source.train(range(args.batch_size, n), args.batch_size, 0, gen, views=views)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_one_epoch(model, task, opt, batches, labels, state, args.steps)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["ce"]) if "ce" in times else None
    print(f"# {args.model}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"{args.device}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'set-up':<10} {'step (s)':>9} {'x ce':>6}")
    for name in args.setups:
        med = statistics.median(times[name])
        print(f"{name:<10} {med:>9.3f} {med / base if base else float('nan'):>6.2f}")


if __name__ == "__main__":
    main()
