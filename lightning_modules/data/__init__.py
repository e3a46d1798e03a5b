"""Dataset loaders (real formats) and the embedded generators that write those formats."""

from lightning_modules.data.cache import data_root

__all__ = ["data_root"]
