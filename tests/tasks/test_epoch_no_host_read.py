"""The engine's training epoch never reads a tensor value back to the host, for every task and both stores.

``train_one_epoch`` runs two batches on ``meta`` tensors under ``FakeTensorMode`` (``device_path``
in conftest.py): the model, the task (and its loss), backward and the optimiser step, as on a GPU.
"""

import numpy as np
import pytest
import torch

from ols import create_loss
from ols.data.mixing import Mixer
from ols.engine import EpochState, train_one_epoch
from ols.losses import OnlineLabelSmoothing
from ols.models import create_model
from ols.tasks import ClassificationTask, MixingTask, MultiExitTask, TwoViewTask

K, B, N = 10, 8, 32


def classification(store):
    crit = OnlineLabelSmoothing(K, topk=4 if store == "top-k" else None)
    return create_model("cnn", K, in_channels=3), ClassificationTask(crit)


def single(store):
    crit = create_loss("ols_single", K, num_samples=N)
    return create_model("cnn", K, in_channels=3), ClassificationTask(crit)


def mixing(store):
    crit = OnlineLabelSmoothing(K, topk=4 if store == "top-k" else None, mixed_update="dominant")
    mixer = Mixer(mixup_alpha=0.2, cutmix_alpha=1.0, mode="elem")
    return create_model("cnn", K, in_channels=3), MixingTask(crit, mixer, seed=1)


def multi_exit(store):
    crit = create_loss("byot+ols", K, num_exits=3)
    if store == "top-k":
        crit = create_loss("deep_supervision", K, base="ols", num_exits=3, kd=0.1, base_args={"topk": 4})
    return create_model("resnet20", K, exits="byot"), MultiExitTask(crit)


def two_view(store):
    model = create_model("resnet20", K)
    return model, TwoViewTask(create_loss("ddgsd", K))


def class_pairs(store):
    from ols.tasks import ClassPairTask

    return create_model("cnn", K, in_channels=3), ClassPairTask(create_loss("cskd", K))


TASKS = {"classification": classification, "ols_single": single, "mixing": mixing, "multi_exit": multi_exit,
         "two_view": two_view, "class_pairs": class_pairs}


CASES = [(task, store) for task in ("classification", "mixing", "multi_exit") for store in ("dense", "top-k")]


@pytest.mark.parametrize("task_name,store", CASES + [("ols_single", "per sample"), ("two_view", "none"),
                                                     ("class_pairs", "none")])
def test_train_one_epoch_never_reads_the_device(device_path, task_name, store):
    model, task = TASKS[task_name](store)
    model, task = model.to("meta"), task.to("meta")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    views = 2 if task_name == "two_view" else 1
    rows = 2 if task_name == "class_pairs" else 1  # each sample and its partner, each with an index
    with device_path() as device:
        labels = torch.randint(0, K, (N,), device=device)
        batches = [(torch.randn(views * rows * B, 3, 32, 32, device=device),
                    torch.arange(i * rows * B, (i + 1) * rows * B, device=device) % N) for i in range(2)]
        state = EpochState.new(N, device)
        assert train_one_epoch(model, task, optimizer, batches, labels, state, total_batches=2)
    assert state.batches == 2


@pytest.mark.parametrize("task_name", ["classification", "mixing", "class_pairs"])
def test_the_graph_step_never_reads_the_device(device_path, task_name):
    """``--cuda-graph``'s step, un-captured (the task's prepare, the static-buffer copies, the body a graph
    holds, the ragged batch's eager step), on the path a GPU takes. Its fused SGD has no meta kernel: the
    sync check of ``benchmarks/gpu.py`` (``set_sync_debug_mode("error")``) covers that part on a GPU."""
    from ols.graph_step import GraphedStep

    model, task = TASKS[task_name]("dense")
    model, task = model.to("meta"), task.to("meta")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rows = task.rows_per_sample * B
    step = GraphedStep(model, task, optimizer, rows, capture=False)
    with device_path() as device:
        labels = torch.randint(0, K, (N,), device=device)
        # two full batches through the graph step, then a ragged one
        batches = [(torch.randn(b, 3, 32, 32, device=device),
                    torch.arange(i * rows, i * rows + b, device=device) % N)
                   for i, b in enumerate((rows, rows, 6))]
        state = EpochState.new(N, device)
        assert train_one_epoch(model, task, optimizer, batches, labels, state, 3, graph=step)
    assert state.batches == 3 and step.static is not None


def test_adamw_clipping_and_the_weight_average_never_read_the_device(device_path):
    """--optimizer adamw, --clip-grad-norm and --ema-decay add to the step; none of them waits."""
    from ols.ema import WeightEMA
    from ols.optim import parameter_groups

    model, task = classification("dense")
    model, task = model.to("meta"), task.to("meta")
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05, decay_norm_bias=False), lr=1e-3)
    ema = WeightEMA(model, 0.999)
    with device_path() as device:
        labels = torch.randint(0, K, (N,), device=device)
        batches = [(torch.randn(B, 3, 32, 32, device=device), torch.arange(i * B, (i + 1) * B, device=device))
                   for i in range(2)]
        state = EpochState.new(N, device)
        assert train_one_epoch(model, task, optimizer, batches, labels, state, 2, clip_grad_norm=1.0, ema=ema)
    assert state.batches == 2 and ema.steps == 2


