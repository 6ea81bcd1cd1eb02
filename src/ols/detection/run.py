"""``ols detect train`` and ``ols detect eval``: a detection run end to end.

The run directory follows ``ols train``'s: ``config.json``, ``metrics.jsonl`` (one line an
epoch), ``checkpoint.pt`` (written at every epoch's end and when a stop is requested, so
``--resume`` continues at the next batch), ``summary.json`` and, for OLS, ``soft_labels.npy``
and ``soft_labels.png``; ``eval.json`` and ``detections.png`` from ``ols detect eval``. One
process owns a run directory (:class:`~ols.rundir.RunLock`).

Batches: images letterboxed to the step's input side (aspect kept, padded at the right and
bottom), the boxes scaled with them; a random horizontal flip per image. The sample order,
the flips and the multi-scale draws are functions of ``(seed, epoch, step)``, so a resumed
epoch replays them. The learning rate: linear warm-up over ``warmup_epochs``, then cosine
decay to ``lr_end`` (argusswift's schedule), set per step from the step count alone.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ..checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from ..distributed import DistContext, all_reduce_sum, barrier, setup, wrap_ddp
from ..divergence import stop_if_diverged
from ..interrupt import StopRequest
from ..rank_layout import gather_rank_local, restore_rank_local
from ..rundir import (
    RunLock,
    append_jsonl,
    clear_run,
    read_json,
    read_jsonl,
    refuse_other_kind,
    write_json,
    write_jsonl,
)
from ..utils.device import resolve_device, settings_line
from ..utils.progress import progress
from .boxes import batched_nms
from .config import DetectConfig, detect_config_from_dict
from .head_confidence import HIGHER_IS_BETTER as HEAD_METRICS
from .head_confidence import head_confidence
from .soft_labels import DetectionOLS
from .voc_eval import evaluate_voc
from .yolo import YOLOv3MobileNetV2, assign, detect, padded_truth, yolo_loss

Sample = Tuple[Tensor, Dict[str, Tensor]]
#: multi-scale training draws a new input side every this many steps (argusswift: 10)
SIZE_EVERY = 10


class DetectInterrupted(Exception):
    """Raised after a stop request was honoured and the checkpoint written."""


def load_data(cfg: DetectConfig) -> Tuple[Sequence[Sample], Sequence[Sample], Tuple[str, ...], int, str]:
    """``(train, test, class names, image channels, note)``; the canvas sets are built once, in memory.

    ``note`` says where the data came from (the run prints it): the VOC sets trained on, or the
    canvas's items (Fashion-MNIST from ``--data-dir``, which must then be readable; without it
    Debian's folder, else the digits).
    """
    if cfg.dataset == "voc":
        from .voc import TEST_SETS, VOCDetection, check_scorable, training_sets

        sets, note = training_sets(cfg.data_dir)
        train = VOCDetection(cfg.data_dir, sets, keep_difficult=False)  # training drops difficult
        test = VOCDetection(cfg.data_dir, TEST_SETS, keep_difficult=True)
        check_scorable(test)
        return train, test, train.class_names, 3, note
    from .canvas import FASHION_MNIST_DIR, CanvasDetection, load_items

    items = load_items("fashion-mnist" if cfg.data_dir else "auto", cfg.data_dir)  # a named folder must read
    where = cfg.data_dir or FASHION_MNIST_DIR
    note = (f"canvas items: Fashion-MNIST from {where}" if items.name == "fashion-mnist"
            else f"canvas items: digits (Fashion-MNIST not found in {where}; --data-dir names its folder)")
    kw = dict(size=cfg.canvas_size, max_objects=cfg.max_objects, items=items, seed=0)  # one fixed set
    train = CanvasDetection("train", cfg.num_train, **kw)
    test = CanvasDetection("test", cfg.num_test, **kw)
    return ([train[i] for i in range(len(train))], [test[i] for i in range(len(test))], train.class_names, 1,
            note)


def letterbox(image: Tensor, boxes: Tensor, size: int) -> Tuple[Tensor, Tensor, float]:
    """``(image, boxes, scale)``: ``image`` ``(C, H, W)`` fit into ``size x size``, boxes scaled alike.

    The aspect is kept and the image padded with zeros at the right and bottom.
    """
    image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = (
        image
        if (nh, nw) == (h, w)
        else F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    )
    out = torch.zeros(image.shape[0], size, size)
    out[:, :nh, :nw] = resized
    return out, boxes.float() * scale, scale


def make_batch(
    samples: Sequence[Sample], size: int, flips: Optional[Tensor] = None
) -> Tuple[Tensor, List[Dict[str, Tensor]]]:
    """``(images (B, C, size, size), targets)``; ``flips`` ``(B,)`` bool mirrors those images."""
    images, targets = [], []
    for i, (image, target) in enumerate(samples):
        x, boxes, _ = letterbox(image, target["boxes"], size)
        if flips is not None and bool(flips[i]):
            x = x.flip(-1)
            boxes = torch.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], dim=1)
        images.append(x)
        targets.append({"boxes": boxes, "labels": target["labels"]})
    return torch.stack(images), targets


def class_loss_for(cfg: DetectConfig, num_classes: int) -> DetectionOLS:
    """The class loss of ``--loss``: hard labels, label smoothing or OLS, one module (summed)."""
    if cfg.loss == "ce":
        return DetectionOLS(num_classes, alpha=1.0, reduction="sum", freeze=True)
    if cfg.loss == "ls":  # onehot (1 - delta) + delta / K: a frozen uniform S at alpha = 1 - delta
        return DetectionOLS(num_classes, alpha=1.0 - cfg.ls_delta, reduction="sum", freeze=True)
    return DetectionOLS(num_classes, alpha=cfg.alpha, statistic=cfg.statistic, reduction="sum")


def learning_rate(cfg: DetectConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then cosine from ``lr`` to ``lr_end`` at the last step."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return cfg.lr_end + 0.5 * (cfg.lr - cfg.lr_end) * (1 + math.cos(math.pi * min(t, 1.0)))


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


def epoch_plan(cfg: DetectConfig, n: int, epoch: int) -> Tuple[List[List[int]], List[int]]:
    """``(batches of sample indices, input side of each batch)`` of ``epoch``: from ``(seed, epoch)``."""
    gen = _generator(cfg.seed, epoch)
    order = torch.randperm(n, generator=gen).tolist()
    batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    draws = torch.randint(0, len(cfg.train_sizes), (len(batches) // SIZE_EVERY + 1,), generator=gen).tolist()
    return batches, [cfg.train_sizes[draws[i // SIZE_EVERY]] for i in range(len(batches))]


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    data: Sequence[Sample],
    cfg: DetectConfig,
    device: torch.device,
    batch_size: int = 32,
) -> List[Dict[str, Tensor]]:
    """Detections for every image of ``data``, in its own pixel coordinates.

    Several ``test_sizes`` are merged by class-wise NMS (multi-scale inference).
    """
    model.eval()
    merged: List[List[Dict[str, Tensor]]] = [[] for _ in data]
    for size in cfg.test_sizes:
        for start in range(0, len(data), batch_size):
            chunk = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            images, _ = make_batch(chunk, size)
            found = detect(model(images.to(device)), size, cfg.score_threshold, cfg.nms_iou)
            for j, (d, (image, _)) in enumerate(zip(found, chunk)):
                scale = size / max(image.shape[-2:])
                merged[start + j].append(
                    {
                        "boxes": d["boxes"].cpu() / scale,
                        "scores": d["scores"].cpu(),
                        "labels": d["labels"].cpu(),
                    }
                )
    out = []
    for parts in merged:
        d = {k: torch.cat([p[k] for p in parts]) for k in ("boxes", "scores", "labels")}
        if len(parts) > 1:
            keep = batched_nms(d["boxes"], d["scores"], d["labels"], cfg.nms_iou)[:100]
            d = {k: v[keep] for k, v in d.items()}
        out.append(d)
    return out


def evaluate(
    model: torch.nn.Module,
    test: Sequence[Sample],
    names: Sequence[str],
    cfg: DetectConfig,
    device: torch.device,
) -> Dict[str, Any]:
    """``{"map", "map_07", "ap", ...}`` on ``test``: the VOC metrics and the class head's confidence.

    The VOC protocol's area AP and the VOC07 11-point mAP, and the class head's sigmoids on the
    positives (:mod:`~ols.detection.head_confidence`).
    """
    found = predict(model, test, cfg, device)
    truth = [t for _, t in test]
    area = evaluate_voc(found, truth, class_names=names)
    voc07 = evaluate_voc(found, truth, use_07_metric=True, class_names=names)
    size = cfg.test_sizes[0]
    batches = [
        make_batch([test[i] for i in range(s, min(s + 32, len(test)))], size) for s in range(0, len(test), 32)
    ]
    head = head_confidence(model, [x for x, _ in batches], [t for _, t in batches], size, device)
    return {"map": area["map"], "map_07": voc07["map"], "ap": area["ap"], **head}


def fit(
    cfg: DetectConfig, overwrite: bool = False, resume: bool = False, verbose: bool = True
) -> Dict[str, Any]:
    """Train (or, with ``resume``, continue) the run in ``cfg.out``; return its summary (empty off rank 0).

    Under ``torchrun`` each rank trains its share of every batch under DDP (the run loop's
    :func:`~ols.distributed.setup` and :func:`~ols.distributed.wrap_ddp`), rank 0 writes.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    if not resume and (out / CHECKPOINT).exists() and not overwrite:
        refuse_other_kind(out, "detect")
        raise ValueError(
            f"{out} already holds a run ({CHECKPOINT}); continue it with `ols detect train --resume "
            f"{out}`, or pass --overwrite, or choose another --out"
        )
    ctx = setup(resolve_device(cfg.device))
    try:
        with RunLock(out) if ctx.is_main else contextlib.nullcontext():
            return _fit(cfg, ctx, resume, verbose and ctx.is_main)
    finally:
        ctx.close()


