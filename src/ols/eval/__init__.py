"""Evaluation metrics."""

from .calibration import expected_calibration_error
from .metrics import classification_metrics, topk_error

__all__ = ["classification_metrics", "expected_calibration_error", "topk_error"]
