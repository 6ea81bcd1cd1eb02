"""``sums[rows[i]] += values[i]``, the accumulation of Eq. (5), in eager mode and under torch.compile.

Eager mode calls ``Tensor.index_add_``. Under ``torch.compile``, with at least
:data:`OPAQUE_FROM_COLUMNS` columns, the same call goes through a custom operator
(``ols::add_rows``), so inductor runs ATen's ``index_add_`` as one opaque kernel instead
of generating its own scatter loop of atomic adds; that loop made the compiled accumulation
about 3× slower than eager on a CPU at K >= 1,000, and compiled OLS about 15 % slower at
K = 100 (``benchmarks/RESULTS.md``). Both paths run the
same ATen kernel on the same inputs. The operator mutates ``sums`` in place and returns
nothing, so the compiled graph has no break. Before torch 2.4 (no
``torch.library.register_fake``) the compiled path is the plain ``index_add_`` too.
"""

# no ``from __future__ import annotations``: the operator's schema is written out below
import torch
from torch import Tensor

from .functional import compiling

#: below this many columns inductor's own loop (atomic adds) beats the opaque call; from it on, the
#: call wins (compiled OLS at B = 128, 2-core CPU: loop better at K = 10-32, call at K = 64 and 100)
OPAQUE_FROM_COLUMNS = 64


def _index_add(sums: Tensor, rows: Tensor, values: Tensor) -> None:
    sums.index_add_(0, rows, values)


if hasattr(torch.library, "register_fake"):  # torch >= 2.4
    _LIBRARY = torch.library.Library("ols", "FRAGMENT")  # the registration lives as long as this object
    _LIBRARY.define("add_rows(Tensor(a!) sums, Tensor rows, Tensor values) -> ()")
    _LIBRARY.impl("add_rows", _index_add, "CompositeExplicitAutograd")
    torch.library.register_fake("ols::add_rows", lambda sums, rows, values: None, lib=_LIBRARY)
    _OPAQUE = torch.ops.ols.add_rows.default
else:
    _OPAQUE = _index_add


def add_rows(sums: Tensor, rows: Tensor, values: Tensor) -> None:
    """Add row ``i`` of ``values`` ``(B, K)`` to row ``rows[i]`` of ``sums`` ``(R, K)``, in place.

    ``rows`` ``(B,)`` int64 in ``[0, R)``; repeated rows all add up. ``sums`` and ``values``
    share dtype and device.
    """
    if compiling() and values.shape[-1] >= OPAQUE_FROM_COLUMNS:
        _OPAQUE(sums, rows, values)
    else:
        _index_add(sums, rows, values)
