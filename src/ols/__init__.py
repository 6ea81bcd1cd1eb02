"""Online Label Smoothing (Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021).

Two lines in any training loop::

    crit = OnlineLabelSmoothing(num_classes=K, alpha=0.5)
    ...
    crit.step()  # once per epoch
"""

from .losses import LOSSES, OnlineLabelSmoothing, OnlineLabelSmoothingSingle, create_loss

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "OnlineLabelSmoothing",
    "OnlineLabelSmoothingSingle",
    "__version__",
    "create_loss",
]
