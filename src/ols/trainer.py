"""A training run end to end: run directory, checkpoints, resume, interruption and ``torchrun``.

``fit(cfg)`` starts a run in ``cfg.out``; ``resume(run_dir)`` continues one from its
``checkpoint.pt``. Both go through :func:`run`, which owns the epoch loop.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn

from .checkpoint import CHECKPOINT, load_checkpoint, rng_state, save_checkpoint, set_rng_state, snapshot_path
from .config import TrainConfig, config_from_dict
from .data import load_dataset
from .data.batches import make_source
from .distributed import DistContext, barrier, same_on_all_ranks, setup
from .engine import (
    EpochState,
    augmentation_generator,
    build_loss,
    corrupt_labels,
    epoch_order,
    epoch_training_metrics,
    evaluate,
    resolve_device,
    train_one_epoch,
)
from .interrupt import StopRequest
from .models import Classifier, create_model, load_pretrained
from .optim import build_optimizer, build_scheduler
from .rundir import append_jsonl, read_json, read_jsonl, write_json, write_jsonl

#: settings a resumed run may change; anything else would make it a different experiment
RESUME_OVERRIDES = ("epochs", "device", "progress", "tensorboard", "num_workers", "save_every",
                    "eval_batch_size")


class Interrupted(Exception):
    """Raised after a stop request was honoured and the checkpoint written."""


def fit(cfg: TrainConfig, verbose: bool = True, overwrite: bool = False) -> Dict[str, Any]:
    """Train and evaluate as ``cfg`` says in a new run directory ``cfg.out``; return the summary.

    A directory that already holds a checkpoint is refused unless ``overwrite``: resume it
    with :func:`resume` instead.
    """
    out = Path(cfg.out)
    if (out / CHECKPOINT).exists() and not overwrite:
        raise ValueError(f"{out} already holds a run ({CHECKPOINT}); continue it with "
                         f"`ols train --resume {out}`, or pass --overwrite, or choose another --out")
    return run(cfg, None, verbose)


def resume(run_dir: str, overrides: Optional[Mapping[str, Any]] = None,
           verbose: bool = True) -> Dict[str, Any]:
    """Continue the run in ``run_dir`` from its last checkpoint, optionally with more ``epochs``."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"nothing to resume: {run_dir} has no {CHECKPOINT} (was it started by `ols train`?)")
    values = read_json(Path(run_dir) / "config.json")
    for key, value in (overrides or {}).items():
        if key not in RESUME_OVERRIDES:
            raise ValueError(f"--{key.replace('_', '-')} cannot change on --resume (it would be a different "
                             f"run); only {', '.join(RESUME_OVERRIDES)} can")
        values[key] = value
    values["out"] = str(run_dir)
    cfg = config_from_dict(values)
    ckpt = load_checkpoint(path)
    if cfg.epochs < ckpt["epoch"]:
        raise ValueError(f"--epochs {cfg.epochs} is fewer than the {ckpt['epoch']} epochs already trained")
    return run(cfg, ckpt, verbose)


def _log(verbose: bool, ctx: DistContext, text: str) -> None:
    if verbose and ctx.is_main:
        print(text, flush=True)


def _build_model(cfg: TrainConfig, data, device: torch.device) -> Classifier:
    net = create_model(cfg.model, data.num_classes, in_channels=data.input_shape[0])
    if cfg.pretrained:
        loaded, skipped = load_pretrained(net, cfg.pretrained)
        print(f"--pretrained: loaded {len(loaded)} tensors, kept {len(skipped)} of the model's own "
              f"({', '.join(skipped[:4])}{'...' if len(skipped) > 4 else ''})", file=sys.stderr)
    model = Classifier(net, data.mean, data.std).to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs tensorboard: pip install 'ols[tensorboard]'") from None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def run(cfg: TrainConfig, ckpt: Optional[Dict[str, Any]], verbose: bool = True) -> Dict[str, Any]:
    """The epoch loop of a new (``ckpt is None``) or resumed run. See :func:`fit`."""
    t0 = time.perf_counter()
    ctx = setup(resolve_device(cfg.device))
    try:
        return _run(cfg, ckpt, ctx, verbose, t0)
    finally:
        ctx.close()


