"""A training run end to end: run directory, checkpoints, resume, interruption and ``torchrun``.

``fit(cfg)`` starts a run in ``cfg.out``; ``resume(run_dir)`` continues one from its
``checkpoint.pt``. Both go through :func:`run`: set-up (:mod:`ols.run_setup`), the loop's
state (:mod:`ols.run_state`), then the epoch loop below.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint, snapshot_path
from .config import RESUME_OVERRIDES, TrainConfig, saved_config
from .data.holdout import temperature_split
from .distributed import DistContext, barrier, same_on_all_ranks, setup
from .divergence import stop_if_diverged
from .engine import (
    EpochState,
    epoch_training_metrics,
    evaluate,
    held_out_temperature,
    predict,
    train_one_epoch,
)
from .graph_step import check_ranks_agree
from .interrupt import StopRequest
from .loggers import RunLoggers, check_loggers
from .losses import raise_bad_inputs
from .losses.per_sample import PerSampleShards
from .losses.protocol import end_of_epoch, set_progress, soft_labels_of
from .rank_layout import gather_partial, gather_rank_local, rest_of_epoch
from .run_setup import Run, augmentation_generator, build_run
from .run_state import RunState, check_resumable, checkpoint_labels, restore_run, save_run
from .rundir import (
    RunLock,
    append_jsonl,
    clear_run,
    read_json,
    read_jsonl,
    refuse_other_kind,
    remove_orphans,
    write_json,
    write_jsonl,
)
from .tasks.base import HIGHER_IS_BETTER as TASK_METRICS
from .utils.device import resolve_device, settings_line


class Interrupted(Exception):
    """Raised after a stop request was honoured and the checkpoint written."""


def fit(cfg: TrainConfig, verbose: bool = True, overwrite: bool = False,
        auto_resume: bool = False) -> Dict[str, Any]:
    """Train and evaluate as ``cfg`` says in a new run directory ``cfg.out``; return the summary.

    A directory that already holds a checkpoint is refused unless ``overwrite``: resume it
    with :func:`resume` instead. ``auto_resume`` (and a worker that ``torchrun`` restarted)
    resumes it when it holds a run of the same settings: a requeued or restarted job reruns
    its command line and continues where the last checkpoint stands.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    if (out / CHECKPOINT).exists() and not overwrite:
        refuse_other_kind(out, "train")
        if auto_resume or elastic_restart():
            return resume_same(cfg, verbose)
        raise ValueError(f"{out} already holds a run ({CHECKPOINT}); continue it with "
                         f"`ols train --resume {out}` (or --auto-resume), or pass --overwrite, or choose "
                         "another --out")
    return run(cfg, None, verbose)


