"""Shared test helpers: a training step run as on a GPU, where reading a value back would stall it;
one trained run that the evaluation tests share; the shared fakes (a seeded batch of logits and
labels, a Ctrl-C after a given number of batches); the vision-import guard; the small training run
and epoch that the ``--cuda-graph`` tests (one process and DDP) share."""

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


class HostCopy(RuntimeError):
    """A device tensor was copied to the host: on a GPU, a sync."""


class _NoHostCopies(TorchDispatchMode):
    """Raise at any copy from a non-CPU tensor to the CPU (``.cpu()``, ``.to("cpu")``, ``.tolist()`` ...)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (aten._to_copy.default, aten.copy_.default):
            source = args[1] if func is aten.copy_.default else args[0]
            target = out if func is aten._to_copy.default else args[0]
            to_host = source.device.type != "cpu" and target.device.type == "cpu"
            if isinstance(source, torch.Tensor) and to_host:
                raise HostCopy(f"{func} copies a {source.device.type} tensor to the host")
        return out


@contextlib.contextmanager
def _device_path():
    """Tensors on ``meta`` under ``FakeTensorMode``: the code takes its non-CPU path, computes no values,
    and raises at any data-dependent read (``.item()``, ``int(t)``, ``bool(t)``, ``nonzero``, boolean
    masks) or copy to the host. What passes here never syncs a GPU."""
    with FakeTensorMode(allow_non_fake_inputs=True), _NoHostCopies():
        yield torch.device("meta")


@pytest.fixture
def device_path():
    """``with device_path() as device:`` runs its body as on a GPU that must never wait (see _device_path)."""
    return _device_path


def vision_or_skip(*names):
    """Import torchvision/timm (``names``) or skip the test; in CI's vision environment
    (``OLS_REQUIRE_VISION=1``, see the Makefile) a failed import fails the test instead."""
    import importlib
    import os

    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except Exception as err:  # not installed, or built for another torch
            if os.environ.get("OLS_REQUIRE_VISION"):
                pytest.fail(f"{name} must import in the vision environment: {type(err).__name__}: {err}")
            pytest.skip(f"{name} does not import here: {type(err).__name__}")
    return modules


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One finished ``ols train`` run on digits (OLS, 4 epochs, a snapshot each epoch, 10 % held out),
    trained once per session. Tests that evaluate it share it; a test that changes files copies it."""
    from ols.cli import main

    out = tmp_path_factory.mktemp("shared") / "run"
    assert main(["train", "--dataset", "digits", "--loss", "ols", "--epochs", "4", "--save-every", "1",
                 "--no-progress", "--val-fraction", "0.1", "--out", str(out)]) == 0
    return out


def _logits_and_labels(n=12, k=4, seed=0, scale=3.0, requires_grad=False):
    """``(logits (n, k), labels (n,))`` from a generator seeded with ``seed``: the same batch every call."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * scale
    return z.requires_grad_(requires_grad), torch.randint(0, k, (n,), generator=g)


@pytest.fixture
def tiny_batch():
    """``tiny_batch(n=12, k=4, seed=0, scale=3.0, requires_grad=False) -> (logits, labels)``, seeded."""
    return _logits_and_labels


class StopAfter:
    """A stand-in for :class:`ols.interrupt.StopRequest` that asks to stop at its ``n``-th check:
    a Ctrl-C after ``n`` batches, without a signal. Patch the instance in for the class (calling
    it returns itself, so ``StopRequest(enabled=...)`` works) and give ``n`` when patching."""

    def __init__(self, n):
        self.n, self.checks = n, 0

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def requested(self):
        self.checks += 1
        return self.checks >= self.n


@pytest.fixture
def stop_after():
    """``monkeypatch.setattr(module, "StopRequest", stop_after(n))``: the run stops at the n-th check."""
    return StopAfter


def small_cnn_training(graph: bool, task, steps: int, classes: int = 10, seed: int = 0):
    """What the ``--cuda-graph`` tests train: the ``cnn`` on 1-channel images (weights seeded with ``seed``),
    SGD with Nesterov momentum (``graph``: fused, its learning rate a tensor the schedule fills in place),
    half an epoch of warm-up then cosine over 2 epochs of ``steps`` batches.

    Returns ``(model, task, optimizer, scheduler, steps)``, the first arguments of :func:`train_epoch`.
    """
    from ols.config import TrainConfig
    from ols.models import create_model
    from ols.optim import build_optimizer, build_scheduler

    torch.manual_seed(seed)
    model = create_model("cnn", classes, in_channels=1)
    cfg = TrainConfig(lr=0.05, momentum=0.9, nesterov=True, epochs=2, warmup_epochs=0.5)
    optimizer = build_optimizer(model, cfg, graph=graph)
    return model, task, optimizer, build_scheduler(optimizer, cfg, steps), steps


def train_epoch(model, task, optimizer, scheduler, steps, x, labels, order, graph=None, batch=16):
    """One epoch of the engine's ``train_one_epoch`` on the CPU over ``x[order]`` in batches of ``batch``
    (the last one ragged when ``batch`` does not divide it), through ``graph`` (a ``GraphedStep``) if
    given, then the loss's end of epoch. ``model`` is what the step calls (a DDP wrapper, say).

    Returns the epoch's ``EpochState`` (loss sums and predictions for all ``len(labels)`` samples).
    """
    from ols.engine import EpochState, train_one_epoch
    from ols.losses.protocol import end_of_epoch

    batches = [(x[order[i:i + batch]], order[i:i + batch]) for i in range(0, len(order), batch)]
    state = EpochState.new(len(labels), torch.device("cpu"))
    assert train_one_epoch(model, task, optimizer, batches, labels, state, steps, scheduler, graph=graph)
    end_of_epoch(task.criterion)
    return state


def paper_prototypes(features, p=8, quantile=0.4, eta_max=0.95):
    """Han et al.'s prototype choice (Sec. 3.3) read literally, with loops: positions among ``features``."""
    import math

    m = features.shape[0]
    f = [features[i] / features[i].norm() for i in range(m)]
    s = [[float(f[i] @ f[j]) for j in range(m)] for i in range(m)]
    ranked = sorted((v for row in s for v in row), reverse=True)
    s_c = ranked[math.ceil(quantile * m * m) - 1]
    sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
    rho = [sum(sign(s[i][j] - s_c) for j in range(m)) for i in range(m)]
    eta = []
    for i in range(m):
        denser = [s[i][j] for j in range(m) if rho[j] > rho[i]]
        eta.append(max(denser) if rho[i] < max(rho) else min(s[i]))
    order = sorted(range(m), key=lambda i: (-rho[i], i))
    chosen = [i for i in order if eta[i] < eta_max][:p]
    return chosen or order[:1]  # none qualifies: the densest alone (ols's choice, stated in its docstring)
