"""``RetrievalDataModule``: train tuples from one revisited-format dataset, evaluation on another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from lightning_modules.data.places_synth import DATASETS, SynthConfig, ensure_places_synth
from lightning_modules.data.revisited import (
    PoolImages,
    RevisitedData,
    RevisitedEvalSet,
    TrainingTuples,
    check_positive_int,
    load_revisited,
)
from lightning_modules.metrics.retrieval import RevisitedMAP
from nncf_ext.errors import DataError


class RetrievalDataModule(pl.LightningDataModule):
    """Train on ``train`` (a dataset directory or loaded data), validate on ``test`` (Paris <-> Oxford).

    ``train_tuples`` (:class:`TrainingTuples`) and ``val_data`` are what :class:`RetrievalModule` reads.
    Batches: train ``(images (B, 2 + n, 3, S, S), pool indices)``; val ``(images, index, is_query)``.
    ``augment`` mirrors whole training tuples and jitters colours (off in the base recipe).
    """

    def __init__(
        self,
        train: str | Path | RevisitedData,
        test: str | Path | RevisitedData,
        *,
        image_size: int = 64,
        batch_size: int = 16,
        eval_batch_size: int = 128,
        num_negatives: int = 5,
        num_workers: int = 0,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("image_size", image_size, 1),
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("num_negatives", num_negatives, 1),
            ("num_workers", num_workers, 0),
        ):  # before the data sets are read
            check_positive_int(value, f"RetrievalDataModule: {name}", minimum)
        self.train_data = train if isinstance(train, RevisitedData) else load_revisited(train)
        self.val_data = test if isinstance(test, RevisitedData) else load_revisited(test)
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.train_tuples = TrainingTuples(
            self.train_data, image_size, num_negatives, seed=seed, augment=augment
        )

    @classmethod
    def embedded(
        cls,
        train: str = "synth_paris",
        test: str = "synth_oxford",
        root: str | Path | None = None,
        config: SynthConfig = SynthConfig(),  # noqa: B008 - frozen dataclass
        **kwargs: Any,
    ) -> RetrievalDataModule:
        """The embedded synthetic datasets (generated under ``data_root()`` on first use)."""
        for name in (train, test):  # before minutes of generating
            if name not in DATASETS:
                raise DataError(f"no embedded data set {name!r}; there are {sorted(DATASETS)}")
        paths = ensure_places_synth(root, config)
        return cls(paths[train], paths[test], **kwargs)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_tuples,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.val_data)

    def eval_dataloader(self, data: RevisitedData) -> DataLoader:
        """Queries then database of ``data``: ``(images, index, is_query)`` batches."""
        return DataLoader(
            RevisitedEvalSet(data, self.image_size),
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
        )

    def init_dataloader(self) -> DataLoader:
        """The training pool (database + query crops) for ``RetrievalNet.init_from_images``."""
        return DataLoader(PoolImages(self.train_data, self.image_size), batch_size=self.eval_batch_size)

    def val_metric(self) -> RevisitedMAP:
        return RevisitedMAP(self.val_data.gnd, self.val_data.num_database)
