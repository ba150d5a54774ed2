"""Small reference models: :class:`MLP` and :class:`SmallCNN`."""

from sparsenets.models.cnn import SmallCNN
from sparsenets.models.mlp import MLP
from sparsenets.models.registry import MODELS, build_model

__all__ = ["MLP", "MODELS", "SmallCNN", "build_model"]