def _run(cfg: TrainConfig, ckpt: Optional[Dict[str, Any]], ctx: DistContext, verbose: bool,
         t0: float) -> Dict[str, Any]:
    device, out = ctx.device, Path(cfg.out)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data_dir, **cfg.data_args)
    true_labels = data.train_y.numpy()
    if ckpt is None:
        noisy, flipped = corrupt_labels(cfg, true_labels, data.num_classes)
    else:
        noisy, flipped = ckpt["noisy_labels"].numpy(), ckpt["flipped"].numpy()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.to_dict())
        if ckpt is None:
            (out / "metrics.jsonl").unlink(missing_ok=True)
            (out / "summary.json").unlink(missing_ok=True)
            np.save(out / "train_labels_noisy.npy", noisy)
            np.save(out / "train_flipped.npy", flipped)
        else:  # drop metrics of an epoch that finished after the checkpoint was taken
            done = [r for r in read_jsonl(out / "metrics.jsonl") if r["epoch"] <= ckpt["epoch"]] \
                if (out / "metrics.jsonl").exists() else []
            write_jsonl(out / "metrics.jsonl", done)

    source = make_source(cfg.dataset, data, device, cfg.augment, cfg.crop_padding, cfg.cutout_size,
                         cfg.num_workers, cfg.seed)
    train_y = torch.from_numpy(noisy).to(device)
    true_y = torch.from_numpy(true_labels).to(device)
    flipped_t = torch.from_numpy(flipped).to(device)
    test_y = data.test_y.to(device)
    n = train_y.shape[0]

    model = _build_model(cfg, data, device)
    criterion = build_loss(cfg, data.num_classes, n).to(device)
    optimizer = build_optimizer(model, cfg)
    shard = math.ceil(n / ctx.world_size)
    steps_per_epoch = math.ceil(shard / cfg.batch_size)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    use_amp = cfg.amp and device.type == "cuda"
    channels_last = cfg.channels_last and device.type == "cuda"

    start_epoch, state_dict, aug_state, best, spent = 0, None, None, float("inf"), 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        criterion.load_state_dict(ckpt["criterion"])
        set_rng_state(ckpt["rng"])
        start_epoch, best, spent = ckpt["epoch"], ckpt["best"], ckpt["seconds"]
        state_dict, aug_state = ckpt.get("epoch_state"), ckpt.get("aug_rng")
        if state_dict is not None and ctx.world_size > 1:
            raise ValueError("this checkpoint was taken mid-epoch by one process; resume it without torchrun")
        _log(verbose, ctx, f"resuming {out} after epoch {start_epoch}"
             + (f", batch {state_dict['batches']}" if state_dict else ""))

    train_model: nn.Module = model
    if ctx.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        train_model = torch.compile(train_model)
    writer = _tensorboard(out) if cfg.tensorboard and ctx.is_main else None

    def checkpoint(epoch: int, partial: Optional[Dict[str, Any]] = None,
                   gen: Optional[torch.Generator] = None) -> None:
        """Save after ``epoch`` full epochs (plus ``partial``, an interrupted epoch's state)."""
        save_checkpoint(out / CHECKPOINT, {
            "format": 1, "epoch": epoch, "config": cfg.to_dict(),
            "num_classes": data.num_classes, "input_shape": list(data.input_shape),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "criterion": criterion.state_dict(),
            "rng": rng_state(), "best": best, "seconds": spent + time.perf_counter() - t0,
            "noisy_labels": torch.from_numpy(noisy), "flipped": torch.from_numpy(flipped),
            "epoch_state": partial,
            "aug_rng": gen.get_state() if gen is not None else None,
        })

    metrics: Dict[str, Any] = {}
    with StopRequest(enabled=ctx.world_size == 1) as stop:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            e0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            order = epoch_order(n, cfg.seed, epoch, ctx.rank, ctx.world_size)
            gen = augmentation_generator(device, cfg.seed, epoch, ctx.rank)
            state = EpochState.new(n, device)
            if state_dict is not None:  # finish the epoch a stop request cut short
                state, lr = EpochState.from_dict(state_dict, device), state_dict.get("lr", lr)
                gen.set_state(aug_state)
                state_dict = None
            batches = source.train(order, cfg.batch_size, state.batches, gen, epoch)
            finished = train_one_epoch(
                train_model, criterion, optimizer, batches, train_y, state, steps_per_epoch, scheduler,
                use_amp, channels_last,
                should_stop=lambda: stop.requested, show_progress=cfg.progress,
                desc=f"epoch {epoch}/{cfg.epochs}",
            )
            if not finished:
                checkpoint(epoch - 1, {**state.to_dict(), "lr": lr}, gen)  # single process only
                _log(verbose, ctx, f"stopped in epoch {epoch} after batch {state.batches}; saved "
                     f"{out / CHECKPOINT}. Continue with: ols train --resume {out}")
                raise Interrupted(str(out))
            train = epoch_training_metrics(state, train_y, true_y, flipped_t)
            test = evaluate(model, source.test(cfg.eval_batch_size), test_y, use_amp=use_amp,
                            channels_last=channels_last) if ctx.is_main else {}
            if ctx.is_main:
                best = min(best, test["top1_err"])
                metrics = {"epoch": epoch, **train, **{f"test_{k}": v for k, v in test.items()},
                           "lr": lr, "seconds": time.perf_counter() - e0}
                append_jsonl(out / "metrics.jsonl", metrics)
                checkpoint(epoch)
                if cfg.save_every and epoch % cfg.save_every == 0:
                    save_checkpoint(snapshot_path(out, epoch), {"epoch": epoch, "model": model.state_dict()})
                if writer is not None:
                    for key, value in metrics.items():
                        if key != "epoch":
                            writer.add_scalar(key, value, epoch)
                    writer.flush()
                _log(verbose, ctx, f"epoch {epoch}/{cfg.epochs}: loss {train['train_loss']:.4f}, train err "
                     f"{train['train_err']:.2f}%, test err {test['top1_err']:.2f}%, "
                     f"ECE {test['ece']:.2f}%, lr {lr:.4g} ({metrics['seconds']:.1f}s)")
            barrier()
            if stop.requested and epoch < cfg.epochs:
                _log(verbose, ctx, f"stopped after epoch {epoch}; continue with: ols train --resume {out}")
                raise Interrupted(str(out))

    if writer is not None:
        writer.close()
    # a check, not a fix: all-reduced statistics must leave every rank with the same soft labels
    synced = same_on_all_ranks(criterion.soft_labels) if hasattr(criterion, "soft_labels") else None
    if not ctx.is_main:
        return {}
    if not metrics:  # resumed a run that had already finished
        metrics = read_jsonl(out / "metrics.jsonl")[-1]
    if hasattr(criterion, "soft_labels"):
        np.save(out / "soft_labels.npy", criterion.soft_labels.cpu().numpy())
    summary = {
        "test_top1_err": metrics["test_top1_err"],
        "test_top5_err": metrics["test_top5_err"],
        "test_nll": metrics["test_nll"],
        "test_ece": metrics["test_ece"],
        "best_test_top1_err": best,
        "train_loss": metrics["train_loss"],
        "train_err": metrics["train_err"],
        **{k: v for k, v in metrics.items() if k.startswith("train_err_")},  # noisy-label tracking
        "epochs": cfg.epochs,
        "noise_rate": cfg.noise_rate,
        "realised_noise_rate": float(flipped.mean()) if flipped.size else 0.0,
        "world_size": ctx.world_size,
        "soft_labels_same_on_all_ranks": synced,
        "seconds": spent + time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    return summary
