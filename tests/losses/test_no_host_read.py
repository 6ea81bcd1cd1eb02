"""No loss reads a tensor value back to the host in a training step (forward, backward, optimiser step).

Each case runs two SGD steps of a linear model on ``meta`` tensors under ``FakeTensorMode``
(``device_path`` in conftest.py), which raises at any data-dependent read or copy to the host:
on a GPU each would be a sync, and would forbid CUDA graphs. The losses' value checks take their
device path there (no read; reported at ``step()``), the one that runs on every GPU.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

from ols import OnlineLabelSmoothing, create_loss
from ols.losses import LOSSES, SoftLabels, TopKSoftLabels, loss_parameters

K, B = 50, 32


def _steps(device_path, crit, call, features=16):
    lin = torch.nn.Linear(features, K).to("meta")
    crit.to("meta").train()
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    with device_path() as device:
        for _ in range(2):
            x, y = torch.randn(B, features, device=device), torch.randint(0, K, (B,), device=device)
            y[:3] = -100  # ignored rows, wherever the loss takes ignore_index
            loss = call(crit, lin(x), y, device)
            opt.zero_grad()
            loss.backward()
            opt.step()


def plain(crit, z, y, device):
    return crit(z, y)


def mixed(crit, z, y, device):
    return crit.forward_mixed(z, y, y.flip(0), torch.rand(B, device=device))


OLS_FORMS = {
    "dense": (lambda: OnlineLabelSmoothing(K), plain),
    "top-k": (lambda: OnlineLabelSmoothing(K, store=TopKSoftLabels(K, 8)), plain),
    "store passed in": (lambda: OnlineLabelSmoothing(K, store=SoftLabels(K, init="zeros")), plain),
    "weight and label_smoothing": (lambda: OnlineLabelSmoothing(K, weight=torch.rand(K), label_smoothing=0.1),
                                   plain),
    "reduction none": (lambda: OnlineLabelSmoothing(K, reduction="none"), lambda c, z, y, d: c(z, y).sum()),
    "probability target": (lambda: OnlineLabelSmoothing(K, mixed_update="dominant"),
                           lambda c, z, y, d: c(z, torch.softmax(torch.randn(B, K, device=d), 1))),
    "forward_mixed, float lam": (lambda: OnlineLabelSmoothing(K),
                                 lambda c, z, y, d: c.forward_mixed(z, y, y.flip(0), 0.7)),
    "forward_mixed, tensor lam": (lambda: OnlineLabelSmoothing(K, mixed_update="all"), mixed),
    "top-k forward_mixed": (lambda: OnlineLabelSmoothing(K, topk=8), mixed),
    "(B, K, d) logits": (lambda: OnlineLabelSmoothing(K),
                         lambda c, z, y, d: c(z.view(B // 4, 4, K).transpose(1, 2), y.view(B // 4, 4))),
    "shallow exit (observe=False, alpha=)": (lambda: OnlineLabelSmoothing(K),
                                             lambda c, z, y, d: c(z, y, observe=False, alpha=0.7)),
}


@pytest.mark.parametrize("form", list(OLS_FORMS))
def test_ols_never_reads_the_device_in_a_training_step(device_path, form):
    make, call = OLS_FORMS[form]
    _steps(device_path, make(), call)


def _registry_case(name):
    """How to build and call each registry loss in a training step."""
    exits = {"num_exits": 3}
    if name in ("deep_supervision", "byot", "byot+ols", "ds+ols"):
        return create_loss(name, K, **exits), lambda c, z, y, d: c([z, z * 0.5, z * 2.0], y.clamp(min=0))
    if name == "ddgsd":
        return create_loss(name, K), lambda c, z, y, d: c(z, z * 0.5, y.clamp(min=0))
    if "num_samples" in loss_parameters(name):  # per-sample state, read by index where the loss asks for it
        crit = create_loss(name, K, num_samples=100, **({"epochs": 10} if name == "pskd" else {}))
        if not getattr(crit, "needs_index", False):
            return crit, plain
        return crit, lambda c, z, y, d: c(z, y, index=torch.arange(B, device=d))
    if name == "cskd":  # the partners' logits: another forward, without gradient
        return create_loss(name, K), lambda c, z, y, d: c(z, z.detach().flip(0), y)
    return create_loss(name, K), plain


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registry_loss_never_reads_the_device_in_a_training_step(device_path, name):
    crit, call = _registry_case(name)
    _steps(device_path, crit, call)


@pytest.mark.parametrize("name", ["ce", "ls", "ols"])
def test_every_linear_loss_takes_mixed_targets_without_a_read(device_path, name):
    _steps(device_path, create_loss(name, K), mixed)


def test_the_guard_itself_catches_a_read_a_mask_and_a_host_copy(device_path):
    from conftest import HostCopy

    with device_path() as device:
        z = torch.randn(4, 3, device=device)
        for read, error in ((lambda: float(z.sum()), DataDependentOutputException),
                            (lambda: z[z > 0], DynamicOutputShapeException),
                            (lambda: z.nonzero(), DynamicOutputShapeException),
                            (lambda: z.cpu(), HostCopy)):
            with pytest.raises(error):
                read()