def _fit(cfg: DetectConfig, ctx: DistContext, resume: bool, verbose: bool) -> Dict[str, Any]:
    out, device = Path(cfg.out), ctx.device
    torch.manual_seed(cfg.seed)
    train, test, names, channels, note = load_data(cfg)  # every setting and file checked before writing
    model = YOLOv3MobileNetV2(len(names), channels, cfg.width).to(device)
    crit = class_loss_for(cfg, len(names)).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    precision = mixed_precision(cfg.amp, device)
    state = {"epoch": 0, "batch": 0, "seconds": 0.0}
    ckpt = load_checkpoint(out / CHECKPOINT) if resume else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        crit.load_state_dict(ckpt["class_loss"])
        restore_rank_local(crit, ckpt.get("rank_local"), ctx.rank, ctx.world_size)  # OLS's open period
        optimizer.load_state_dict(ckpt["optimizer"])
        if precision.scaler is not None and ckpt.get("scaler"):
            precision.scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]
        if not ctx.is_main:
            state = {**state, "sums": None}  # rank 0 carries the epoch's sums so far
        # the plan is of global batches, each split over the ranks there are: any number resumes it
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            clear_run(out)
        else:  # drop the metrics of an epoch finished after the checkpoint
            log = out / "metrics.jsonl"
            write_jsonl(
                log, [m for m in read_jsonl(log) if m["epoch"] <= state["epoch"]] if log.exists() else []
            )
        write_json(out / "config.json", cfg.to_dict())
    barrier()
    if verbose:
        print(settings_line(device, amp=precision.dtype is not None, channels_last=False,
                            what="detection training")
              + (f"; {ctx.world_size} ranks, each a share of every batch" if ctx.world_size > 1 else ""),
              flush=True)
        print(note, flush=True)
        if cfg.amp != "off" and device.type != "cuda":
            print(f"note: --amp {cfg.amp} is ignored on the CPU (float32)", file=sys.stderr, flush=True)
        if cfg.epochs <= cfg.warmup_epochs:
            print(f"note: --epochs {cfg.epochs} is not above --warmup-epochs {cfg.warmup_epochs}, so the "
                  "learning rate never decays (lower --warmup-epochs for a short run)", file=sys.stderr,
                  flush=True)
        if ckpt is not None:
            print(f"resuming {out} after epoch {state['epoch']}"
                  + (f", batch {state['batch']}" if state["batch"] else ""), flush=True)
    train_model = wrap_ddp(model, device) if ctx.world_size > 1 else model
    parts = Parts(model, train_model, crit, optimizer, precision, ctx)
    _train(cfg, parts, train, out, state, verbose)
    if not ctx.is_main:
        return {}
    return _finish(cfg, model, crit, test, names, device, out, state, ctx.world_size)


