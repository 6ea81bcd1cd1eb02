"""Adversarial examples: FGSM (Goodfellow et al., 2015) and PGD (Madry et al., 2018), L-infinity.

Both work in pixel space: ``x`` ``(B, C, H, W)`` in ``[0, 1]`` and ``eps`` in pixel units
(``8/255``), before the model's own normalisation. The model should be in eval mode;
the result stays within ``eps`` of ``x`` and inside ``[0, 1]``. Paper Tables VIII-IX.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: adversarial error of ``ols eval`` (``fgsm_err``, ``pgd_top5_err``, ...): lower is more robust
HIGHER_IS_BETTER = {f"{a}_{e}": False for a in ("fgsm", "pgd") for e in ("err", "top5_err")}
HEADERS = {f"{a}_{e}": f"{a.upper()} {w} (%)" for a in ("fgsm", "pgd")
           for e, w in (("err", "error"), ("top5_err", "top-5 error"))}


def _input_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """One signed-gradient step of size ``eps`` up the cross-entropy of the true labels ``y``."""
    return (x + eps * _input_grad(model, x, y).sign()).clamp(0.0, 1.0).detach()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 20,
        step_size: Optional[float] = None, random_start: bool = True,
        generator: Optional[torch.Generator] = None) -> Tensor:
    """PGD: ``steps`` signed-gradient steps of ``step_size`` (default ``2.5 * eps / steps``).

    Each step is projected back onto the ``eps`` ball around ``x`` and onto ``[0, 1]``;
    the start is uniform in the ball when ``random_start``.
    """
    step_size = 2.5 * eps / steps if step_size is None else step_size
    adv = x.detach().clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        adv = (adv + (2 * noise - 1) * eps).clamp(0.0, 1.0)
    for _ in range(steps):
        adv = adv + step_size * _input_grad(model, adv, y).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0).detach()
    return adv


def parse_fraction(text: str) -> float:
    """``"8/255"`` -> 0.0313..., ``"0.03"`` -> 0.03; anything else is a ``ValueError``."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a number or a fraction such as 8/255, got {text!r}") from None
