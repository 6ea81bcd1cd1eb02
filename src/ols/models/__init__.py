"""Models and their registry: ``create_model(name, num_classes, **kw)``."""

from .registry import MODELS, create_model

__all__ = ["MODELS", "create_model"]