@dataclass
class Precision:
    """``--amp``: the autocast dtype on CUDA (``None``: float32) and fp16's gradient scaler."""

    dtype: Optional[torch.dtype]
    scaler: Optional[Any]

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def mixed_precision(amp: str, device: torch.device) -> Precision:
    """bf16 or fp16 autocast on CUDA, fp16 with a ``GradScaler``; float32 elsewhere or when ``off``."""
    if amp == "off" or device.type != "cuda":
        return Precision(None, None)
    if amp == "bf16":
        return Precision(torch.bfloat16, None)
    return Precision(torch.float16, torch.amp.GradScaler("cuda"))


@dataclass
class Parts:
    """What a detection step touches: the model (plain and as trained), the class loss, the optimiser."""

    model: torch.nn.Module
    train_model: torch.nn.Module  # under DDP with several ranks
    crit: DetectionOLS
    optimizer: torch.optim.Optimizer
    precision: Precision
    ctx: DistContext


def _save(out: Path, p: Parts, state: Dict[str, Any], cfg: DetectConfig) -> None:
    """Every rank: gather the class loss's open period; rank 0 writes the checkpoint (atomically)."""
    rank_local = gather_rank_local(p.crit, p.ctx.world_size)  # a collective on several ranks
    if not p.ctx.is_main:
        return
    save_checkpoint(
        out / CHECKPOINT,
        {
            "model": p.model.state_dict(),
            "class_loss": p.crit.state_dict(),
            "optimizer": p.optimizer.state_dict(),
            "scaler": p.precision.scaler.state_dict() if p.precision.scaler is not None else None,
            "state": dict(state),
            "config": cfg.to_dict(),
            "world_size": p.ctx.world_size,
            "rank_local": rank_local,
        },
    )


