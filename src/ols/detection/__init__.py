"""Detection (the paper's Table X): OLS on a detector's class head, VOC data and the VOC mAP.

Pure torch and numpy: nothing here imports torchvision.
"""

from .soft_labels import DetectionOLS
from .voc_eval import average_precision, box_iou, evaluate_voc

__all__ = ["DetectionOLS", "average_precision", "box_iou", "evaluate_voc"]
