"""A tiny image-classification task (oriented gratings) for demos and fast tests."""

from lightning_modules.toy.data import gratings
from lightning_modules.toy.model import ToyConvNet

__all__ = ["ToyConvNet", "gratings"]
