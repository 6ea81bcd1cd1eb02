"""``index_add_`` that ``torch.compile`` runs as one opaque kernel: the accumulation of OLS's Eq. (5)."""

# no ``from __future__ import annotations``: the operator's schema below is read from the signature
import torch
from torch import Tensor

from .tracing import compiling


def _index_add(sums: Tensor, rows: Tensor, values: Tensor) -> None:
    sums.index_add_(0, rows, values)


_LIBRARY = torch.library.Library("ols", "FRAGMENT")  # the registration lives as long as this object
_LIBRARY.define("add_rows(Tensor(a!) sums, Tensor rows, Tensor values) -> ()")
_LIBRARY.impl("add_rows", _index_add, "CompositeExplicitAutograd")
torch.library.register_fake("ols::add_rows", lambda sums, rows, values: None, lib=_LIBRARY)
_OPAQUE = torch.ops.ols.add_rows.default


def add_rows(sums: Tensor, rows: Tensor, values: Tensor) -> None:
    """``sums[rows[i]] += values[i]`` for ``values`` ``(B, K)``: ``index_add_``, the same kernel everywhere.

    Under ``torch.compile`` it is called as one opaque operator (``ols::add_rows``) at every
    width: inductor's own scatter of atomic adds made compiled OLS 1.4-2.4x compiled CE on a
    CPU at K = 1,000-10,000 against 1.2-1.8x opaque, and gains under 0.2x below K = 100
    (``benchmarks/RESULTS.md``). It mutates ``sums`` and returns nothing: no graph break.
    """
    (_OPAQUE if compiling() else _index_add)(sums, rows, values)
