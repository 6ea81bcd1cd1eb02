"""The training and evaluation loops: one epoch, prediction, and the epoch's metrics.

Everything here is a function of its arguments and knows no config: a run's set-up is
:mod:`ols.run_setup`, its directory, checkpoints and ``torchrun`` are :mod:`ols.trainer`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import Tensor, nn

from .distributed import all_reduce_max, all_reduce_sum
from .eval import classification_metrics
from .eval.metrics import temperature_scaled
from .utils.progress import LaggedValue, progress


def autocast(device: torch.device, enabled: bool, cache: bool = True):
    """bf16 autocast on CUDA when ``enabled``; nothing elsewhere. ``cache=False`` under graph capture."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


#: the training metrics of :func:`epoch_training_metrics`; error on the flipped samples against
#: their wrong labels is higher-is-better: a model that does not memorise the noise gets them "wrong"
HIGHER_IS_BETTER = {"train_loss": False, "train_err": False, "train_err_noisy_vs_noisy": True,
                    "train_err_noisy_vs_true": False, "train_err_clean": False}
HEADERS = {"train_loss": "training loss", "train_err": "training error (%)",
           "train_err_noisy_vs_noisy": "error on flipped samples vs their wrong labels (%)",
           "train_err_noisy_vs_true": "error on flipped samples vs their true labels (%)",
           "train_err_clean": "training error on unflipped samples (%)"}


@dataclass(frozen=True)
class Precision:
    """How a step computes: bf16 autocast on CUDA (``amp``) and channels-last input images."""

    amp: bool = False
    channels_last: bool = False


@dataclass
class EpochState:
    """What an epoch has accumulated; a mid-epoch checkpoint saves it to resume exactly.

    ``preds`` ``(N,)``: the train-mode argmax of every sample seen this epoch, ``-1`` for
    one not seen yet (noisy-label tracking compares it with noisy and true labels).
    """

    batches: int
    loss_sum: Tensor
    seen: Tensor
    preds: Tensor
    step_loss: Optional[Tensor] = None  # (steps,) each step's loss, for the loggers; read at the epoch's end

    @classmethod
    def new(cls, num_samples: int, device: torch.device, steps: int = 0) -> EpochState:
        return cls(0, torch.zeros((), dtype=torch.float64, device=device),
                   torch.zeros((), dtype=torch.float64, device=device),
                   torch.full((num_samples,), -1, dtype=torch.long, device=device),
                   torch.zeros(steps, dtype=torch.float32, device=device))

    def to_dict(self) -> Dict[str, Any]:
        step_loss = None if self.step_loss is None else self.step_loss.cpu()
        return {"batches": self.batches, "loss_sum": self.loss_sum.cpu(), "seen": self.seen.cpu(),
                "preds": self.preds.cpu(), "step_loss": step_loss}

    @classmethod
    def from_dict(cls, d: Dict[str, Any], device: torch.device) -> EpochState:
        step_loss = d.get("step_loss")  # absent from checkpoints written before it existed
        return cls(int(d["batches"]), d["loss_sum"].to(device), d["seen"].to(device), d["preds"].to(device),
                   None if step_loss is None else step_loss.to(device))


def train_step(model: nn.Module, task: Callable, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               idx: Tensor, use_amp: bool = False, clip_grad_norm: float = 0.0) -> Tuple[Tensor, Tensor]:
    """One eager step on ``x`` ``(B, ...)``, ``y`` ``(B,)``: the detached loss and ``(B, K)`` logits.

    ``task(model, x, y, idx) -> {"loss", "logits"}`` (a :mod:`ols.tasks` task, or any callable).
    ``clip_grad_norm > 0`` scales the gradients down to that global L2 norm when above it
    (on the device: the norm is not read back).
    """
    with autocast(x.device, use_amp):
        out = task(model, x, y, idx)
    return _update(model, optimizer, out, clip_grad_norm)


def prepared_step(model: nn.Module, task: nn.Module, optimizer: torch.optim.Optimizer,
                  inputs: Tuple[Tensor, ...], use_amp: bool = False) -> Tuple[Tensor, Tensor]:
    """:func:`train_step` on a task's prepared ``inputs`` (:meth:`~ols.tasks.base.Task.prepare`).

    The step ``--cuda-graph`` holds: ``task.compute(model, *inputs)``, then the update.
    """
    with autocast(inputs[0].device, use_amp):
        out = task.compute(model, *inputs)
    return _update(model, optimizer, out, 0.0)  # --cuda-graph refuses --clip-grad-norm


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, out: Dict[str, Tensor],
            clip_grad_norm: float) -> Tuple[Tensor, Tensor]:
    """Backward from ``out["loss"]``, clip, step: the detached loss and logits."""
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if clip_grad_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    optimizer.step()
    return out["loss"].detach(), out["logits"].detach()


