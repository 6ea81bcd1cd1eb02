"""A run's set-up: everything built from the :class:`~ols.config.TrainConfig`, once.

The config travels down here and stops: :class:`Run` holds the data, labels, model, loss,
task, optimiser and schedule, and the loop's own settings
(:class:`~ols.loop_settings.LoopSettings`, :class:`~ols.engine.Precision`); the loop reads
no config.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .config import FIELDS, TrainConfig
from .data import asymmetric_noise_cifar10, load_dataset, symmetric_noise
from .data.batches import TensorSource, augmentation_ops, make_source
from .data.download import download_dataset
from .data.holdout import clean_held_out, held_out_split
from .distributed import DistContext, is_distributed, on_rank_zero_first, wrap_ddp
from .ema import WeightEMA
from .engine import Precision
from .graph_step import GraphedStep, graph_refusal
from .loop_settings import LoopSettings
from .losses import LOSSES, create_loss, loss_parameters
from .losses.registry import loss_networks
from .losses.step_reminder import mark_stepped_by
from .models import Classifier, create_model, load_pretrained
from .models.pair import NetworkPair, check_peer
from .optim import build_optimizer, build_scheduler
from .tasks.base import TaskData
from .tasks.registry import build_task
from .utils.kwargs import typed_kwargs


def build_loss(cfg: TrainConfig, num_classes: int, num_samples: int,
               num_exits: int = 1) -> nn.Module:
    """The loss ``cfg.loss`` with ``cfg.alpha`` and ``cfg.loss_args`` where it takes them.

    ``num_exits`` (the model's) goes to a self-distillation loss over exits when there are several.
    """
    params = loss_parameters(cfg.loss)  # an unknown loss name is an error here
    kw: Dict[str, Any] = dict(cfg.loss_args)
    if kw.get("reduction", "mean") != "mean":
        given = str(kw["reduction"]).lower()  # "none" arrives as None
        raise ValueError(f"--loss-arg reduction={given}: the engine trains on the batch mean, so the loss "
                         "must reduce to it; drop the option (reduction= is for your own training loop)")
    engine_set = sorted({"num_samples", "epochs", "num_exits", "noise_rate"} & set(kw) & set(params))
    if engine_set:  # ols train gives these itself, and its value would replace the one given
        raise ValueError(f"--loss-arg {engine_set[0]}: ols train sets it (the training set's size, --epochs, "
                         "the model's exits, --noise-rate); drop it")
    if cfg.alpha is not None:
        if "alpha" not in params:
            raise ValueError(f"--alpha was given but loss {cfg.loss!r} has no alpha parameter")
        kw["alpha"] = cfg.alpha
    if "num_samples" in params:
        kw["num_samples"] = num_samples
    if "noise_rate" in params:  # Co-teaching's forget rate defaults to it
        kw["noise_rate"] = cfg.noise_rate
    if "epochs" in params:  # a loss scheduled by epoch (pskd's alpha_t)
        kw["epochs"] = cfg.epochs
    if "sharded" in params and "sharded" not in kw and is_distributed():
        kw["sharded"] = True  # per-sample state: each rank its own shard (Run.epoch_batches keeps shards)
    if "seed" in params and "seed" not in kw:
        kw["seed"] = cfg.seed
    if "num_exits" in params and num_exits > 1:
        kw["num_exits"] = num_exits
    return create_loss(cfg.loss, num_classes, **typed_kwargs(LOSSES[cfg.loss], kw, "--loss-arg",
                                                              f"loss {cfg.loss!r}"))


def corrupt_labels(cfg: TrainConfig, labels: np.ndarray, num_classes: int, clean: Sequence[int] = ()):
    """``(noisy, flipped)`` training labels for ``cfg.noise_rate`` / ``cfg.noise_type``.

    The samples ``clean`` (the clean held-out set) keep their labels: the noise is drawn over the
    others alone, so ``round(rate * (N - M))`` of them flip.
    """
    rest = np.setdiff1d(np.arange(len(labels)), np.asarray(clean, dtype=np.int64))
    if cfg.noise_type == "asymmetric":
        part, flips = asymmetric_noise_cifar10(labels[rest], cfg.noise_rate, cfg.seed, num_classes)
    else:
        part, flips = symmetric_noise(labels[rest], cfg.noise_rate, num_classes, cfg.seed)
    noisy, flipped = np.asarray(labels, dtype=np.int64).copy(), np.zeros(len(labels), dtype=bool)
    noisy[rest], flipped[rest] = part, flips
    return noisy, flipped


#: the clean held-out set's size when ``--meta-size`` is unset and the loss learns from one (Ren et al.
#: and Meta-Weight-Net keep 1,000 CIFAR images)
CIFAR_META_SIZE = 1000


def meta_size(cfg: TrainConfig) -> float:
    """``--meta-size``, or its default: 1,000 for CIFAR with a loss that needs a clean set, else 0."""
    if cfg.meta_size is not None:
        return cfg.meta_size
    needs = getattr(LOSSES.get(cfg.loss), "needs_clean_set", False)
    return CIFAR_META_SIZE if needs and cfg.dataset in ("cifar10", "cifar100") else 0.0


def check_clean_set(cfg: TrainConfig, size: float) -> None:
    """A loss that learns from the clean held-out set refuses a run without one, in one line."""
    if getattr(LOSSES.get(cfg.loss), "needs_clean_set", False) and not size:
        raise ValueError(f"loss {cfg.loss!r} learns its sample weights from a clean held-out set: give "
                         "--meta-size N (N training images taken out before the noise is drawn, with their "
                         "clean labels; Ren et al. and Meta-Weight-Net keep 1,000 of CIFAR's)")


def epoch_order(num_samples: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Sequence[int]:
    """The rank's sample order for ``epoch``: ``DistributedSampler`` after ``set_epoch(epoch)``.

    A function of ``(seed, epoch, rank)`` alone, so a resumed run replays it. With
    several ranks the sampler pads to equal shards by repeating a few samples.
    """
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def sharded_epoch_order(train_index: np.ndarray, seed: int, epoch: int, rank: int,
                        world_size: int) -> List[int]:
    """Rank ``rank``'s dataset indices for ``epoch`` when every sample stays on one rank for good.

    Rank ``r`` trains on the samples whose dataset index is ``r`` modulo ``world_size`` (the
    shard a sharded per-sample loss keeps, :class:`~ols.losses.pskd.ProgressiveSelfKD`),
    shuffled by ``(seed, epoch, rank)``; a shorter shard repeats its first samples to the
    longest one's length, so every rank takes the same number of steps (as
    ``DistributedSampler`` pads). The global batch of a step is then a stratified draw, a
    sample from every shard, rather than a draw from the whole set.
    """
    train_index = np.asarray(train_index, dtype=np.int64)
    longest = max(int((train_index % world_size == r).sum()) for r in range(world_size))
    own = train_index[train_index % world_size == rank]
    gen = np.random.default_rng(np.random.SeedSequence((seed, epoch, rank, 0x5AD)))
    own = own[gen.permutation(len(own))]
    return np.resize(own, longest).tolist() if len(own) else []


def augmentation_generator(device: torch.device, seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The augmentation generator for one epoch on one rank, seeded from ``(seed, epoch, rank)``."""
    # shifted as a Python int: numpy 1.x refuses ``np.uint64 >> int`` (it promotes to float64)
    derived = int(np.random.SeedSequence((seed, epoch, rank)).generate_state(1, np.uint64)[0]) >> 1
    return torch.Generator(device=device).manual_seed(derived)


