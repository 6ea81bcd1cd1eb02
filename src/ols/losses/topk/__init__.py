"""Top-k OLS for 10^4 to 10^6 classes: a sparse soft-label store, its table merge and its sparse loss.

``OnlineLabelSmoothing(K, store=TopKSoftLabels(K, 32))``, or ``topk=32`` for short.
"""

from .sparse import SparseRows
from .store import TopKSoftLabels

__all__ = ["SparseRows", "TopKSoftLabels"]