def train_one_epoch(
    model: nn.Module,
    task: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    labels: Tensor,
    state: EpochState,
    total_batches: int,
    scheduler: Optional[Any] = None,
    precision: Precision = Precision(),
    should_stop: Callable[[], bool] = lambda: False,
    show_progress: bool = False,
    desc: str = "train",
    graph: Optional[Any] = None,
    clip_grad_norm: float = 0.0,
    ema: Optional[Any] = None,
    on_step: Optional[Callable[[], None]] = None,
) -> bool:
    """Train on ``batches`` (``(x, idx)`` pairs) against ``labels[idx]``, updating ``state``.

    ``labels`` ``(N,)`` are the labels trained on (noisy, if noise was added); ``task``
    (:mod:`ols.tasks`) turns a batch into ``{"loss", "logits"}``. Returns ``False`` when
    ``should_stop()`` ended the epoch early (``state`` then says how far it got). Closing
    the loss's update period is the caller's, after a full epoch. ``graph``
    (:class:`~ols.graph_step.GraphedStep`) trains the full batches; the others train eagerly.
    ``precision`` says autocast and memory format; ``clip_grad_norm`` goes to
    :func:`train_step`; ``ema`` (:class:`~ols.ema.WeightEMA`) moves after every step;
    ``on_step()`` runs after each (the run's in-epoch checkpoints; it reads host counters only).
    """
    model.train()
    task.train()
    running = LaggedValue(lambda: state.loss_sum / state.seen.clamp_min(1))  # the epoch's mean loss so far
    bar = progress(batches, total_batches, desc, show_progress, initial=state.batches, postfix=running.text)
    for x, idx in bar:
        if precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels.index_select(0, idx)
        if graph is not None and graph.fits(idx):
            loss, logits = graph(x, y, idx)
        else:
            loss, logits = train_step(model, task, optimizer, x, y, idx, precision.amp, clip_grad_norm)
        if ema is not None:
            ema.update()
        if scheduler is not None:
            scheduler.step()
        state.loss_sum += loss.double() * y.shape[0]
        state.seen += y.shape[0]
        state.preds[idx] = logits.argmax(1)
        if state.step_loss is not None and state.batches < state.step_loss.shape[0]:
            state.step_loss[state.batches] = loss  # a device write; the loggers read it at the epoch's end
        state.batches += 1
        if on_step is not None:
            on_step()
        if should_stop():
            return False
    return True


def epoch_training_metrics(state: EpochState, noisy: Tensor, true: Tensor,
                           flipped: Tensor) -> Dict[str, float]:
    """``train_loss`` and train errors (percent) of a finished epoch, summed over ranks.

    ``train_err`` is against the labels trained on. With label noise (``flipped`` ``(N,)``
    bool has a True) it adds, as in the paper's Figs. 4-5: ``train_err_noisy_vs_noisy``
    (flipped samples against their wrong labels), ``train_err_noisy_vs_true`` (the same
    samples against their true labels) and ``train_err_clean``.
    """
    loss_sum, seen, preds = state.loss_sum.clone(), state.seen.clone(), state.preds.clone()
    all_reduce_sum(loss_sum, seen)
    all_reduce_max(preds)  # each rank filled its own shard; -1 elsewhere
    out = {"train_loss": float(loss_sum / seen.clamp_min(1))}
    seen_mask = preds >= 0

    def err(mask: Tensor, against: Tensor) -> float:
        m = mask & seen_mask
        return 100.0 * float((preds[m] != against[m]).double().mean()) if bool(m.any()) else float("nan")

    out["train_err"] = err(torch.ones_like(seen_mask), noisy)
    if bool(flipped.any()):
        out["train_err_noisy_vs_noisy"] = err(flipped, noisy)
        out["train_err_noisy_vs_true"] = err(flipped, true)
        out["train_err_clean"] = err(~flipped, noisy)
    return out


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, use_amp: bool = False,
            channels_last: bool = False, show_progress: bool = False, desc: str = "test") -> Tensor:
    """``(N, K)`` float32 logits of ``model`` in eval mode over ``(x, _)`` batches.

    ``show_progress``: a bar on a terminal (its length is known where ``batches`` has one).
    """
    model.eval()
    out = []
    total = len(batches) if hasattr(batches, "__len__") else None
    for x, _ in progress(batches, total, desc, show_progress):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, use_amp):
            out.append(model(x).float())
    return torch.cat(out) if out else torch.empty(0)


def held_out_temperature(model: nn.Module, held_batches: Iterable, held_y: Tensor, test_logits: Tensor,
                         test_y: Tensor, **kw: Any) -> Dict[str, float]:
    """Temperature scaling: ``T`` fitted on the held-out ``(x, _)`` batches, the test metrics at ``T``.

    ``held_y`` ``(M,)`` are the held-out labels, ``test_logits`` ``(N, K)``; returns
    ``temperature``, ``held_out_samples`` and ``test_nll_ts``, ``test_ece_ts``,
    ``test_ece_signed_ts``. ``kw`` goes to :func:`predict`.
    """
    scaled = temperature_scaled(test_logits, test_y, predict(model, held_batches, **kw), held_y)
    return {"temperature": scaled["temperature"], "held_out_samples": int(held_y.shape[0]),
            **{f"test_{k}": v for k, v in scaled.items() if k != "temperature"}}


def evaluate(model: nn.Module, batches: Iterable, labels: Tensor, **kw: Any) -> Dict[str, float]:
    """Top-1/top-5 error, NLL and ECE (15 bins) of ``model`` on a labelled set."""
    return classification_metrics(predict(model, batches, **kw), labels)
