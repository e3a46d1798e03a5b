"""LightningModule and DataModule of the toy gratings task (demos, callback tests, CLI smoke tests)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.toy.data import gratings
from lightning_modules.toy.model import ToyConvNet


class ToyModule(pl.LightningModule):
    """Classifies gratings; ``self.model`` is the network a compression callback wraps."""

    def __init__(self, lr: float = 1e-3, width: int = 16, classes: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = ToyConvNet(classes=classes, width=width)
        # real gratings, not zeros: activation quantizers take their initial ranges from the example input
        self.example_input_array = gratings(8, classes=classes, seed=0)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


class ToyDataModule(pl.LightningDataModule):
    def __init__(
        self, train_size: int = 1024, val_size: int = 512, batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        self.train_size, self.val_size, self.batch_size, self.seed = train_size, val_size, batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        self.train = TensorDataset(*gratings(self.train_size, seed=self.seed))
        self.val = TensorDataset(*gratings(self.val_size, seed=self.seed + 1))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=256)
