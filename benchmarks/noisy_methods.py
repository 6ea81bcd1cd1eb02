"""The cost of the noisy-label methods against CE: a training step, and the work once an epoch.

On CIFAR-100-shaped synthetic data (3x32x32 uint8, crop + flip on the device) it times whole
training steps of ``ols.engine.train_one_epoch`` (augmentation, the method's forwards, the loss,
backward, SGD) for ``ce`` and each method, with CE and with OLS under it (``+ols``), each in the
phase where it costs the most (``bmm`` bootstrapping, ``pencil`` learning its labels,
``self_learning`` after a correction, ``coteaching_plus`` on the disagreement set, ``dividemix`` after
its division). The two-network methods (``coteaching``, ``coteaching_plus``, ``dividemix``) train a
:class:`~ols.models.pair.NetworkPair`: their step is both networks' step. It also times each
method's once-an-epoch work (``Task.end_epoch``: the beta mixture's fit, the prototypes and the
correction, DivideMix's two mixtures) over ``--samples`` images, against the time of one epoch of CE
steps over the same images.

    python benchmarks/noisy_methods.py [--model resnet56] [--device cpu] [--batch-size 128] [--steps 4]
                                       [--rounds 3] [--samples 2048] [--quick]

Set-ups run in interleaved rounds and each figure is the median over rounds, so the drift of a shared
machine hits all alike; the ratio to ``ce`` is the figure to quote. ``--quick`` is a smoke run (a small
CNN, a few steps) that the tests run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from ols.config import TrainConfig
from ols.data.augment import BatchAugment
from ols.data.batches import TensorSource
from ols.data.splits import TensorSplit
from ols.engine import EpochState, train_one_epoch
from ols.losses.protocol import set_progress
from ols.losses.registry import loss_networks
from ols.models import Classifier, create_model
from ols.models.pair import NetworkPair
from ols.run_setup import build_loss, build_task
from ols.tasks.base import TaskData

METHODS = ("ce", "l2rw", "mwnet", "bmm", "pencil", "self_learning", "coteaching", "coteaching_plus", "elr",
           "dividemix")
#: phases set so the timed epoch (3 of 4) is each method's costliest
PHASES = {"bmm": {"warmup_epochs": 1}, "pencil": {"backbone_epochs": 1, "joint_epochs": 3},
          "self_learning": {"initial_epochs": 1, "samples_per_class": 64},
          "coteaching": {"gradual_epochs": 1}, "coteaching_plus": {"gradual_epochs": 1, "init_epochs": 1},
          "dividemix": {"warmup_epochs": 1}}
EPOCHS, TIMED_EPOCH = 4, 3


def setups(methods):
    """``(name, loss, loss args)``: CE, then every method with CE and with OLS under it."""
    out = []
    for m in methods:
        out.append((m, m, dict(PHASES.get(m, {}))))
        if m != "ce":
            out.append((f"{m}+ols", m, {**PHASES.get(m, {}), "base": "ols"}))
    return out


def build(loss: str, loss_args: dict, model_name: str, source, labels, meta, device, batch: int, k: int):
    """Model, task and optimiser as ``ols train`` builds them, the task attached to the data."""
    torch.manual_seed(0)
    n = labels.shape[0]
    def classifier():
        return Classifier(create_model(model_name, k, in_channels=3), (0.5,) * 3, (0.25,) * 3)

    model = classifier()
    if loss_networks(loss) == 2:
        model = NetworkPair(model, classifier())
    model = model.to(device)
    cfg = TrainConfig(model=model_name, loss=loss, loss_args=loss_args, epochs=EPOCHS, batch_size=batch,
                      meta_size=len(meta) if loss in ("l2rw", "mwnet") else None, noise_rate=0.4)
    crit = build_loss(cfg, k, n).to(device)
    task = build_task(cfg, crit, model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train_index = np.setdiff1d(np.arange(n), meta)
    task.attach(TaskData(source=source, labels=labels, true_labels=labels, flipped=labels < 0,
                         train_index=train_index, meta_index=meta, batch_size=batch, eval_batch_size=256,
                         seed=0, epochs=EPOCHS, lr=lambda: float(opt.param_groups[0]["lr"]),
                         steps_per_epoch=-(-len(train_index) // batch)))
    return model, task, opt


def timed(fn, *args) -> float:
    """Seconds ``fn(*args)`` takes, the device synchronised before and after."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--samples", type=int, default=2048, help="images of the once-an-epoch passes")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: cnn16 on 16x16 images of 10 classes, batch 8, 1 step, 1 round")
    args = p.parse_args()
    side, k = 32, 100
    if args.quick:
        args.model, args.batch_size, args.steps, args.rounds, args.samples = "cnn16", 8, 1, 1, 64
        side, k = 16, 10
    device, b = torch.device(args.device), args.batch_size
    n = max(args.samples, b * (args.steps + 1)) + b  # the last b images: the clean held-out set
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)
    y = torch.randint(0, k, (n,), generator=g)
    split = TensorSplit(x, y, x[:8], y[:8], k, tuple(map(str, range(k))), (0.5,) * 3, (0.25,) * 3)
    source = TensorSource(split, device, BatchAugment(("crop", "flip")))
    labels, meta = y.to(device), np.arange(n - b, n)
    rows = setups(args.methods)
    built = {name: build(loss, la, args.model, source, labels, meta, device, b, k) for name, loss, la in rows}
    for model, task, _ in built.values():  # each method in its costliest phase
        for epoch in range(1, TIMED_EPOCH):
            task.end_epoch(epoch, model)
        task.set_epoch(TIMED_EPOCH)
        set_progress(task, (TIMED_EPOCH - 1) / EPOCHS)
    step = {name: [] for name in built}
    hook = {name: [] for name in built}
    for r in range(args.rounds):
        for name in (built if r % 2 == 0 else list(built)[::-1]):
            model, task, opt = built[name]
            gen = torch.Generator(device=device).manual_seed(r)
            warm = EpochState.new(n, device)  # one step first: allocator and autograd warm-up
            first = source.train(range(b), b, 0, gen, views=task.views)
            train_one_epoch(model, task, opt, first, labels, warm, 1)
            state = EpochState.new(n, device)
            batches = source.train(range(b, b * (args.steps + 1)), b, 0, gen, views=task.views)
            step[name].append(timed(train_one_epoch, model, task, opt, batches, labels, state,
                                    args.steps) / args.steps)
            hook[name].append(timed(task.end_epoch, TIMED_EPOCH, model))
    ce_step = statistics.median(step["ce"]) if "ce" in step else None
    epoch_steps = -(-args.samples // b)
    print(f"# {args.model}, batch {b}, {args.steps} steps x {args.rounds} rounds, once-an-epoch work over "
          f"{args.samples} images; {args.device} ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}")
    print("| set-up | ms / step | step vs CE | once an epoch (s) | vs an epoch of CE steps |")
    print("|---|---|---|---|---|")
    for name in built:
        ms, per_epoch = 1e3 * statistics.median(step[name]), statistics.median(hook[name])
        ratio = f"{statistics.median(step[name]) / ce_step:.2f}" if ce_step else "-"
        epoch_ratio = f"{per_epoch / (ce_step * epoch_steps):.2f}" if ce_step and per_epoch > 1e-3 else "-"
        print(f"| {name} | {ms:.1f} | {ratio} | {per_epoch:.2f} | {epoch_ratio} |")


if __name__ == "__main__":
    main()