def elastic_restart() -> bool:
    """Whether ``torchrun`` restarted this worker after a failure (``TORCHELASTIC_RESTART_COUNT > 0``)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def resume_same(cfg: TrainConfig, verbose: bool = True) -> Dict[str, Any]:
    """Resume ``cfg.out`` with ``cfg``'s resumable settings, if its run was made with ``cfg``'s others."""
    path = Path(cfg.out) / "config.json"
    try:
        saved = read_json(path)
    except (OSError, ValueError):
        saved = {}
    given = cfg.to_dict()
    differ = sorted(k for k in given if k not in RESUME_OVERRIDES and k != "out" and k in saved
                    and saved[k] != given[k])
    if differ:
        what = ", ".join(f"{k} {saved[k]!r} there, {given[k]!r} here" for k in differ[:4])
        raise ValueError(f"--auto-resume: {cfg.out} holds a run with other settings ({what}); give its own "
                         "settings, or pass --overwrite to start again, or choose another --out")
    return resume(cfg.out, {k: given[k] for k in RESUME_OVERRIDES}, verbose)


def resume(run_dir: str, overrides: Optional[Mapping[str, Any]] = None,
           verbose: bool = True) -> Dict[str, Any]:
    """Continue the run in ``run_dir`` from its last checkpoint, optionally with more ``epochs``."""
    path = Path(run_dir) / CHECKPOINT
    refuse_other_kind(Path(run_dir), "train", resuming=True)
    if not path.is_file():
        raise ValueError(f"nothing to resume: {run_dir} has no {CHECKPOINT} (was it started by `ols train`?)")
    ckpt = load_checkpoint(path)
    check_resumable(ckpt, path)
    values = run_config(Path(run_dir), ckpt)
    for key, value in (overrides or {}).items():
        if key not in RESUME_OVERRIDES:
            raise ValueError(f"--{key.replace('_', '-')} cannot change on --resume (it would be a different "
                             f"run); only {', '.join(RESUME_OVERRIDES)} can")
        values[key] = value
    values["out"] = str(run_dir)
    cfg = saved_config(values, Path(run_dir) / "config.json")
    if cfg.epochs < ckpt["epoch"]:
        raise ValueError(f"--epochs {cfg.epochs} is fewer than the {ckpt['epoch']} epochs already trained")
    return run(cfg, ckpt, verbose)


def run_config(run_dir: Path, ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The run's ``config.json``, checked against the checkpoint, or rebuilt from it if missing or damaged."""
    saved = dict(ckpt.get("config") or {})
    try:
        values = read_json(run_dir / "config.json")
    except (OSError, ValueError) as err:
        if not saved:
            raise ValueError(f"{run_dir / 'config.json'} is unreadable ({err}) and the checkpoint holds no "
                             "config to rebuild it from") from None
        warnings.warn(f"{run_dir / 'config.json'} is missing or damaged; rebuilt it from {CHECKPOINT}",
                      stacklevel=2)
        return saved
    fixed = [k for k in saved if k not in RESUME_OVERRIDES and k != "out"]
    differ = sorted(k for k in fixed if saved[k] != values.get(k))
    if differ:
        what = ", ".join(f"{k}: {saved[k]!r} in the checkpoint, {values.get(k)!r} in config.json"
                         for k in differ)
        raise ValueError(f"{run_dir / CHECKPOINT} does not belong to this run ({what}); restore the run's "
                         "own config.json, or start a new run with --overwrite")
    return values


def run(cfg: TrainConfig, ckpt: Optional[Dict[str, Any]], verbose: bool = True) -> Dict[str, Any]:
    """Set up a new (``ckpt is None``) or resumed run, train it to ``cfg.epochs``, write its summary."""
    started = time.perf_counter()
    ctx = setup(resolve_device(cfg.device), cuda_graph=cfg.cuda_graph)
    try:
        with RunLock(cfg.out) if ctx.is_main else contextlib.nullcontext():
            return _run(cfg, ckpt, ctx, started, verbose)
    finally:
        ctx.close()


def _run(cfg: TrainConfig, ckpt: Optional[Dict[str, Any]], ctx: DistContext, started: float,
         verbose: bool) -> Dict[str, Any]:
    r = build_run(cfg, ctx, checkpoint_labels(ckpt))  # every setting checked before the directory is touched
    state = RunState(started=started) if ckpt is None else restore_run(r, ckpt)  # a misfit fails here
    check_loggers(list(r.settings.loggers) if ctx.is_main else [])  # a missing package: one line, no file
    prepare_directory(r, ckpt)
    _log(verbose, ctx, settings_line(ctx.device, amp=r.precision.amp, compile=cfg.compile,
                                     channels_last=r.precision.channels_last, cuda_graph=r.graph is not None))
    if len(r.meta_index):
        _log(verbose, ctx, f"clean held-out set: {len(r.meta_index)} training images taken out before the "
             f"noise, with their clean labels (meta_index.npy); {len(r.train_index)} images train")
    phases = r.task.phases()
    if phases:
        _log(verbose, ctx, phases)
    _log(verbose, ctx, f"set-up: {time.perf_counter() - started:.1f}s (reading the data, building the "
         f"model); {r.steps_per_epoch} steps an epoch")
    if ckpt is not None:
        _log(verbose, ctx, f"resuming {r.out} after epoch {state.epoch}"
             + (f", batch {state.partial['batches']}" if state.partial else ""))
        if state.note:
            _log(verbose, ctx, state.note)
    loggers = RunLoggers(list(r.settings.loggers) if ctx.is_main else [], r.out, r.settings.config,
                         resumed=ckpt is not None)
    try:
        summary = finish(r, state, train_epochs(r, state, verbose, loggers))
        if summary:
            loggers.finish(summary)
        return summary
    finally:
        loggers.close()