class _CleanImages:
    """A stand-in for the run's batch source: a clean held-out batch of the requested size, on the device."""

    def __init__(self, device):
        self.device = device

    def extra_batch(self, index, seed, key=0):
        return torch.randn(len(index), 3, 32, 32, device=self.device)


def _noisy_method(name, epoch=1, **kw):
    """The model and the task ``ols train --loss name`` builds, on ``meta``, in epoch ``epoch``."""
    from ols.tasks.registry import build_task

    class Settings:  # the fields a task's from_settings reads
        loss, seed, model = name, 0, "cnn"
        mixup_alpha = cutmix_alpha = 0.0

        def mixer(self):
            return Mixer()

    model = create_model("cnn", K, in_channels=3).to("meta")
    extra = {"num_samples": N} if name in ("bmm", "pencil", "self_learning") else {}
    crit = create_loss(name, K, epochs=4, **extra, **kw).to("meta")
    task = build_task(Settings(), crit, model)
    task.set_epoch(epoch)
    if hasattr(crit, "set_progress"):
        crit.set_progress((epoch - 1) / 4)
    return model, task


def _attach(task, device):
    """The run's data, on ``device``: labels, and a source of clean batches."""
    from ols.tasks.base import TaskData

    labels = torch.randint(0, K, (N,), device=device)
    task.attach(TaskData(source=_CleanImages(device), labels=labels, true_labels=labels,
                         flipped=labels.bool(), train_index=np.arange(N), meta_index=np.arange(16),
                         batch_size=B,
                         eval_batch_size=B, seed=0, epochs=4, lr=lambda: 0.1))
    return labels


@pytest.mark.parametrize("name,epoch,kw", [
    ("l2rw", 1, {}), ("mwnet", 1, {}), ("l2rw", 1, {"base": "ols"}),
    ("bmm", 1, {"warmup_epochs": 1}), ("bmm", 2, {"warmup_epochs": 1, "base": "ols"}),
    ("bmm", 2, {"warmup_epochs": 1, "mixup": False, "variant": "soft"}),
    ("pencil", 1, {"backbone_epochs": 1, "joint_epochs": 1}),
    ("pencil", 2, {"backbone_epochs": 1, "joint_epochs": 1}),
    ("pencil", 3, {"backbone_epochs": 1, "joint_epochs": 1, "base": "ols"}),
    ("self_learning", 1, {}), ("self_learning", 2, {"base": "ols"}),
])
def test_the_noisy_label_methods_never_read_the_device_in_a_step(device_path, name, epoch, kw):
    """Table VII's methods in their every phase: the virtual step and the meta update, the beta mixture's
    lookup, PENCIL's label step, the corrected labels; their once-an-epoch fits run outside the step."""
    model, task = _noisy_method(name, epoch, **kw)
    with device_path() as device:
        labels = _attach(task, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        batches = [(torch.randn(B, 3, 32, 32, device=device), torch.arange(i * B, (i + 1) * B, device=device))
                   for i in range(2)]
        state = EpochState.new(N, device)
        assert train_one_epoch(model, task, optimizer, batches, labels, state, total_batches=2)
    assert state.batches == 2


@pytest.mark.parametrize("name,epoch,kw", [
    ("coteaching", 1, {"noise_rate": 0.4}), ("coteaching", 3, {"noise_rate": 0.4, "base": "ols"}),
    ("coteaching_plus", 3, {"noise_rate": 0.4, "init_epochs": 1, "base": "ols"}),
    ("elr", 1, {"num_samples": N}), ("elr", 2, {"num_samples": N, "base": "ols"}),
    ("dividemix", 1, {"num_samples": N, "warmup_epochs": 1}),
    ("dividemix", 2, {"num_samples": N, "warmup_epochs": 1, "base": "ols"}),
])
def test_the_modern_noisy_label_methods_never_read_the_device_in_a_step(device_path, name, epoch, kw):
    """Co-teaching(+), ELR and DivideMix (issue 43) in each phase: the pair's forward, the small-loss and
    disagreement selections, the running targets, co-refinement, co-guessing and MixMatch."""
    from ols.models.pair import NetworkPair
    from ols.tasks.registry import build_task

    class Settings:
        loss, seed, model = name, 0, "cnn"
        mixup_alpha = cutmix_alpha = 0.0

        def mixer(self):
            return Mixer()

    crit = create_loss(name, K, epochs=4, **kw).to("meta")
    model = create_model("cnn", K, in_channels=3)
    if getattr(crit, "networks", 1) == 2:
        model = NetworkPair(model, create_model("cnn", K, in_channels=3))
    model = model.to("meta")
    task = build_task(Settings(), crit, model)
    views = getattr(task, "views", 1)
    with device_path() as device:
        labels = _attach(task, device)
        task.set_epoch(epoch)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        batches = [(torch.randn(views * B, 3, 32, 32, device=device),
                    torch.arange(i * B, (i + 1) * B, device=device)) for i in range(2)]
        state = EpochState.new(N, device)
        assert train_one_epoch(model, task, optimizer, batches, labels, state, total_batches=2)
    assert state.batches == 2
