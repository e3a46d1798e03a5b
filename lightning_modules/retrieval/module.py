"""``RetrievalModule``: triplet-loss training with hard negatives mined from a per-epoch descriptor cache."""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from lightning_modules.data.revisited import TrainingTuples
from lightning_modules.metrics.retrieval import RevisitedMAP
from lightning_modules.retrieval.losses import TripletLoss, triplet_loss
from lightning_modules.retrieval.mining import mine_tuples
from nncf_ext.errors import ModelError


def _fast(images: torch.Tensor) -> torch.Tensor:
    """Channels-last images: 2-3x faster small convolutions and BatchNorm on CPU; weights are untouched."""
    return images.contiguous(memory_format=torch.channels_last)


class RetrievalModule(pl.LightningModule):
    """Train a descriptor model (``RetrievalNet`` or its NNCF-wrapped form) with the paper's triplet loss.

    Tuples come from a :class:`TrainingTuples` dataset (``tuples=`` or the datamodule's ``train_tuples``).
    Every ``mine_every_n_epochs`` epochs the whole training pool is described (sharded over DDP ranks, then
    gathered) and negatives are mined (``mining``: ``semi-hard`` or ``hardest``, see :func:`mine_tuples`)
    with a generator seeded by ``(seed, epoch)``, so all ranks agree. The first mining runs in
    ``on_fit_start``, before Lightning creates the epoch-0 iterator; use ``num_workers=0`` or non-persistent
    workers so each epoch's loader sees the new tuples. With ``batch_negatives`` every allowed image of the
    batch (other tuples included) is also a negative of each anchor, at no extra forward cost.

    With a ``teacher`` (typically the uncompressed model a compressed copy started from) every training
    image's descriptor is also pulled towards the teacher's: ``distill_weight`` x the mean squared distance
    is added to the triplet loss (descriptor distillation). The teacher is a frozen copy in eval mode.

    Validation logs ``val/mAP_easy``, ``val/mAP_medium``, ``val/mAP_hard`` and ``val/mP@k_<protocol>``
    through ``val_metric`` (default: a :class:`RevisitedMAP` over the datamodule's ``val_data``); on original
    Oxford5k / Paris6k ground truth, ``val/mAP_original``. The progress bar shows ``mAP_medium`` (else the
    first protocol's mAP).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        margin: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cosine_schedule: bool = True,
        candidates: int = 10,
        mining: str = "semi-hard",
        batch_negatives: bool = False,
        mine_every_n_epochs: int = 1,
        max_tuples: int | None = None,
        mining_batch_size: int = 128,
        seed: int = 0,
        tuples: TrainingTuples | None = None,
        val_metric: RevisitedMAP | None = None,
        teacher: torch.nn.Module | None = None,
        distill_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if (
            mine_every_n_epochs < 1
            or candidates < 1
            or lr <= 0
            or (max_tuples is not None and max_tuples < 1)
        ):
            raise ModelError(
                "RetrievalModule: mine_every_n_epochs, candidates and max_tuples must be >= 1 and lr > 0"
            )
        if distill_weight < 0:
            raise ModelError(f"RetrievalModule: distill_weight must be >= 0, got {distill_weight}")
        if mining not in ("semi-hard", "hardest"):
            raise ModelError(f"RetrievalModule: mining must be 'semi-hard' or 'hardest', got {mining!r}")
        self.save_hyperparameters(ignore=["model", "tuples", "val_metric", "teacher"])
        self.model = model
        # a frozen private copy in eval mode, not a submodule: ``train()`` never reaches it (its BatchNorm
        # statistics stay), checkpoints, the optimiser and the compression callback see only ``model``, and
        # the caller's network is left as it was
        self._teacher = (copy.deepcopy(teacher).requires_grad_(False).eval(),) if teacher is not None else ()
        self.loss_fn = TripletLoss(margin)
        self.tuples = tuples
        self.val_metric = val_metric

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def setup(self, stage: str) -> None:
        """Find the validation metric: ``val_metric`` or one over the datamodule's ``val_data``."""
        if self.val_metric is None:
            data = getattr(self._datamodule(), "val_data", None)
            if data is not None:
                self.val_metric = RevisitedMAP(data.gnd, data.num_database)

    def _datamodule(self) -> Any:
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    # -- mining --

    def _training_tuples(self) -> TrainingTuples:
        tuples = self.tuples if self.tuples is not None else getattr(self._datamodule(), "train_tuples", None)
        if not isinstance(tuples, TrainingTuples):
            raise ModelError(
                "RetrievalModule needs the TrainingTuples dataset: pass tuples=... or use a datamodule with "
                "a train_tuples attribute"
            )
        return tuples

    @torch.no_grad()
    def pool_descriptors(self, tuples: TrainingTuples) -> torch.Tensor:
        """Descriptors of the whole training pool; each rank describes one shard, then all are gathered."""
        n, world, rank = len(tuples.pool), self.trainer.world_size, self.trainer.global_rank
        per = math.ceil(n / world)
        shard = torch.arange(rank * per, (rank + 1) * per) % n  # equal shard sizes; wrapped indices repeat
        loader = DataLoader(Subset(tuples.pool, shard.tolist()), batch_size=self.hparams["mining_batch_size"])
        was_training = self.model.training
        self.model.eval()
        try:
            desc = torch.cat([self.model(_fast(images.to(self.device))) for images, _ in loader])
        finally:
            self.model.train(was_training)
        if world > 1:
            desc = cast(torch.Tensor, self.all_gather(desc)).flatten(0, 1)
            shard = cast(torch.Tensor, self.all_gather(shard.to(self.device))).flatten().cpu()
        full = torch.empty(n, desc.shape[1], dtype=desc.dtype)
        full[shard] = desc.cpu()
        return full

    def mine(self) -> None:
        """Refresh the training tuples with hard negatives for the current model."""
        tuples = self._training_tuples()
        g = torch.Generator().manual_seed(self.hparams["seed"] * 1_000_003 + self.current_epoch)
        mined = mine_tuples(
            self.pool_descriptors(tuples),
            tuples.anchors,
            tuples.positives,
            tuples.forbidden,
            tuples.num_negatives,
            candidates=self.hparams["candidates"],
            max_tuples=self.hparams["max_tuples"],
            strategy=self.hparams["mining"],
            generator=g,
        )
        tuples.set_tuples(mined)

    @staticmethod
    def _anchor_rows(tuples: TrainingTuples) -> torch.Tensor:
        """Pool index -> row of ``tuples.positives`` / ``forbidden`` (-1: never an anchor)."""
        rows = torch.full((len(tuples.pool),), -1, dtype=torch.long)
        rows[tuples.anchors] = torch.arange(len(tuples.anchors))
        return rows

    def on_fit_start(self) -> None:
        self.mine()

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        if epoch > 0 and epoch % self.hparams["mine_every_n_epochs"] == 0:
            self.mine()

    # -- steps --

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, pool_idx = batch  # (B, 2 + n, 3, H, W), (B, 2 + n)
        b, t = images.shape[:2]
        flat = _fast(images.flatten(0, 1))
        desc = self.model(flat).view(b, t, -1)
        if self.hparams["batch_negatives"]:  # every allowed image of the batch is a negative of every anchor
            tuples = self._training_tuples()
            rows = self._anchor_rows(tuples)[pool_idx[:, 0].cpu()]
            allowed = ~tuples.forbidden[rows][:, pool_idx.flatten().cpu()]
            loss = triplet_loss(
                desc[:, 0], desc[:, 1], desc.flatten(0, 1), self.hparams["margin"], allowed.to(desc.device)
            )
        else:
            loss = self.loss_fn(desc)
        if self._teacher and self.hparams["distill_weight"] > 0:
            with torch.no_grad():
                target = self._teacher[0].to(flat.device)(flat).view(b, t, -1)
            distill = (desc - target).square().sum(-1).mean()
            self.log("train/distill", distill, on_step=False, on_epoch=True, batch_size=b)
            loss = loss + self.hparams["distill_weight"] * distill
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=b)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.val_metric is None:
            raise ModelError("RetrievalModule: no val_metric (pass one or use a datamodule with val_data)")
        images, indices, is_query = batch
        self.val_metric.update(self.model(_fast(images)), indices, is_query)

    def on_validation_epoch_end(self) -> None:
        if self.val_metric is None:
            return
        if self.trainer.sanity_checking:  # a partial pass cannot be scored
            self.val_metric.reset()
            return
        values = self.val_metric.compute()
        self.val_metric.reset()
        # values are identical on all ranks (the metric gathered everything); sync_dist keeps Lightning quiet
        shown = "mAP_medium" if "mAP_medium" in values else next(k for k in values if k.startswith("mAP_"))
        self.log_dict({f"val/{shown}": values[shown]}, prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in values.items() if k != shown}, sync_dist=True)

    def configure_optimizers(self) -> Any:
        """Adam; with ``cosine_schedule`` the rate decays to 0 over ``trainer.max_epochs`` (per epoch)."""
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        epochs = self.trainer.max_epochs if self._trainer is not None else None
        if not self.hparams["cosine_schedule"] or epochs is None or epochs < 1:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs),
        }
