"""A small deterministic training setup for callback tests: epoch-seeded shuffling, so runs are resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_modules.toy.data import gratings


class SeededToyData(pl.LightningDataModule):
    """Gratings with a shuffle that depends only on (seed, epoch): Lightning calls ``set_epoch``."""

    def __init__(self, size: int = 256, batch_size: int = 32) -> None:
        super().__init__()
        self.size, self.batch_size = size, batch_size

    def setup(self, stage: str | None = None) -> None:
        self.train = TensorDataset(*gratings(self.size, seed=0))

    def train_dataloader(self) -> DataLoader:
        sampler = DistributedSampler(self.train, num_replicas=1, rank=0, shuffle=True, seed=0)
        return DataLoader(self.train, batch_size=self.batch_size, sampler=sampler)


def trainer(tmp: Path, epochs: int, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        default_root_dir=str(tmp),
        logger=pl.loggers.CSVLogger(str(tmp), name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        deterministic=True,
        **kwargs,
    )


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