def train_epochs(r: Run, state: RunState, verbose: bool,
                 loggers: Optional[RunLoggers] = None) -> Dict[str, Any]:
    """The epoch loop; returns the last epoch's metrics (empty if there was nothing left to train)."""
    s, metrics = r.settings, {}
    with StopRequest(enabled=r.ctx.world_size == 1) as stop:
        for epoch in range(state.epoch + 1, s.epochs + 1):
            e0 = time.perf_counter()
            epoch_state, gen, lr, order = begin_epoch(r, state, epoch)
            finished = train_one_epoch(
                r.train_model, r.task, r.optimizer, r.epoch_batches(epoch, epoch_state.batches, gen, order),
                r.train_y, epoch_state, r.steps_per_epoch, r.scheduler, r.precision,
                should_stop=lambda: stop.requested, show_progress=s.progress,
                desc=f"epoch {epoch}/{s.epochs}", graph=r.graph, clip_grad_norm=s.clip_grad_norm,
                ema=r.ema, on_step=step_checkpoints(r, state, epoch_state, gen, lr))
            if not finished:  # single process only: save the epoch so far, to finish it on resume
                write_checkpoint(r, state, (epoch_state, gen, lr))
                _log(verbose, r.ctx, f"stopped in epoch {epoch} after batch {epoch_state.batches}; saved "
                     f"{r.out / CHECKPOINT}. Continue with: ols train --resume {r.out}")
                raise Interrupted(str(r.out))
            raise_bad_inputs(r.criterion)  # any bad label or target a loss saw this epoch (one read)
            end_of_epoch(r.criterion)  # Eq. (6): OLS closes its update period (a collective)
            if r.graph is not None and r.ctx.world_size > 1:
                check_ranks_agree(r.model, epoch)  # before this epoch's checkpoint replaces the last
            seconds = time.perf_counter() - e0
            metrics = end_epoch(r, state, epoch, epoch_state, lr, seconds, loggers, verbose)
            barrier()
            if stop.requested and epoch < s.epochs:
                _log(verbose, r.ctx, f"stopped after epoch {epoch}; continue with: "
                     f"ols train --resume {r.out}")
                raise Interrupted(str(r.out))
    return metrics


def begin_epoch(r: Run, state: RunState, epoch: int):
    """``(epoch state, augmentation generator, lr, order)`` for ``epoch``, continuing an interrupted one.

    ``order``: the rank's samples when they are not the epoch's usual ones (``None``): the rest of
    an epoch checkpointed on another number of ranks, dealt out again
    (:func:`~ols.rank_layout.rest_of_epoch`).
    """
    gen = augmentation_generator(r.ctx.device, r.settings.seed, epoch, r.ctx.rank)
    lr = float(r.optimizer.param_groups[0]["lr"])  # a device tensor under --cuda-graph: one read an epoch
    p, state.orders = state.partial, None
    if p is None:
        steps = r.steps_per_epoch if r.settings.loggers else 0  # step losses are kept for the loggers only
        epoch_state = EpochState.new(r.num_samples, r.ctx.device, steps)
    else:
        epoch_state = EpochState.from_dict(p, r.ctx.device)
        lr = p["lr"] if p.get("lr") is not None else lr
        if p["redeal"]:
            old_world = p["saved_world_size"]
            old = p.get("orders") or [r.rank_order(epoch, q, old_world, sharded_on(r, old_world))
                                      for q in range(old_world)]
            state.orders = [rest_of_epoch(old, p["batches"], r.settings.batch_size, q, r.ctx.world_size,
                                          sharded_on(r, r.ctx.world_size)) for q in range(r.ctx.world_size)]
            epoch_state.batches = 0
        else:
            state.orders = p.get("orders")
            gen.set_state(p["aug_rng"])
        state.partial = None
    r.task.set_epoch(epoch, epoch_state.batches)  # a task's own draws replay from the batch it resumes at
    set_progress(r.criterion, (epoch - 1) / r.settings.epochs)  # MaxSup's lambda_t, say
    return epoch_state, gen, lr, None if state.orders is None else state.orders[r.ctx.rank]


