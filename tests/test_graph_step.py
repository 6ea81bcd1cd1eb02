"""``--cuda-graph`` on the CPU: the static-buffer step equals the eager one, the ragged batch trains eagerly,
what the graph reads is written in place, and every configuration it cannot capture is refused in one line.

The capture itself needs CUDA (``benchmarks/gpu.py`` checks it there: soft labels after an epoch equal
the eager run's); here ``GraphedStep(capture=False)`` runs the very step the graph would hold.
"""

import json
import subprocess
import sys

import pytest
import torch

from conftest import small_cnn_training, train_epoch
from ols import create_loss
from ols.config import TrainConfig
from ols.data.mixing import Mixer
from ols.graph_step import GraphedStep, graph_refusal
from ols.losses import LOSSES, OnlineLabelSmoothing, loss_parameters
from ols.losses.protocol import is_periodic, needs_index
from ols.optim import build_optimizer, lr_on_device
from ols.tasks import ClassificationTask, MixingTask

K, B, N = 10, 16, 72  # 4 full batches and a ragged one of 8


def _setup(graph: bool, seed: int = 0, task=None):
    task = task or ClassificationTask(OnlineLabelSmoothing(K))
    return small_cnn_training(graph, task, -(-N // B), K, seed)


@pytest.mark.parametrize("update_every", [None, 3])
def test_the_static_buffer_step_equals_the_eager_step_over_two_epochs(update_every):
    """With ``update_every=3`` OLS steps itself inside the forward in eager mode, and after the
    graph step (its host count runs after each replay): the same soft labels, stepped as often."""
    gen = torch.Generator().manual_seed(1)
    x, labels = torch.rand(N, 1, 12, 12, generator=gen), torch.randint(0, K, (N,), generator=gen)
    eager = _setup(graph=False, task=ClassificationTask(OnlineLabelSmoothing(K, update_every=update_every)))
    # fused SGD, the learning rate a tensor the schedule fills in place
    graphed = _setup(graph=True, task=ClassificationTask(OnlineLabelSmoothing(K, update_every=update_every)))
    step = GraphedStep(graphed[0], graphed[1], graphed[2], B, capture=False)
    calls = []
    step._eager = (lambda inner: lambda: calls.append(1) or inner())(step._eager)
    for epoch in range(2):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(epoch))
        s_eager = train_epoch(*eager, x, labels, order)
        s_graph = train_epoch(*graphed, x, labels, order, graph=step)
        torch.testing.assert_close(s_graph.loss_sum, s_eager.loss_sum, rtol=1e-5, atol=1e-6)
        assert torch.equal(s_graph.preds, s_eager.preds)
    assert len(calls) == 2 * (N // B)  # full batches through the static buffers; the ragged ones eagerly
    for p_eager, p_graph in zip(eager[0].parameters(), graphed[0].parameters()):
        torch.testing.assert_close(p_graph, p_eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(graphed[1].criterion.soft_labels, eager[1].criterion.soft_labels,
                               rtol=1e-5, atol=1e-6)
    # 2 epochs of 5 forwards: stepped at each epoch's end, or at forwards 3, 6 and 9
    assert graphed[1].criterion.store.num_updates == eager[1].criterion.store.num_updates
    assert graphed[1].criterion.store.num_updates == (2 if update_every is None else 3)
    # the schedule reached the step through the same tensor the graph would read
    assert graphed[2].param_groups[0]["lr"].item() == pytest.approx(eager[2].param_groups[0]["lr"], rel=1e-6)


def _mixing_task(off_epoch: int = 0):
    # Mixup and CutMix, one draw per sample: every batch gets its own lam, boxes and choices
    mixer = Mixer(mixup_alpha=0.4, cutmix_alpha=1.0, mode="elem")
    return MixingTask(OnlineLabelSmoothing(K, mixed_update="all"), mixer, seed=3, off_epoch=off_epoch)


def test_mixup_and_cutmix_draw_every_batch_outside_the_graph_and_equal_the_eager_step():
    """The draws and the mixing are the task's ``prepare`` (outside the graph); the graph holds the forward
    and ``forward_mixed`` on static copies of ``(x_mixed, y_a, y_b, lam)``. Mixing turns off at epoch 2
    (``--mix-off-epoch``): the step changes form, and the graph step starts over on plain batches."""
    gen = torch.Generator().manual_seed(1)
    x, labels = torch.rand(N, 1, 12, 12, generator=gen), torch.randint(0, K, (N,), generator=gen)
    eager = _setup(graph=False, task=_mixing_task(off_epoch=2))
    graphed = _setup(graph=True, task=_mixing_task(off_epoch=2))
    step = GraphedStep(graphed[0], graphed[1], graphed[2], B, capture=False)
    lams = []
    prepare = graphed[1].prepare
    graphed[1].prepare = lambda *a: (lambda out: lams.append(out[-1].clone()) or out)(prepare(*a))
    forms = []
    for epoch in (1, 2):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(epoch))
        eager[1].set_epoch(epoch)
        graphed[1].set_epoch(epoch)
        s_eager = train_epoch(*eager, x, labels, order)
        s_graph = train_epoch(*graphed, x, labels, order, graph=step)
        forms.append(len(step.static))
        torch.testing.assert_close(s_graph.loss_sum, s_eager.loss_sum, rtol=1e-5, atol=1e-6)
        assert torch.equal(s_graph.preds, s_eager.preds)
    assert forms == [4, 3]  # (x_mixed, y_a, y_b, lam), then (x, y, idx) once mixing is off
    first = torch.stack(lams[:N // B])  # epoch 1's full batches: a fresh lam per sample and per batch
    assert (first < 1).any(dim=1).all() and not torch.equal(first[0], first[1])
    for p_eager, p_graph in zip(eager[0].parameters(), graphed[0].parameters()):
        torch.testing.assert_close(p_graph, p_eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(graphed[1].criterion.soft_labels, eager[1].criterion.soft_labels,
                               rtol=1e-5, atol=1e-6)


def test_class_pairs_go_through_the_graph_step_as_batches_of_two_rows_per_sample():
    """CS-KD's partners are in the epoch's order, so its step is capture-safe; its full batch is 2B rows."""
    from ols.tasks import ClassPairTask

    gen = torch.Generator().manual_seed(2)
    x, labels = torch.rand(N, 1, 12, 12, generator=gen), torch.randint(0, 3, (N,), generator=gen)
    eager = _setup(graph=False, task=ClassPairTask(create_loss("cskd", K)))
    graphed = _setup(graph=True, task=ClassPairTask(create_loss("cskd", K)))
    rows = graphed[1].rows_per_sample * B
    step = GraphedStep(graphed[0], graphed[1], graphed[2], rows, capture=False)
    calls = []
    step._eager = (lambda inner: lambda: calls.append(1) or inner())(step._eager)
    for epoch in range(2):
        order, batch = graphed[1].epoch_order(list(range(N)), labels.numpy(), B, seed=0, epoch=epoch)
        assert batch == rows
        order = torch.tensor(order)
        s_eager = train_epoch(*eager, x, labels, order, batch=batch)
        s_graph = train_epoch(*graphed, x, labels, order, graph=step, batch=batch)
        torch.testing.assert_close(s_graph.loss_sum, s_eager.loss_sum, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2 * (N // B)  # every full batch of 2B rows through the static buffers
    for p_eager, p_graph in zip(eager[0].parameters(), graphed[0].parameters()):
        torch.testing.assert_close(p_graph, p_eager, rtol=1e-5, atol=1e-6)


class _FakeGraph:
    """Stands in for ``torch.cuda.CUDAGraph`` on the CPU: counts its replays (it runs no kernels)."""

    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


# the fake replays run no kernels, so the periods after the first observe nothing
@pytest.mark.filterwarnings("ignore:SoftLabels.step\\(\\) closed a period")
def test_a_captured_step_keeps_the_forwards_host_counts_and_runs_them_after_every_replay(monkeypatch):
    """The capture runs the forward's Python once; OLS's count (and its ``update_every`` step) must not
    happen then, but once per replay, after it."""
    import contextlib

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
    task = ClassificationTask(OnlineLabelSmoothing(K, update_every=2))
    model, task, optimizer, _, _ = _setup(graph=True, task=task)
    step = GraphedStep(model, task, optimizer, 4, warmup=0)  # captures at the first call
    crit = task.criterion
    x, y, idx = torch.rand(4, 1, 12, 12), torch.zeros(4, dtype=torch.long), torch.arange(4)
    step(x, y, idx)  # capture (the body's Python ran here, its count was kept), then one replay
    assert step.graph.replays == 1 and len(step.counts) == 1
    assert crit._since_step == 1 and crit.store.num_updates == 0  # counted once: by the replay
    step(x, y, idx)
    assert step.graph.replays == 2 and crit.store.num_updates == 1 and crit._since_step == 0
    for _ in range(3):
        step(x, y, idx)
    assert step.graph.replays == 5 and crit.store.num_updates == 2 and crit._since_step == 1


def test_a_full_batch_must_keep_its_shape():
    model, task, optimizer, _, _ = _setup(graph=True)
    step = GraphedStep(model, task, optimizer, 4, capture=False)
    step(torch.rand(4, 1, 12, 12), torch.zeros(4, dtype=torch.long), torch.arange(4))
    assert step.fits(torch.arange(4)) and not step.fits(torch.arange(3))
    with pytest.raises(ValueError, match="must keep its shape"):
        step(torch.rand(4, 1, 10, 10), torch.zeros(4, dtype=torch.long), torch.arange(4))


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_the_schedule_fills_the_learning_rate_tensor_in_place_and_resume_puts_it_back():
    model, _, optimizer, scheduler, _ = _setup(graph=True)
    lr = optimizer.param_groups[0]["lr"]
    values = []
    for _ in range(5):
        values.append(lr.item())
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] is lr  # the captured address stays valid
    assert values[0] < values[-1]  # the warm-up rose through the same tensor
    fresh = build_optimizer(model, TrainConfig(lr=0.05), graph=True)
    fresh.load_state_dict(optimizer.state_dict())
    lr_on_device(fresh, torch.device("cpu"))
    assert isinstance(fresh.param_groups[0]["lr"], torch.Tensor)
    assert fresh.param_groups[0]["lr"].item() == pytest.approx(lr.item())


def _periodic_case(name):
    if name in ("deep_supervision", "byot", "byot+ols", "ds+ols"):
        return create_loss(name, K, num_exits=3), lambda c, z, y: c([z, z * 0.5, z * 2.0], y)
    if name == "ddgsd":
        return create_loss(name, K), lambda c, z, y: c(z, z * 0.5, y)
    if "num_samples" in loss_parameters(name):  # per-sample state (ols_single, pskd, the noisy-label methods)
        extra = {"epochs": 3} if name == "pskd" else {}
        crit = create_loss(name, K, num_samples=B, **extra)
        if needs_index(crit):
            return crit, lambda c, z, y: c(z, y, index=torch.arange(B))
        return crit, lambda c, z, y: c(z, y)
    if name == "cskd":  # the partners' logits: another forward, without gradient
        return create_loss(name, K), lambda c, z, y: c(z, z.detach().flip(0), y)
    return create_loss(name, K), lambda c, z, y: c(z, y)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_keeps_its_state_at_the_same_addresses_across_step(name):
    """A captured graph reads the loss's state where it was at capture: ``step()`` must write in place."""
    crit, call = _periodic_case(name)
    crit.train()
    z = torch.randn(B, K, requires_grad=True)
    y = torch.randint(0, K, (B,))
    def tensors():  # not mwnet's optimiser state (a dict)
        return {key: t.data_ptr() for key, t in crit.state_dict(keep_vars=True).items()
                if isinstance(t, torch.Tensor) and t.numel()}

    before = tensors()
    for _ in range(2):
        call(crit, z, y).backward()
        if is_periodic(crit):
            crit.step()
    after = tensors()
    moved = [key for key in before if after.get(key) != before[key]]
    assert not moved, f"{name}: step() replaced {moved}"


CUDA = torch.device("cuda")  # a device object only: nothing here touches CUDA


def _refusal(device=CUDA, **changes):
    kw = dict(tensor_data=True, dataset="cifar10", compile=False)
    return graph_refusal(device, **{**kw, **changes})


def test_what_a_graph_can_capture_is_accepted():
    assert _refusal() is None
    assert _refusal(tensor_data=False, dataset="folder") is not None  # without --decode gpu


@pytest.mark.parametrize("changes,words", [
    ({"device": torch.device("cpu")}, "needs a CUDA device, and this run is on cpu"),
    ({"tensor_data": False, "dataset": "folder"}, "--dataset folder decodes image files with Pillow"),
    ({"compile": True}, "--compile"),
])
def test_what_a_graph_cannot_capture_is_refused_in_one_line(changes, words):
    why = _refusal(**changes)
    assert why is not None and words in why and "\n" not in why


@pytest.mark.slow  # a subprocess, or every shipped spec parsed: several seconds
def test_ols_train_refuses_cuda_graph_on_the_cpu_with_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ols", "train", "--dataset", "digits", "--model", "cnn",
                           "--epochs", "1", "--device", "cpu", "--cuda-graph", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--cuda-graph needs a CUDA device" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow  # a subprocess, or every shipped spec parsed: several seconds
def test_ols_train_says_where_it_trains_before_the_first_epoch(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ols", "train", "--dataset", "digits", "--model", "cnn",
                           "--epochs", "1", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, check=True)
    first = proc.stdout.splitlines()[0]
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # --device auto is the default
    assert first.startswith(f"training on {expected}")
    assert "bf16 AMP" in first and "CUDA graph off" in first
    assert json.loads((out / "config.json").read_text())["device"] == "auto"

