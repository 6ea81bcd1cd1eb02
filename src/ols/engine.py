"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit``.

This is the only module that knows about epochs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .config import TrainConfig
from .data import asymmetric_noise_cifar10, load_dataset, symmetric_noise
from .eval import classification_metrics
from .losses import create_loss, loss_parameters
from .models import create_model
from .rundir import append_jsonl, write_json
from .utils.progress import progress


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available; use --device cpu")
    return device


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    generator: torch.Generator,
    scheduler: Optional[Any] = None,
    show_progress: bool = False,
    desc: str = "train",
) -> Dict[str, float]:
    """One pass over ``images`` ``(N, C, H, W)`` / ``labels`` ``(N,)`` in a seeded order.

    The loss sees each sample's dataset index when it asks for one (OLS-Single). At the
    end of the epoch, a loss with a ``step()`` method (OLS) closes its update period.

    Returns ``train_loss`` (mean over samples) and ``train_err`` (percent, against the
    labels trained on).
    """
    model.train()
    criterion.train()
    n = labels.shape[0]
    order = torch.randperm(n, generator=generator).to(labels.device)
    starts = range(0, n, batch_size)
    loss_sum = torch.zeros((), device=labels.device)
    wrong = torch.zeros((), dtype=torch.long, device=labels.device)
    needs_index = getattr(criterion, "needs_index", False)
    for start in progress(starts, len(starts), desc, show_progress):
        idx = order[start : start + batch_size]
        x, y = images.index_select(0, idx), labels.index_select(0, idx)
        logits = model(x)  # (B, K)
        loss = criterion(logits, y, index=idx) if needs_index else criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * y.shape[0]
        wrong += (logits.detach().argmax(1) != y).sum()
    if hasattr(criterion, "step"):
        criterion.step()
    return {"train_loss": float(loss_sum) / n, "train_err": 100.0 * float(wrong) / n}


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """``(N, K)`` float32 logits of ``model`` in eval mode."""
    model.eval()
    out = [model(images[i : i + batch_size]).float() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> Dict[str, float]:
    """Top-1/top-5 error, NLL and ECE (15 bins) of ``model`` on a labelled set."""
    return classification_metrics(predict(model, images, batch_size), labels)


def build_loss(cfg: TrainConfig, num_classes: int, num_samples: int) -> nn.Module:
    """The loss ``cfg.loss`` with ``cfg.alpha`` and ``cfg.loss_args`` where it takes them."""
    params = loss_parameters(cfg.loss)
    kw: Dict[str, Any] = dict(cfg.loss_args)
    if cfg.alpha is not None:
        if "alpha" not in params:
            raise ValueError(f"--alpha was given but loss {cfg.loss!r} has no alpha parameter")
        kw["alpha"] = cfg.alpha
    if "num_samples" in params:
        kw["num_samples"] = num_samples
    if "seed" in params and "seed" not in kw:
        kw["seed"] = cfg.seed
    return create_loss(cfg.loss, num_classes, **kw)


def corrupt_labels(cfg: TrainConfig, labels: np.ndarray, num_classes: int):
    """``(noisy, flipped)`` training labels for ``cfg.noise_rate`` / ``cfg.noise_type``."""
    if cfg.noise_type == "asymmetric":
        return asymmetric_noise_cifar10(labels, cfg.noise_rate, cfg.seed, num_classes)
    return symmetric_noise(labels, cfg.noise_rate, num_classes, cfg.seed)


def fit(cfg: TrainConfig, verbose: bool = True) -> Dict[str, Any]:
    """Train and evaluate as ``cfg`` says; write the run directory; return the summary.

    The run directory holds ``config.json`` (resolved), ``metrics.jsonl`` (one line per
    epoch), ``summary.json``, the noisy labels and flip mask (``.npy``) and, for a loss
    with soft labels, ``soft_labels.npy``. On the CPU, the same config gives the same
    numbers.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    write_json(out / "config.json", cfg.to_dict())

    true_labels = data.train_y.numpy()
    noisy, flipped = corrupt_labels(cfg, true_labels, data.num_classes)
    np.save(out / "train_labels_noisy.npy", noisy)
    np.save(out / "train_flipped.npy", flipped)

    train_x, test_x = data.train_x.to(device), data.test_x.to(device)
    train_y, test_y = torch.from_numpy(noisy).to(device), data.test_y.to(device)
    model = create_model(cfg.model, data.num_classes, in_channels=data.input_shape[0]).to(device)
    criterion = build_loss(cfg, data.num_classes, train_y.shape[0]).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    steps_per_epoch = -(-train_y.shape[0] // cfg.batch_size)
    scheduler = None
    if cfg.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs * steps_per_epoch
        )
    generator = torch.Generator().manual_seed(cfg.seed)

    metrics: Dict[str, Any] = {}
    best = float("inf")
    for epoch in range(1, cfg.epochs + 1):
        e0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(
            model, criterion, optimizer, train_x, train_y, cfg.batch_size, generator, scheduler,
            show_progress=cfg.progress and verbose, desc=f"epoch {epoch}/{cfg.epochs}",
        )
        test = evaluate(model, test_x, test_y)
        best = min(best, test["top1_err"])
        metrics = {"epoch": epoch, **train, **{f"test_{k}": v for k, v in test.items()},
                   "lr": lr, "seconds": time.perf_counter() - e0}
        append_jsonl(out / "metrics.jsonl", metrics)

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
        "epochs": cfg.epochs,
        "noise_rate": cfg.noise_rate,
        "realised_noise_rate": float(flipped.mean()) if flipped.size else 0.0,
        "seconds": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    return summary