def sharded_on(r: Run, world_size: int) -> bool:
    """Whether the run's loss keeps per-sample state sharded by sample on ``world_size`` ranks."""
    if world_size <= 1 or not isinstance(r.criterion, PerSampleShards):
        return False
    return bool((r.settings.config.get("loss_args") or {}).get("sharded", True))


def step_checkpoints(r: Run, state: RunState, epoch_state: EpochState, gen: torch.Generator, lr: float):
    """``--save-every-steps N``: a callable writing the checkpoint after every ``N``-th batch, or ``None``.

    It reads the host's batch count only, so the other steps cost nothing; the write is a
    collective under ``torchrun`` (every rank reaches the same batch count together).
    """
    every = r.settings.save_every_steps
    if not every:
        return None

    def after_step() -> None:
        if epoch_state.batches % every == 0 and epoch_state.batches < r.steps_per_epoch:
            write_checkpoint(r, state, (epoch_state, gen, lr))

    return after_step


def write_checkpoint(r: Run, state: RunState, open_epoch: Optional[tuple] = None,
                     criterion: Any = False) -> None:
    """Every rank gathers its parts; rank 0 writes ``checkpoint.pt`` (atomically).

    ``open_epoch``: ``(epoch state, augmentation generator, lr)`` of an epoch under way (an
    in-epoch checkpoint), ``None`` at an epoch's end. ``criterion``: the loss's state if the
    caller already gathered it.
    """
    partial = None
    if open_epoch is not None:
        es, gen, lr = open_epoch
        partial = gather_partial(es.batches, es.loss_sum, es.seen, es.preds, es.step_loss, gen.get_state(),
                                 lr)
        if state.orders is not None:
            partial["orders"] = state.orders
    if criterion is False:
        criterion = r.criterion_state()  # a collective when the loss keeps per-rank shards
    rank_local = gather_rank_local(r.criterion, r.ctx.world_size)  # a collective on several ranks
    if r.ctx.is_main:
        save_run(r, state, criterion, rank_local, partial)


