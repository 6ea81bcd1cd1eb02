"""What the fused loss reads from OLS's soft labels, recomputed only when they change."""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

#: a scaled copy of the soft labels is kept up to this many entries (64 MB in float32)
SCALED_COPY_MAX_ENTRIES = 1 << 24


class SoftLabelCache:
    """Derived forms of a ``(K, K)`` soft-label matrix ``S``, each kept until ``S`` changes.

    * :meth:`target_mass`: ``(K, 1)`` ``alpha + (1 - alpha) * sum(S[c])``, the total mass
      of each class's mixed target in Eq. (4);
    * :meth:`scaled`: ``factor * S``, the form :func:`~ols.losses.fused.mixed_target_cross_entropy`
      reads with ``table_scale=factor``, which saves it a pass over the batch. It is kept
      for ``K <= 4096`` only, and rebuilt for a new factor (a new batch size) only when
      that factor comes twice in a row, so a short last batch does not cost a rebuild.

    ``S`` counts as changed when it is another tensor, or its version counter moved (any
    in-place write through the tensor itself: ``copy_``, ``load_state_dict``, ...).
    Writes through ``.data`` bypass the counter and are not seen.
    """

    def __init__(self) -> None:
        self._source: tuple = ()
        self._mass: Optional[Tensor] = None
        self._mass_alpha: Optional[float] = None
        self._scaled: Optional[Tensor] = None
        self._scaled_factor: Optional[float] = None
        self._last_factor: Optional[float] = None

    def _refresh(self, soft_labels: Tensor) -> None:
        source = (id(soft_labels), soft_labels.data_ptr(), soft_labels._version, soft_labels.device)
        if source != self._source:
            self._source = source
            self._mass = self._scaled = self._mass_alpha = self._scaled_factor = None

    def target_mass(self, soft_labels: Tensor, alpha: float) -> Tensor:
        """``(K, 1)``: ``alpha + (1 - alpha) * soft_labels.sum(1)``."""
        self._refresh(soft_labels)
        if self._mass is None or self._mass_alpha != alpha:
            self._mass = soft_labels.sum(1, keepdim=True).mul_(1.0 - alpha).add_(alpha)
            self._mass_alpha = alpha
        return self._mass

    def scaled(self, soft_labels: Tensor, factor: float) -> Tuple[Tensor, float]:
        """``(factor * soft_labels, factor)`` when a copy is kept, else ``(soft_labels, 1.0)``."""
        if factor == 0.0 or soft_labels.numel() > SCALED_COPY_MAX_ENTRIES:
            return soft_labels, 1.0
        self._refresh(soft_labels)
        repeated = factor == self._last_factor
        self._last_factor = factor
        if self._scaled is None or (factor != self._scaled_factor and repeated):
            self._scaled = soft_labels * factor
            self._scaled_factor = factor
        if factor != self._scaled_factor:
            return soft_labels, 1.0
        return self._scaled, factor
