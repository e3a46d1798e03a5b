"""Train a base PoseNet on a BOP data set (default: the embedded one) and evaluate ADD(-S) per depth bin."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader

from lightning_modules.data.bop import BopEvalDataset, BopImageEvalDataset, BopTrainDataset
from lightning_modules.data.pose_augment import PoseAugment
from lightning_modules.metrics.pose import DEPTH_BINS, THRESHOLDS, PoseAccuracy
from lightning_modules.pose.module import PoseModule
from nncf_ext.errors import ConfigError


@dataclass
class TrainConfig:
    """What ``train_base`` runs; ``module`` holds extra ``PoseModule`` arguments."""

    epochs: int = 20
    batch_size: int = 32
    train_limit: int | None = None  # use only the first N training images
    test_limit: int | None = None
    image_size: tuple[int, int] | None = None  # resize (H, W), multiples of 32; None: as stored
    obj_ids: Sequence[int] | None = None
    train_split: str = "train"
    test_split: str = "test"
    seed: int = 0
    cache: bool = True  # keep decoded training images in memory (~70 kB each at 128 x 128)
    workers: int = 1  # data-loading processes (decoding and augmentation overlap the training step)
    augment: bool = True  # random similarity warp + colour jitter of training images
    max_instances: int = 8  # annotated objects used per training image (more are left unlabelled)
    keypoints: str = "bbox"  # "bbox": box corners + centre (WDR); "surface": farthest-point samples + centre
    # evaluate per image, every instance decoded and matched (BopImageEvalDataset), for data sets with several
    # instances of an object in one image; test_limit then counts images
    several_instances: bool = False
    # Trainer precision; None: "bf16-mixed" where the CPU computes bf16 natively (AVX512-BF16 / AMX), which
    # trains about 1.4x faster, else "32-true". Evaluation always runs in fp32.
    precision: str | None = None
    module: dict[str, Any] = field(default_factory=dict)


def default_precision() -> str:
    return "bf16-mixed" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "32-true"


class EpochLog(pl.Callback):
    """Prints the training loss and elapsed time after every epoch (the runs have no progress bar)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train/loss", float("nan"))
        elapsed = time.perf_counter() - self.start
        epoch = f"{trainer.current_epoch + 1}/{trainer.max_epochs}"
        print(f"epoch {epoch}: loss {float(loss):.4f} ({elapsed:.0f} s)", flush=True)


def data_loaders(root: str | Path, cfg: TrainConfig) -> tuple[DataLoader, DataLoader, BopTrainDataset]:
    """Shuffled training loader (``BopTrainDataset``) and evaluation loader (``BopEvalDataset``, or
    ``BopImageEvalDataset`` with ``several_instances``)."""
    augment = PoseAugment() if cfg.augment else None
    train = BopTrainDataset(
        root,
        cfg.train_split,
        cfg.obj_ids,
        cfg.image_size,
        max_instances=cfg.max_instances,
        cache=cfg.cache,
        augment=augment,
        keypoints=cfg.keypoints,
    )
    evaluation = BopImageEvalDataset if cfg.several_instances else BopEvalDataset
    test = evaluation(root, cfg.test_split, cfg.obj_ids, cfg.image_size, keypoints=cfg.keypoints)
    train_set, test_set = (
        _limited(train, cfg.train_limit, "train_limit"),
        _limited(test, cfg.test_limit, "test_limit"),
    )
    if len(train_set) < cfg.batch_size:  # drop_last: no full batch, no training step
        raise ConfigError(
            "batch_size",
            f"{cfg.batch_size} is more than the {len(train_set)} training images: no step would run",
        )
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,  # keeps each worker's image cache across epochs
    )
    test_loader = DataLoader(test_set, batch_size=cfg.batch_size, collate_fn=evaluation.collate)
    return train_loader, test_loader, train


def _limited(dataset: Any, limit: int | None, name: str) -> Any:
    """The first ``limit`` items of ``dataset`` (all for None), checked before any training starts."""
    if limit is None:
        return dataset
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= len(dataset):
        raise ConfigError(
            name, f"must be an integer in [1, {len(dataset)}] (the split's size), got {limit!r}"
        )
    return torch.utils.data.Subset(dataset, range(limit))


def evaluate(module: PoseModule, loader: DataLoader) -> tuple[dict[str, float], float]:
    """ADD(-S) accuracies of ``module`` in eval mode over ``loader`` (of ``BopEvalDataset``, or of
    ``BopImageEvalDataset``: every instance decoded and matched), and the seconds per item's image."""
    module.eval()
    metric = PoseAccuracy(module.hparams["thresholds"])
    count, start = 0, time.perf_counter()
    for batch in loader:
        if "image_index" in batch:
            module.score_images(metric, batch)
        else:
            module.score_batch(metric, batch)
        count += len(batch["image"])
    seconds = (time.perf_counter() - start) / max(count, 1)
    return {k: float(v) for k, v in metric.compute().items()}, seconds


def train_base(root: str | Path, cfg: TrainConfig) -> tuple[PoseModule, dict[str, Any]]:
    """Train with a plain CPU ``pl.Trainer`` for ``cfg.epochs``; returns the module and a result dict."""
    pl.seed_everything(cfg.seed, verbose=False)
    train_loader, test_loader, train = data_loaders(root, cfg)
    module = PoseModule(train.keypoints_3d().tolist(), **cfg.module)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=cfg.epochs,
        precision=cfg.precision or default_precision(),  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[EpochLog()],
    )
    start = time.perf_counter()
    trainer.fit(module, train_loader)
    train_seconds = time.perf_counter() - start
    metrics, seconds_per_image = evaluate(module, test_loader)
    result = {
        "data": str(root),
        "config": {**asdict(cfg), "precision": cfg.precision or default_precision()},
        "train_images": len(train_loader.dataset),  # type: ignore[arg-type]
        "test_instances": int(metrics["count"]),
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "train_seconds": train_seconds,
        "eval_seconds_per_image": seconds_per_image,
        "final_train_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        "metrics": metrics,
    }
    return module, result


def metrics_table(metrics: dict[str, float], thresholds: Sequence[float] = THRESHOLDS) -> str:
    """ADD(-S) accuracy (%) per threshold (rows) and depth bin (columns), with bin sizes."""
    cols = ["all", *DEPTH_BINS]
    lines = [f"{'ADD(-S)':<10}" + "".join(f"{c:>9}" for c in cols)]
    for k in thresholds:
        cells = [metrics[f"add_{k:g}d"], *(metrics[f"add_{k:g}d_{b}"] for b in DEPTH_BINS)]
        lines.append(f"{f'{k:g}d':<10}" + "".join(f"{100 * v:>8.1f}%" for v in cells))
    counts = [metrics["count"], *(metrics[f"count_{b}"] for b in DEPTH_BINS)]
    lines.append(f"{'samples':<10}" + "".join(f"{int(c):>9d}" for c in counts))
    lines.append(f"missed detections: {100 * metrics['missed']:.1f}%")
    return "\n".join(lines)