def rank_share(batch: Sequence[int], rank: int, world_size: int) -> Tuple[List[int], float]:
    """``(images, weight)``: the rank's share ``batch[rank::W]`` of a global batch and its loss weight.

    ``yolo_loss`` is a mean over the images it is given; times ``len(share) * W / len(batch)`` it
    becomes the share's part of the batch's mean, so DDP's average over ranks is the mean over
    the whole batch (one process's loss). A rank left without an image (a last batch smaller
    than ``W``) trains on the batch's first with weight 0, so that every rank steps.
    """
    share = list(batch[rank::world_size])
    if not share:
        return [batch[0]], 0.0
    return share, len(share) * world_size / len(batch)


def _train(cfg: DetectConfig, p: Parts, train: Sequence[Sample], out: Path, state: Dict[str, Any],
           verbose: bool) -> None:
    rank, world = p.ctx.rank, p.ctx.world_size
    device = p.ctx.device
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    with StopRequest(enabled=world == 1) as stop:
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            started = time.perf_counter()
            batches, sizes = epoch_plan(cfg, len(train), epoch)
            shares = [rank_share(batch, rank, world) for batch in batches]
            # loss, box, obj, cls summed over the epoch's batches: read once, at its end (or at a stop,
            # into the checkpoint, so a resumed epoch logs the means of all its batches)
            sums = torch.tensor(state.get("sums") or [0.0] * 4, device=device, dtype=torch.float64)
            p.train_model.train()
            p.crit.train()
            first = state["batch"]
            # the share's samples, read (VOC: decoded) by --num-workers processes, in the plan's order
            loader = DataLoader(
                train, batch_sampler=[share for share, _ in shares[first:]], collate_fn=list,
                num_workers=cfg.num_workers
            )
            bar = progress(
                zip(range(first, len(batches)), loader),
                len(batches),
                f"epoch {epoch}/{cfg.epochs}",
                cfg.progress and verbose,
                initial=first,
            )
            for b, samples in bar:
                step = (epoch - 1) * steps_per_epoch + b
                for group in p.optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, step, steps_per_epoch)
                flips = (
                    torch.rand(len(batches[b]), generator=_generator(cfg.seed, epoch, b, 1)) < 0.5
                    if cfg.flip
                    else None
                )
                if flips is not None:  # the batch's draws, then the rank's share of them
                    flips = flips[rank::world] if shares[b][1] > 0 else flips[:1]
                losses = _step(p, samples, sizes[b], flips, shares[b][1])
                parts = torch.stack([losses[k] for k in ("loss", "box", "obj", "cls")]).double()
                sums += parts * shares[b][1]
                state["batch"] = b + 1
                every, open_epoch = cfg.save_every_steps, b + 1 < len(batches)
                stopping = open_epoch and stop.requested  # read once a batch
                if stopping or (every and (b + 1) % every == 0 and open_epoch):
                    _save_open_epoch(out, p, state, cfg, sums, started)
                if stopping:
                    if verbose:
                        print(f"stopped in epoch {epoch} after batch {b + 1}; saved {out / CHECKPOINT}. "
                              f"Continue with: ols detect train --resume {out}", flush=True)
                    raise DetectInterrupted(str(out))
            all_reduce_sum(sums)
            mean = (sums / max(1, len(batches))).tolist()
            check_finite_loss(out, cfg, epoch, state["epoch"], mean[0])  # before this epoch writes anything
            p.crit.step()  # Eq. (6): OLS closes its update period (ce and ls: frozen, nothing changes)
            state.update(epoch=epoch, batch=0, sums=None,
                         seconds=state["seconds"] + time.perf_counter() - started)
            record = {
                "epoch": epoch,
                "loss": mean[0],
                "box": mean[1],
                "obj": mean[2],
                "cls": mean[3],
                "lr": p.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
            if p.ctx.is_main:
                append_jsonl(out / "metrics.jsonl", record)
            _save(out, p, state, cfg)
            barrier()
            if verbose:
                print(
                    f"epoch {epoch}/{cfg.epochs}: loss {mean[0]:.3f} (box {mean[1]:.3f}, obj {mean[2]:.3f}, "
                    f"cls {mean[3]:.3f}), lr {record['lr']:.3g} ({record['seconds']:.1f}s)",
                    flush=True,
                )
            if stop.requested and epoch < cfg.epochs:
                if verbose:
                    print(
                        f"stopped after epoch {epoch}; continue with: ols detect train --resume {out}",
                        flush=True,
                    )
                raise DetectInterrupted(str(out))


def _step(p: Parts, samples: Sequence[Sample], size: int, flips: Optional[Tensor],
          weight: float) -> Dict[str, Tensor]:
    """One optimiser step on the rank's share of a batch; the share's detached losses (unweighted)."""
    device = p.ctx.device
    images, targets = make_batch(samples, size, flips)
    positives = {k: v.to(device) for k, v in assign(targets, size).items()}
    truth = tuple(t.to(device) for t in padded_truth(targets))
    with p.precision.autocast(device):
        outputs = p.train_model(images.to(device))
    outputs = [o.float() for o in outputs]  # the loss in float32, as the class statistics are
    losses = yolo_loss(outputs, positives, truth, size, p.crit)
    loss = losses["loss"] * weight if weight != 1.0 else losses["loss"]
    p.optimizer.zero_grad(set_to_none=True)
    if p.precision.scaler is not None:
        p.precision.scaler.scale(loss).backward()
        p.precision.scaler.step(p.optimizer)
        p.precision.scaler.update()
    else:
        loss.backward()
        p.optimizer.step()
    return {**losses, "loss": losses["loss"].detach()}


def _save_open_epoch(out: Path, p: Parts, state: Dict[str, Any], cfg: DetectConfig, sums: Tensor,
                     started: float) -> None:
    """An in-epoch checkpoint: the epoch's loss sums over every rank go to rank 0's record."""
    total = sums.clone()
    all_reduce_sum(total)
    kept = {**state, "seconds": state["seconds"] + time.perf_counter() - started, "sums": total.tolist()}
    _save(out, p, kept, cfg)


def check_finite_loss(out: Path, cfg: DetectConfig, epoch: int, done: int, loss: float) -> None:
    """Stop a run whose epoch loss is NaN or infinite; the checkpoint on disk stays the last good epoch's."""
    stop_if_diverged(loss, epoch, out / CHECKPOINT, done, f"a learning rate too high for this detector (--lr "
                     f"{cfg.lr:g}), or broken boxes; start again with a lower --lr and --overwrite")


def _finish(
    cfg: DetectConfig,
    model,
    crit,
    test: Sequence[Sample],
    names: Sequence[str],
    device: torch.device,
    out: Path,
    state: Dict[str, Any],
    world_size: int = 1,
) -> Dict[str, Any]:
    result = evaluate(model, test, names, cfg, device)
    summary = {
        "test_map": result["map"],
        "test_map_07": result["map_07"],
        "test_ap": result["ap"],
        **{f"test_{k}": result[k] for k in HEAD_METRICS},
        "epochs": cfg.epochs,
        "dataset": cfg.dataset,
        "loss": cfg.loss,
        "world_size": world_size,
        "seconds": state["seconds"],
    }
    write_json(out / "summary.json", summary)
    if cfg.loss == "ols":
        soft = crit.soft_labels.detach().cpu().numpy()
        np.save(out / "soft_labels.npy", soft)
        from ..eval.plots import figure_or_notice, soft_label_figure

        figure_or_notice(
            soft_label_figure,
            soft,
            list(range(min(4, len(names)))),  # the bars of the first classes beside the heatmap
            list(names),
            out / "soft_labels.png",
            f"OLS soft labels of the class head ({cfg.dataset})",
        )
    return summary


def resume(run_dir: str, epochs: Optional[int] = None, save_every_steps: Optional[int] = None,
           verbose: bool = True) -> Dict[str, Any]:
    """Continue the detection run in ``run_dir`` from its checkpoint, optionally to more ``epochs``."""
    path = Path(run_dir) / CHECKPOINT
    refuse_other_kind(Path(run_dir), "detect", resuming=True)
    if not path.is_file():
        raise ValueError(
            f"nothing to resume: {run_dir} has no {CHECKPOINT} (was it started by `ols detect train`?)"
        )
    values = dict(read_json(Path(run_dir) / "config.json"))
    if epochs is not None:
        if epochs < load_checkpoint(path)["state"]["epoch"]:
            raise ValueError(f"--epochs {epochs} is fewer than the epochs already trained")
        values["epochs"] = epochs
    if save_every_steps is not None:
        values["save_every_steps"] = save_every_steps
    values["out"] = str(run_dir)
    return fit(detect_config_from_dict(values, f"{run_dir}/config.json: "), resume=True, verbose=verbose)


def evaluate_run(run_dir: str, figure: bool = True, verbose: bool = True) -> Dict[str, Any]:
    """``ols detect eval RUN_DIR``: the test mAP and per-class AP into ``eval.json``, and a figure."""
    run = Path(run_dir)
    refuse_other_kind(run, "detect", evaluating=True)
    if not (run / CHECKPOINT).is_file():
        raise ValueError(
            f"{run} holds no detection run ({CHECKPOINT} missing); train one with `ols detect train`"
        )
    cfg = detect_config_from_dict(read_json(run / "config.json"), f"{run}/config.json: ")
    device = resolve_device(cfg.device)
    _, test, names, channels, _ = load_data(cfg)
    model = YOLOv3MobileNetV2(len(names), channels, cfg.width).to(device)
    model.load_state_dict(load_checkpoint(run / CHECKPOINT)["model"])
    if verbose:
        print(settings_line(device, amp=False, channels_last=False, what="detection evaluation"), flush=True)
    result = evaluate(model, test, names, cfg, device)
    files = []
    if figure:
        from ..eval.plots import figure_or_notice

        drawn = figure_or_notice(
            detection_figure, model, test[:8], names, cfg, device, run / "detections.png"
        )
        files = [drawn.name] if drawn else []
    write_json(run / "eval.json", {**result, "files": files})
    if verbose:
        print(
            f"test mAP@0.5 {100 * result['map']:.2f} (VOC area AP; VOC07 11-point: "
            f"{100 * result['map_07']:.2f})"
        )
        for name, ap in result["ap"].items():
            print(f"  {name:14s} {100 * ap:6.2f}")
        print(
            f"class head on the test positives: true-class sigmoid {result['pos_true_sigmoid']:.3f}, "
            f"other classes {result['pos_other_sigmoid']:.3f}, "
            f"argmax right {100 * result['pos_correct']:.1f}%"
        )
    return result


def detection_figure(
    model,
    samples: Sequence[Sample],
    names: Sequence[str],
    cfg: DetectConfig,
    device: torch.device,
    path: Path,
) -> Path:
    """The first test images: ground truth in green, the best detections in red.

    Red: as many of the highest-scoring detections as the image has objects (those scoring 0.05
    or more), with their class and score.
    """
    from ..eval.plots import pyplot

    plt = pyplot()
    found = predict(model, samples, cfg, device)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4), layout="constrained")
    for ax, (image, target), d in zip(axes.flat, samples, found):
        x = image.float() / 255 if image.dtype == torch.uint8 else image
        ax.imshow(x.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        for box in target["boxes"].tolist():
            ax.add_patch(
                plt.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="lime", lw=1.5)
            )
        top = len(target["boxes"])  # as many detections as objects: the detector's best guesses
        best = list(zip(d["boxes"].tolist(), d["labels"].tolist(), d["scores"].tolist()))[:top]
        shown = [(box, label, score) for box, label, score in best if score >= 0.05]
        for box, _, _ in shown:
            ax.add_patch(
                plt.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="red", lw=1,
                              ls="--")
            )
        # each box numbered, its class and score listed above the image: no label overlaps another
        legend = "\n".join(f"{n + 1}. {names[label]} {score:.2f}"
                           for n, (_, label, score) in enumerate(shown))
        for n, (box, _, _) in enumerate(shown):
            ax.text(box[0] + 1, box[1] + 1, str(n + 1), color="white", fontsize=9, va="top",
                    fontweight="bold", bbox={"facecolor": "red", "edgecolor": "none", "pad": 1})
        ax.set_title(legend or "no detection scoring 0.05", fontsize=9, color="red", loc="left")
        ax.set_axis_off()
    fig.suptitle(
        f"{cfg.loss} on {cfg.dataset}: ground truth (green); the best detections, one per object (red)"
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