def build_model(cfg: TrainConfig, data, device: torch.device, for_eval: bool = False) -> nn.Module:
    """The network ``cfg.model`` behind the dataset's normalisation, on ``device``.

    A two-network method (:func:`~ols.losses.registry.loss_networks`) gets a
    :class:`~ols.models.pair.NetworkPair`: ``cfg.model`` and a second network, ``cfg.peer_model``
    or another ``cfg.model``, built after the first from the same seed (so initialised apart).
    ``for_eval``: the shape ``ols eval`` loads a checkpoint into (no ``--pretrained`` file, no
    channels-last layout).
    """
    for flag, name in (("--model", cfg.model), ("--peer-model", cfg.peer_model)):
        if name in ("linear", "mlp") and tuple(data.input_shape[1:]) != (1, 1):
            raise ValueError(f"{flag} {name} takes feature sets of shape (N, d, 1, 1) (e.g. --dataset "
                             f"manyclass), not {cfg.dataset}'s images of {tuple(data.input_shape)}; "
                             f"use {flag} cnn or a ResNet")
    first = _classifier(cfg, cfg.model, data, device, for_eval)
    if loss_networks(cfg.loss) == 1:
        if cfg.peer_model is not None:
            raise ValueError(f"--peer-model is the second network of a two-network method, and loss "
                             f"{cfg.loss!r} trains one; drop it, or use --loss coteaching, coteaching_plus "
                             "or dividemix")
        return first
    if cfg.exits != "none":
        raise ValueError(f"loss {cfg.loss!r} trains two networks, and --exits {cfg.exits} is for the "
                         "self-distillation losses; drop --exits")
    peer_name = cfg.peer_model or cfg.model
    peer = _classifier(cfg, peer_name, data, device, for_eval)
    check_peer(first, peer, data.input_shape, (cfg.model, peer_name))
    return NetworkPair(first, peer)