def end_epoch(r: Run, state: RunState, epoch: int, epoch_state: EpochState, lr: float, seconds: float,
              loggers: Optional[RunLoggers], verbose: bool) -> Dict[str, Any]:
    """Metrics of a finished epoch; rank 0 logs them and writes the checkpoint and snapshot."""
    train = epoch_training_metrics(epoch_state, r.train_y, r.true_y, r.flipped_t)
    check_finite_loss(r, state, epoch, train["train_loss"])
    hook = time.perf_counter()
    r.task.end_epoch(epoch, r.model)  # the method's once-an-epoch work (a mixture, prototypes): every rank
    method = r.task.epoch_metrics()  # what it learned (corrected labels' accuracy); a collective if sharded
    seconds += time.perf_counter() - hook
    state.epoch = epoch
    criterion = r.criterion_state()  # a collective when the loss keeps per-rank shards
    rank_local = gather_rank_local(r.criterion, r.ctx.world_size)  # a collective on several ranks
    if not r.ctx.is_main:
        return {}
    bar = {"show_progress": r.settings.progress, "use_amp": r.precision.amp,
           "channels_last": r.precision.channels_last}
    test = evaluate(r.model, r.test_batches(), r.test_y,
                    desc=f"test {epoch}/{r.settings.epochs}", **bar)
    state.best = min(state.best, test["top1_err"])
    metrics = {"epoch": epoch, **train, **method, **{f"test_{k}": v for k, v in test.items()}, "lr": lr,
               "seconds": seconds}
    ema_text = ""
    if r.ema is not None:  # the weight average, evaluated beside the weights
        ema = evaluate(r.ema.average, r.test_batches(), r.test_y,
                       desc=f"test EMA {epoch}/{r.settings.epochs}", **bar)
        metrics["ema"] = {f"test_{k}": ema[k] for k in ("top1_err", "nll", "ece")}
        ema_text = f", EMA test err {ema['top1_err']:.2f}%"
    append_jsonl(r.out / "metrics.jsonl", metrics)
    save_run(r, state, criterion, rank_local)
    if r.settings.save_every and epoch % r.settings.save_every == 0:
        save_checkpoint(snapshot_path(r.out, epoch), {"epoch": epoch, "model": r.model.state_dict()})
    if loggers:  # one read of the epoch's step losses, after the epoch
        losses = epoch_state.step_loss
        steps = losses[:epoch_state.batches].tolist() if losses is not None else []
        soft = soft_labels_of(r.criterion)
        loggers.epoch(epoch, metrics, steps, (epoch - 1) * r.steps_per_epoch,
                      None if soft is None else soft.float().cpu().numpy())
    labels_text = r.task.epoch_text(method)  # the method's own numbers (corrected labels, its split)
    _log(verbose, r.ctx, f"epoch {epoch}/{r.settings.epochs}: loss {train['train_loss']:.4f}, train err "
         f"{train['train_err']:.2f}%, test err {test['top1_err']:.2f}%, ECE {test['ece']:.2f}%{ema_text}"
         f"{labels_text}, lr {lr:.4g} ({seconds:.1f}s{eta_text(seconds, r.settings.epochs - epoch)})")
    return metrics


def eta_text(seconds: float, left: int) -> str:
    """``"; about 12 min left"`` at this epoch's pace, or nothing after the last epoch."""
    if left <= 0:
        return ""
    total = seconds * left
    when = f"{total:.0f} s" if total < 90 else f"{total / 60:.0f} min" if total < 5400 else \
        f"{total / 3600:.1f} h"
    return f"; about {when} left"


def check_finite_loss(r: Run, state: RunState, epoch: int, loss: float) -> None:
    """Stop a run whose epoch loss is NaN or infinite, before anything of that epoch is written.

    One check per epoch on the all-reduced loss sum, so no extra device sync per step and
    every rank stops alike. The checkpoint on disk stays the last good epoch's.
    """
    if math.isfinite(loss):
        return
    flat = [c for c, sd in enumerate(getattr(r.data, "std", None) or ()) if not sd > 0]
    if flat:  # normalising by a zero std divides by zero
        cause = (f"the training images of --dataset {r.settings.dataset} have zero variance in channel(s) "
                 f"{', '.join(map(str, flat))} (every pixel the same), so normalising them divides by zero; "
                 "check the image files")
    else:
        loss_args = r.settings.config.get("loss_args") or {}
        options = (" or its options (--loss-arg " + ", ".join(f"{k}={v}" for k, v in loss_args.items()) + ")"
                   if loss_args else "")
        cause = (f"a learning rate too high for this model and loss (--lr {r.settings.lr:g}){options}, or "
                 "non-finite inputs; start again with a lower --lr and --overwrite")
    stop_if_diverged(loss, epoch, r.out / CHECKPOINT, state.epoch, cause)


def prepare_directory(r: Run, ckpt: Optional[Dict[str, Any]]) -> None:
    """Rank 0 writes ``config.json``; a new run clears old results, a resumed one drops later epochs."""
    if not r.ctx.is_main:
        return
    r.out.mkdir(parents=True, exist_ok=True)
    if ckpt is None:
        clear_run(r.out)  # nothing of an earlier run in this directory (snapshots, eval.json) may mix in
    else:
        remove_orphans(r.out)
    write_json(r.out / "config.json", r.settings.config)
    if ckpt is None:
        np.save(r.out / "train_labels_noisy.npy", r.noisy)
        np.save(r.out / "train_flipped.npy", r.flipped)
        if len(r.held_index):
            np.save(r.out / "held_out_index.npy", r.held_index)
        if len(r.meta_index):
            np.save(r.out / "meta_index.npy", r.meta_index)
    else:  # drop metrics of an epoch that finished after the checkpoint was taken
        log = r.out / "metrics.jsonl"
        done = [m for m in read_jsonl(log) if m["epoch"] <= ckpt["epoch"]] if log.exists() else []
        write_jsonl(log, done)


