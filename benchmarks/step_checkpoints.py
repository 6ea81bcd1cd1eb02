"""The cost of ``--save-every-steps``: the steps that do not save, and one in-epoch checkpoint.

A CIFAR-shaped synthetic run (3x32x32, 100 classes, OLS) built as ``ols train`` builds it trains
``--steps`` steps of ``ols.engine.train_one_epoch`` three ways, in interleaved rounds:

- ``off``: no in-epoch checkpoints (``--save-every-steps 0``);
- ``armed``: ``--save-every-steps`` larger than the timed steps, so the hook runs after every step and
  never writes: what every other step pays;
- ``saving``: a checkpoint every ``--every`` steps, written to ``--out`` (atomic: a temporary file,
  then a rename).

It also times one write (:func:`ols.trainer.write_checkpoint`) on its own and reports its size.

    python benchmarks/step_checkpoints.py [--model resnet56] [--steps 40] [--every 10] [--rounds 3]
                                          [--out /tmp/ols-ckpt-bench] [--quick]

Each figure is the median over rounds; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ols.config import TrainConfig
from ols.distributed import DistContext
from ols.engine import EpochState, train_one_epoch
from ols.run_setup import augmentation_generator, build_run
from ols.run_state import RunState
from ols.trainer import step_checkpoints, write_checkpoint


def timed_steps(r, state, steps: int, every: int) -> float:
    """Seconds a step over ``steps`` steps of epoch 1, with in-epoch checkpoints every ``every`` (0: off)."""
    import dataclasses

    r.settings = dataclasses.replace(r.settings, save_every_steps=every)
    gen = augmentation_generator(r.ctx.device, 0, 1)
    es = EpochState.new(r.num_samples, r.ctx.device)
    hook = step_checkpoints(r, state, es, gen, 0.1)
    batches = r.epoch_batches(1, 0, gen)
    window = (b for i, b in zip(range(steps + 2), batches))
    first = [next(window), next(window)]  # warm-up steps, not timed
    train_one_epoch(r.train_model, r.task, r.optimizer, iter(first), r.train_y, es, r.steps_per_epoch,
                    r.scheduler, r.precision)
    start = time.perf_counter()
    train_one_epoch(r.train_model, r.task, r.optimizer, window, r.train_y, es, r.steps_per_epoch,
                    r.scheduler, r.precision, on_step=hook)
    if r.ctx.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="")
    p.add_argument("--quick", action="store_true", help="a smoke run: a small CNN, a few steps")
    a = p.parse_args()
    if a.quick:
        a.model, a.batch_size, a.steps, a.every, a.rounds = "cnn", 32, 4, 2, 1
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="ols-ckpt-bench-"))
    per_class = max(1, (a.steps + 2) * a.batch_size // 100 + 1)
    cfg = TrainConfig(dataset="synthetic-cifar", data_args={"num_classes": 100, "train_per_class": per_class,
                                                            "test_per_class": 1},
                      model=a.model, loss="ols", batch_size=a.batch_size, epochs=1, device=a.device,
                      augment="crop,flip", out=str(out), progress=False)
    from ols.utils.device import resolve_device

    r = build_run(cfg, DistContext(device=resolve_device(a.device)))
    r.out.mkdir(parents=True, exist_ok=True)
    state = RunState()
    times = {"off": [], "armed": [], "saving": []}
    for _ in range(a.rounds):
        for name, every in (("off", 0), ("armed", 10**9), ("saving", a.every)):
            times[name].append(timed_steps(r, state, a.steps, every))
    writes = []
    es = EpochState.new(r.num_samples, r.ctx.device)
    gen = augmentation_generator(r.ctx.device, 0, 1)
    for _ in range(max(3, a.rounds)):
        start = time.perf_counter()
        write_checkpoint(r, state, (es, gen, 0.1))
        writes.append(time.perf_counter() - start)
    size = (r.out / "checkpoint.pt").stat().st_size / 2**20
    device = torch.cuda.get_device_name() if r.ctx.device.type == "cuda" else platform.processor() or "cpu"
    print(f"{a.model}, batch {a.batch_size}, 100 classes, OLS, {device}, torch {torch.__version__}; "
          f"median of {a.rounds} rounds of {a.steps} steps")
    print("| set-up | ms a step | vs off |\n|---|---:|---:|")
    off = statistics.median(times["off"])
    for name, label in (("off", "--save-every-steps 0"), ("armed", "hook armed, no write in the window"),
                        ("saving", f"--save-every-steps {a.every} (writes)")):
        t = statistics.median(times[name])
        print(f"| {label} | {1000 * t:.1f} | {t / off:.3f} |")
    print(f"one in-epoch checkpoint: {1000 * statistics.median(writes):.0f} ms, {size:.1f} MiB ({out})")


if __name__ == "__main__":
    main()
