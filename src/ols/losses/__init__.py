"""Label-regularisation losses: OLS, OLS-Single and the baselines the paper compares."""

from .base import raise_bad_inputs
from .bootstrap import BootstrapHard, BootstrapSoft
from .disturblabel import DisturbLabel
from .ols import OnlineLabelSmoothing
from .ols_single import OnlineLabelSmoothingSingle
from .pairwise_confusion import PairwiseConfusion
from .registry import LOSSES, create_loss, loss_parameters
from .robust import GeneralizedCrossEntropy, SymmetricCrossEntropy
from .soft_labels import SoftLabels
from .standard import CrossEntropy, LabelSmoothing
from .tfkd import TeacherFreeKD
from .topk import TopKSoftLabels

__all__ = [
    "LOSSES",
    "BootstrapHard",
    "BootstrapSoft",
    "CrossEntropy",
    "DisturbLabel",
    "GeneralizedCrossEntropy",
    "LabelSmoothing",
    "OnlineLabelSmoothing",
    "OnlineLabelSmoothingSingle",
    "PairwiseConfusion",
    "SoftLabels",
    "SymmetricCrossEntropy",
    "TeacherFreeKD",
    "TopKSoftLabels",
    "create_loss",
    "loss_parameters",
    "raise_bad_inputs",
]