def finish(r: Run, state: RunState, metrics: Dict[str, Any]) -> Dict[str, Any]:
    """Check the ranks agree, then rank 0 writes ``summary.json`` (and ``soft_labels.npy``)."""
    soft = soft_labels_of(r.criterion)
    # a check, not a fix: all-reduced statistics must leave every rank with the same soft labels
    synced = same_on_all_ranks(soft) if soft is not None else None
    outputs = r.task.run_outputs()  # what the method learned (corrected labels); a collective if sharded
    if not r.ctx.is_main:
        return {}
    for name, array in outputs.items():
        np.save(r.out / f"{name}.npy", array)
    if not metrics:  # resumed a run that had already finished
        logged = read_jsonl(r.out / "metrics.jsonl")
        if not logged:
            raise ValueError(f"{r.out} had already trained its {r.settings.epochs} epochs, but its "
                             "metrics.jsonl holds none of them, so summary.json cannot be rebuilt; "
                             f"evaluate the model with `ols eval {r.out}`, or train on with "
                             f"`ols train --resume {r.out} --epochs N` "
                             f"(N > {r.settings.epochs})")
        metrics = logged[-1]
    if soft is not None:
        np.save(r.out / "soft_labels.npy", soft.cpu().numpy())
    summary = {
        "test_top1_err": metrics["test_top1_err"],
        "test_top5_err": metrics["test_top5_err"],
        "test_nll": metrics["test_nll"],
        "test_ece": metrics["test_ece"],
        **{k: metrics[k] for k in ("test_ece_signed", "test_aurc", "ema") if k in metrics},
        **temperature_summary(r),
        "best_test_top1_err": state.best,
        "train_loss": metrics["train_loss"],
        "train_err": metrics["train_err"],
        **{k: v for k, v in metrics.items() if k.startswith("train_err_") or k in TASK_METRICS},
        "epochs": r.settings.epochs,
        "noise_rate": r.settings.noise_rate,
        "realised_noise_rate": realised_noise_rate(r),
        "meta_size": len(r.meta_index),
        "world_size": r.ctx.world_size,
        "soft_labels_same_on_all_ranks": synced,
        "seconds": state.elapsed(),
    }
    write_json(r.out / "summary.json", summary)
    return summary


def realised_noise_rate(r: Run) -> float:
    """The share of flipped labels among the samples the noise was drawn over (all but the clean set)."""
    drawn = np.ones(len(r.flipped), dtype=bool)
    drawn[r.meta_index] = False
    return float(r.flipped[drawn].mean()) if drawn.any() else 0.0


def temperature_summary(r: Run) -> Dict[str, Any]:
    """Temperature scaling of the final model on the clean held-out set, else the held-out split; else empty.

    ``temperature_fitted_on`` says which, and whether its labels are clean.
    """
    index, labels, what = temperature_split(r.meta_index, r.held_index, r.true_y.cpu().numpy(), r.noisy)
    if not len(index):
        return {}
    kw = {"use_amp": r.precision.amp, "channels_last": r.precision.channels_last}
    fitted = held_out_temperature(r.model, r.source.held_out(index, r.settings.eval_batch_size),
                                  torch.as_tensor(labels, device=r.test_y.device),
                                  predict(r.model, r.test_batches(), **kw), r.test_y, **kw)
    return {**fitted, "temperature_fitted_on": what}


def _log(verbose: bool, ctx: DistContext, text: str) -> None:
    if verbose and ctx.is_main:
        print(text, flush=True)
