"""Shared test helpers: a training step run as on a GPU, where reading a value back would stall it;
one trained run that the evaluation tests share; the vision-import guard."""

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
