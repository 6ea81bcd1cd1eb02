"""Evaluation: metrics, calibration, attacks, human agreement, ensembles, class relations."""

from .attacks import fgsm, pgd
from .calibration import calibration_bins, expected_calibration_error
from .ensemble import average_probs, pick_uniform
from .human import human_kl
from .metrics import classification_metrics, probability_metrics, topk_error
from .relations import within_group_share

__all__ = ["average_probs", "calibration_bins", "classification_metrics", "expected_calibration_error",
           "fgsm", "human_kl", "pgd", "pick_uniform", "probability_metrics", "topk_error",
           "within_group_share"]
