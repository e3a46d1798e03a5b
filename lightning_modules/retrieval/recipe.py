"""The base-model recipe on the embedded data: build, initialise from data, train with a quiet CPU Trainer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch

from lightning_modules.retrieval.datamodule import RetrievalDataModule
from lightning_modules.retrieval.model import RetrievalNet, build_retrieval_net
from lightning_modules.retrieval.module import RetrievalModule


@dataclass(frozen=True)
class BaseRecipe:
    """Small backbone at 64 px, ``epochs`` x ``tuples_per_epoch`` tuples: 1-2 min on 2 idle CPU cores."""

    arch: str = "small"
    widths: tuple[int, ...] = (16, 32, 64, 64)
    num_clusters: int = 16
    whitening_dim: int = 256
    image_size: int = 64
    batch_size: int = 16
    num_negatives: int = 3
    epochs: int = 20
    tuples_per_epoch: int = 500
    lr: float = 5e-3
    seed: int = 0
    module_options: dict[str, Any] = field(default_factory=dict)


def quiet_trainer(max_epochs: int, **kwargs: Any) -> pl.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or sanity validation (overridable)."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "max_epochs": max_epochs,
        **kwargs,
    }
    return pl.Trainer(**options)


def build_base(recipe: BaseRecipe, datamodule: RetrievalDataModule, init: bool = True) -> RetrievalNet:
    """The recipe's model; NetVLAD and whitening initialised from the training pool when ``init``."""
    pl.seed_everything(recipe.seed, verbose=False)
    kwargs: dict[str, Any] = {"widths": recipe.widths} if recipe.arch == "small" else {}
    model = build_retrieval_net(
        recipe.arch, num_clusters=recipe.num_clusters, whitening_dim=recipe.whitening_dim, **kwargs
    )
    if init:
        model.init_from_images(datamodule.init_dataloader(), seed=recipe.seed)
    return model


def embedded_datamodule(recipe: BaseRecipe, **kwargs: Any) -> RetrievalDataModule:
    """Train on ``synth_paris``, test on ``synth_oxford`` (generated under ``data_root()`` on first use)."""
    return RetrievalDataModule.embedded(
        image_size=recipe.image_size,
        batch_size=recipe.batch_size,
        num_negatives=recipe.num_negatives,
        seed=recipe.seed,
        **kwargs,
    )


def train(
    model: torch.nn.Module,
    datamodule: RetrievalDataModule,
    recipe: BaseRecipe,
    epochs: int | None = None,
    validate_every: int | None = None,
    teacher: torch.nn.Module | None = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place with :class:`RetrievalModule` (distilling ``teacher``'s descriptors when
    given); returns ``{"seconds", "val"}``."""
    epochs = recipe.epochs if epochs is None else epochs
    module = RetrievalModule(
        model,
        lr=recipe.lr,
        seed=recipe.seed,
        max_tuples=recipe.tuples_per_epoch,
        teacher=teacher,
        **recipe.module_options,
    )
    trainer = quiet_trainer(epochs, check_val_every_n_epoch=validate_every or epochs, **trainer_kwargs)
    pl.seed_everything(recipe.seed, verbose=False)  # shuffling does not depend on what ran before
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    val = {k[len("val/") :]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    return {"seconds": seconds, "val": val}
