"""Models and their registry: ``create_model(name, num_classes, **kw)``."""

from .registry import MODELS, create_model
from .wrapper import Classifier, load_pretrained

__all__ = ["MODELS", "Classifier", "create_model", "load_pretrained"]