def _classifier(cfg: TrainConfig, name: str, data, device: torch.device, for_eval: bool) -> Classifier:
    net = create_model(name, data.num_classes, exits=cfg.exits, in_channels=data.input_shape[0])
    if cfg.pretrained and not for_eval:  # into the backbone (a plain file fits a multi-exit net)
        loaded, skipped = load_pretrained(getattr(net, "backbone", net), cfg.pretrained)
        print(f"--pretrained: loaded {len(loaded)} tensors, kept {len(skipped)} of the model's own "
              f"({', '.join(skipped[:4])}{'...' if len(skipped) > 4 else ''})", file=sys.stderr)
    model = Classifier(net, data.mean, data.std).to(device)
    if cfg.channels_last and device.type == "cuda" and not for_eval:
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class Run:
    """What one training run is made of; built by :func:`build_run`, read by the loop."""

    settings: LoopSettings
    ctx: DistContext
    out: Path
    data: Any
    source: Any
    noisy: np.ndarray  # (N,) labels trained on (the true ones at meta_index)
    flipped: np.ndarray  # (N,) bool, where noise changed the label
    train_index: np.ndarray  # the samples trained on, sorted
    held_index: np.ndarray  # held out for temperature scaling (--val-fraction), never trained on
    meta_index: np.ndarray  # the clean held-out set (--meta-size): clean labels, never trained on as data
    train_y: Tensor  # (N,) noisy labels on the device
    true_y: Tensor
    flipped_t: Tensor
    test_y: Tensor
    model: nn.Module  # the plain model (a Classifier, or a NetworkPair): checkpoints and evaluation
    train_model: nn.Module  # what trains: the model, maybe under DDP and torch.compile
    criterion: nn.Module
    task: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    precision: Precision
    graph: Optional[GraphedStep] = None  # --cuda-graph
    ema: Optional[WeightEMA] = None  # --ema-decay

    @property
    def num_samples(self) -> int:
        """``N``: every training sample, held-out ones included (state is indexed by dataset position)."""
        return int(self.train_y.shape[0])

    def rank_order(self, epoch: int, rank: int, world_size: int, sharded: bool) -> List[int]:
        """Rank ``rank`` of ``world_size``'s dataset indices for ``epoch``, before the task reshapes them.

        ``sharded``: the loss keeps per-sample state by sample, so each sample stays on one rank.
        """
        s = self.settings
        if sharded:  # each sample on the rank that keeps its state
            return sharded_epoch_order(self.train_index, s.seed, epoch, rank, world_size)
        order = epoch_order(len(self.train_index), s.seed, epoch, rank, world_size)
        return self.train_index[np.asarray(order, dtype=np.int64)].tolist()  # positions -> indices

    def epoch_batches(self, epoch: int, start: int, gen: torch.Generator, order: Optional[List[int]] = None):
        """The rank's training batches of ``epoch`` from batch ``start`` on, in the task's views.

        ``order``: the rank's samples when not :meth:`rank_order`'s (an epoch dealt out again).
        """
        s, ctx = self.settings, self.ctx
        if order is None:
            sharded = getattr(self.criterion, "sharded", False)
            order = self.rank_order(epoch, ctx.rank, ctx.world_size, sharded)
        order, batch = self.task.epoch_order(order, self.noisy, s.batch_size, s.seed, epoch,
                                             self.ctx.rank)  # a task may reshape it (CS-KD's class pairs)
        return self.source.train(order, batch, start, gen, epoch, self.task.views)

    def criterion_state(self) -> Optional[Dict[str, Any]]:
        """The loss's ``state_dict()`` for a checkpoint, per-sample shards gathered into one layout.

        A collective when a loss keeps a shard of per-sample state per rank: every rank calls it;
        rank 0 gets the state (a resume then works on any number of ranks), the others ``None``.
        """
        state = self.criterion.state_dict() if self.ctx.is_main else None
        for name, sub in self.criterion.named_modules():
            if getattr(sub, "sharded", False) and hasattr(sub, "gathered_state"):
                gathered = sub.gathered_state(f"{name}." if name else "")
                if state is not None:
                    state.update(gathered)
        return state

    def test_batches(self):
        return self.source.test(self.settings.eval_batch_size)


