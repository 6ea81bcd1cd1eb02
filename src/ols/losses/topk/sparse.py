r"""Eq. (4) against a sparse soft label, never building a ``(B, K)`` target.

Row ``i``'s soft label is ``value[i, s]`` at class ``index[i, s]`` (``-1``: an empty slot) and
``u_i = rest[i] / (K - size_i)`` at each of the other classes. With ``logp = log_softmax(z)``:

.. math::

    \langle S_i, \log p_i\rangle = \sum_s (v_{is} - u_i) \log p_{i, j_s} + u_i \sum_j \log p_{ij}

so a row costs one sum of its log-probabilities and ``k`` gathers. Eq. (4) is linear in
``logp``, so its gradient is the (negated) mixed target itself: :class:`_SparseEq4` writes it in
one ``(B, K)`` fill and two scatters, where autograd would build and add three ``(B, K)``
tensors (1.3-1.8x slower at K = 21,841 and 100,000 in the design review). The plain formula
it is tested against is :func:`sparse_eq4_reference` in the tests' terms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class SparseRows(NamedTuple):
    """A batch's soft labels in top-k form: ``index``/``value`` ``(B, k)`` and ``rest`` ``(B,)``."""

    index: Tensor
    value: Tensor
    rest: Tensor

    def nll(self, logp: Tensor, target: Tensor, alpha: float, smoothing: float = 0.0) -> Tensor:
        """Eq. (4) per row ``(B,)``, as :func:`~ols.losses.functional.soft_target_nll` for dense rows."""
        k_all = logp.shape[1]
        present = self.index >= 0
        u = self.rest.to(logp.dtype) / (k_all - present.sum(1)).clamp(min=1).to(logp.dtype)  # (B,)
        coef = (1.0 - alpha) * torch.where(present, self.value.to(logp.dtype) - u.unsqueeze(1), 0.0)  # (B, k)
        flat = (1.0 - alpha) * u + alpha * smoothing / k_all  # (B,): the weight of every log p_j
        return _SparseEq4.apply(logp, target, self.index.clamp(min=0), coef, flat, alpha * (1.0 - smoothing))


class _SparseEq4(torch.autograd.Function):
    """``-(hard * log p_y + sum_s coef_s log p_{j_s} + flat * sum_j log p_j)`` per row, and its gradient."""

    @staticmethod
    def forward(ctx, logp: Tensor, y: Tensor, cols: Tensor, coef: Tensor, flat: Tensor,
                hard: float) -> Tensor:
        ctx.save_for_backward(y, cols, coef, flat)
        ctx.hard, ctx.width = hard, logp.shape[1]
        return -(hard * logp.gather(1, y.unsqueeze(1)).squeeze(1) + (coef * logp.gather(1, cols)).sum(1)
                 + flat * logp.sum(1))

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, cols, coef, flat = ctx.saved_tensors
        g = -grad.unsqueeze(1)  # (B, 1)
        out = (g * flat.unsqueeze(1)).expand(-1, ctx.width).contiguous()  # (B, K)
        out.scatter_add_(1, cols, g * coef)
        out.scatter_add_(1, y.unsqueeze(1), g * ctx.hard)
        return out, None, None, None, None, None