def build_run(cfg: TrainConfig, ctx: DistContext, labels: Optional[Dict[str, np.ndarray]] = None) -> Run:
    """Everything ``cfg`` describes, on ``ctx.device``.

    ``labels`` (``noisy``, ``flipped``, ``meta``) come from a checkpoint when resuming; a new run
    draws them: the clean held-out set first, then the noise over the rest.
    """
    device = ctx.device
    loss_parameters(cfg.loss)  # an unknown loss name is one line before the data is read
    check_clean_set(cfg, meta_size(cfg))
    torch.manual_seed(cfg.seed)
    if cfg.download:
        on_rank_zero_first(lambda: download_dataset(cfg.dataset, cfg.data_dir), ctx)
    data = load_dataset(cfg.dataset, cfg.data_dir, **cfg.data_args)
    true_labels = data.train_y.numpy()
    if labels is None:
        meta_index = clean_held_out(true_labels, meta_size(cfg), cfg.seed)
        noisy, flipped = corrupt_labels(cfg, true_labels, data.num_classes, meta_index)
    else:
        noisy, flipped, meta_index = labels["noisy"], labels["flipped"], labels["meta"]
    ops = augmentation_ops(cfg.dataset, cfg.augment)
    for op, name in (("cutout", "cutout_size"), ("crop", "crop_padding")):
        value = getattr(cfg, name)
        if value != FIELDS[name].default and op not in ops:
            raise ValueError(f"--{name.replace('_', '-')} {value} has no effect without {op} in --augment "
                             f"(now {','.join(ops) or 'none'}); add it, e.g. --augment crop,flip,cutout")
    source = make_source(cfg.dataset, data, device, cfg.augment, cfg.crop_padding, cfg.cutout_size,
                         cfg.num_workers, cfg.seed, cfg.decode)
    n = len(noisy)
    train_index, held_index = held_out_split(noisy, cfg.val_fraction, cfg.seed)
    train_index = np.setdiff1d(train_index, meta_index)
    model = build_model(cfg, data, device)
    criterion = build_loss(cfg, data.num_classes, n, model.num_exits).to(device)
    mark_stepped_by(criterion, "ols train")
    task = build_task(cfg, criterion, model, ctx.rank)
    if cfg.cuda_graph:
        on_device = isinstance(source, TensorSource) or cfg.decode == "gpu"
        why = graph_refusal(device, tensor_data=on_device, dataset=cfg.dataset, compile=cfg.compile)
        if why is None and getattr(criterion, "cuda_graph_refusal", None):
            why = (f"--cuda-graph cannot capture loss {cfg.loss!r}: {criterion.cuda_graph_refusal}; drop "
                   "--cuda-graph")
        if why:
            raise ValueError(why)
    optimizer = build_optimizer(model, cfg, graph=cfg.cuda_graph)
    use_amp = cfg.amp and device.type == "cuda"
    steps_per_epoch = math.ceil(math.ceil(len(train_index) / ctx.world_size) / cfg.batch_size)
    train_model: nn.Module = model
    if ctx.world_size > 1:
        train_model = wrap_ddp(model, device, cuda_graph=cfg.cuda_graph)
    if cfg.compile:
        train_model = torch.compile(train_model)
    train_y, true_y = torch.from_numpy(noisy).to(device), torch.from_numpy(true_labels).to(device)
    flipped_t = torch.from_numpy(flipped).to(device)
    task.attach(TaskData(source=source, labels=train_y, true_labels=true_y, flipped=flipped_t,
                         train_index=train_index, meta_index=meta_index, batch_size=cfg.batch_size,
                         eval_batch_size=cfg.eval_batch_size, seed=cfg.seed, epochs=cfg.epochs, rank=ctx.rank,
                         world_size=ctx.world_size, lr=lambda: float(optimizer.param_groups[0]["lr"]),
                         steps_per_epoch=steps_per_epoch))
    return Run(
        settings=LoopSettings.from_config(cfg), ctx=ctx, out=Path(cfg.out), data=data, source=source,
        noisy=noisy, flipped=flipped,
        train_index=train_index, held_index=held_index, meta_index=meta_index,
        train_y=train_y, true_y=true_y, flipped_t=flipped_t, test_y=data.test_y.to(device),
        model=model, train_model=train_model, criterion=criterion,
        task=task, optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg, steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        precision=Precision(amp=use_amp, channels_last=cfg.channels_last and device.type == "cuda"),
        graph=(GraphedStep(train_model, task, optimizer, cfg.batch_size * task.rows_per_sample, use_amp)
               if cfg.cuda_graph else None),
        ema=WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
    )
