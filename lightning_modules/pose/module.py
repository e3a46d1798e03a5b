"""PoseModule: trains PoseNet (focal + keypoint loss) and validates with ADD(-S) accuracy per depth bin."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from lightning_modules.metrics.pose import THRESHOLDS, PoseAccuracy, match_poses
from lightning_modules.pose.decode import Aggregation, PoseEstimates, check_decoding_options, decode_poses
from lightning_modules.pose.instances import Detection, decode_instances
from lightning_modules.pose.loss import pose_loss
from lightning_modules.pose.model import PoseNet, cell_grid
from lightning_modules.pose.targets import encode_targets
from lightning_modules.pose.zoom import projected_extent, zoom_crops, zoom_factors, zoom_matrices


class PoseModule(pl.LightningModule):
    """Lightning task around ``PoseNet``.

    ``keypoints_3d`` (C, 9, 3): each class's model keypoints (``BopTrainDataset.keypoints_3d()``), class index
    = position. Training batches come from ``BopTrainDataset``; validation batches from ``BopEvalDataset``
    (one object per image and class), or ``BopImageEvalDataset`` (several instances of a class per image, see
    ``score_images``), with their ``collate``. Validation logs ``val/add_<k>d[_<bin>]`` (see
    ``metrics.pose.pose_accuracy``).
    """

    keypoints_3d: torch.Tensor

    def __init__(
        self,
        keypoints_3d: Sequence[Sequence[Sequence[float]]],
        widths: Sequence[int] = (16, 32, 48, 96, 128),
        fpn_channels: int = 64,
        head_convs: int = 2,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        keypoint_weight: float = 5.0,
        scale_range: tuple[float, float] = (2.0, 10.0),
        min_score: float = 0.2,
        top_k: int = 32,
        aggregation: Aggregation = "median",
        zoom_size: float | None = 56.0,
        max_zoom: float = 2.0,
        instance_radius: float = 0.5,
        max_detections: int = 10,
        thresholds: Sequence[float] = THRESHOLDS,
    ) -> None:
        super().__init__()
        kp = np.asarray(keypoints_3d, dtype=np.float64)
        if kp.ndim != 3 or kp.shape[1:] != (9, 3):
            raise ValueError(f"keypoints_3d must have shape (C, 9, 3), got {kp.shape}")
        if zoom_size is not None and not zoom_size > 0:
            raise ValueError(f"zoom_size must be > 0 pixels (or None: no zoom-in pass), got {zoom_size}")
        if not max_zoom >= 1:
            raise ValueError(f"max_zoom must be >= 1, got {max_zoom}")
        if not instance_radius > 0:
            raise ValueError(f"instance_radius must be > 0, got {instance_radius}")
        check_decoding_options(min_score, top_k, aggregation)
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.save_hyperparameters()
        self.hparams["keypoints_3d"] = kp.tolist()  # plain lists in checkpoints / hparams.yaml
        self.model = PoseNet(len(kp), widths, fpn_channels, head_convs)
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.register_buffer("keypoints_3d", torch.from_numpy(kp))
        self.val_metric = PoseAccuracy(thresholds)

    def setup(self, stage: str) -> None:
        # "*-true" half precision casts every float of the batch (K, R, t, model points, keypoint targets)
        # and the keypoint buffer: the geometry would be scored against rounded ground truth
        precision = str(self.trainer.precision)
        if precision in ("16-true", "bf16-true"):
            raise ValueError(
                f"PoseModule needs float32 / float64 geometry: precision {precision!r} casts the poses, "
                "cameras and keypoints of every batch; use '32-true', 'bf16-mixed' or '16-mixed'"
            )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # channels-last runs the CPU (oneDNN) convolutions about 3x faster than NCHW
        return self.model(images.contiguous(memory_format=torch.channels_last))

    def _cells(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centres, strides = cell_grid((images.shape[-2], images.shape[-1]), self.model.strides)
        return centres.to(images.device), strides.to(images.device)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        logits, offsets = self(images)
        targets = encode_targets(
            batch["keypoints"],
            batch["labels"],
            batch["masks"],
            self.model.strides,
            self.hparams["scale_range"],
        )
        centres, strides = self._cells(images)
        return pose_loss(logits, offsets, targets, centres, strides, self.hparams["keypoint_weight"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self.compute_loss(batch)
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in losses.items()},
            prog_bar=True,
            batch_size=len(batch["image"]),
        )
        return losses["loss"]

    @torch.no_grad()
    def predict_poses(self, images: torch.Tensor, labels: torch.Tensor, K: torch.Tensor) -> PoseEstimates:
        """Poses of the objects of class ``labels`` (B,) in ``images`` with intrinsics K (B, 3, 3).

        With ``zoom_size`` set, an object found smaller than ``zoom_size`` pixels is decoded again from a
        crop magnified about it (at most ``max_zoom``x, see ``pose.zoom``), and that pose replaces the first.
        """
        return self._zoom_in(images, labels, K, self._decode(images, labels, K))

    def _zoom_in(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        K: torch.Tensor,
        est: PoseEstimates,
        rows: np.ndarray | None = None,
    ) -> PoseEstimates:
        """``est`` with the poses of small objects decoded again from magnified crops (see ``pose.zoom``).
        ``labels``, ``K`` and ``est`` have one entry per estimate, ``rows`` its image (default: the same
        position in ``images``)."""
        if self.hparams["zoom_size"] is None:
            return est
        found = np.flatnonzero(est.detected)
        K_np = np.asarray(K.detach().cpu(), dtype=np.float64)[found]
        kp = self.keypoints_3d.cpu().numpy()[labels.cpu().numpy()[found]]
        sizes, centres = projected_extent(kp, est.R[found], est.t[found], K_np)
        zooms = zoom_factors(sizes, self.hparams["zoom_size"], self.hparams["max_zoom"])
        small = zooms > 1.0
        if not small.any():
            return est
        redo, K_np = found[small], K_np[small]
        A = zoom_matrices(centres[small], zooms[small], (images.shape[-2], images.shape[-1]))
        image_rows = redo if rows is None else rows[redo]
        crops = zoom_crops(images[torch.from_numpy(image_rows).to(images.device)], A)
        second = self._decode(
            crops, labels[torch.from_numpy(redo).to(labels.device)], torch.from_numpy(A @ K_np)
        )
        replaced = redo[second.detected]
        est.R[replaced], est.t[replaced] = second.R[second.detected], second.t[second.detected]
        return est

    @torch.no_grad()
    def predict_instances(self, images: torch.Tensor, K: torch.Tensor) -> list[list[Detection]]:
        """Every instance of every class in each of ``images`` (see ``pose.instances``), best first.

        With ``zoom_size`` set, small objects are decoded again from magnified crops, as in
        ``predict_poses``; a second pose is kept only where it projects onto the same instance (its centre
        within ``instance_radius`` x the first pose's extent), since a crop may show a neighbour of the same
        class. At most ``max_detections`` instances of a class are solved per image.
        """
        logits, offsets = self(images)
        found = decode_instances(
            logits,
            offsets,
            K,
            *self._decoding_inputs(images),
            radius=self.hparams["instance_radius"],
            max_instances=self.hparams["max_detections"],
            **self._decoding_options(),
        )
        flat = [d for dets in found for d in dets]
        if not flat or self.hparams["zoom_size"] is None:
            return found
        rows = np.array([b for b, dets in enumerate(found) for _ in dets])
        labels = torch.tensor([d.label for d in flat], device=images.device)
        first = PoseEstimates(
            np.stack([d.R for d in flat]),
            np.stack([d.t for d in flat]),
            np.ones(len(flat), dtype=bool),
            np.array([d.score for d in flat]),
        )
        K_det = K.detach().cpu()[torch.from_numpy(rows)]
        est = self._zoom_in(images, labels, K_det, copy.deepcopy(first), rows)
        kp = self.keypoints_3d.cpu().numpy()[labels.cpu().numpy()]
        K_np = np.asarray(K_det, dtype=np.float64)
        sizes, before = projected_extent(kp, first.R, first.t, K_np)
        _, after = projected_extent(kp, est.R, est.t, K_np)
        same = np.linalg.norm(after - before, axis=1) <= self.hparams["instance_radius"] * sizes
        for d, keep, R, t in zip(flat, same, est.R, est.t, strict=True):
            if keep:
                d.R, d.t = R, t
        return found

    def score_images(self, metric: PoseAccuracy, batch: dict[str, Any]) -> None:
        """Score a batch of ``BopImageEvalDataset.collate``: every instance is decoded, and the detections of
        each object in each image are matched to its instances as BOP does at each of the metric's
        thresholds (``metrics.pose.match_poses``); an instance without a match is missed."""
        found = self.predict_instances(batch["image"], batch["K"])
        image_index = batch["image_index"].cpu().numpy()
        labels = batch["label"].cpu().numpy()
        R_gt = np.asarray(batch["R"].detach().cpu(), dtype=np.float64)
        t_gt = np.asarray(batch["t"].detach().cpu(), dtype=np.float64)
        errors = np.full(len(labels), np.nan)
        for b, label in sorted({(int(i), int(c)) for i, c in zip(image_index, labels, strict=True)}):
            instances = np.flatnonzero((image_index == b) & (labels == label))
            dets = [d for d in found[b] if d.label == label]
            if dets:
                errors[instances] = match_poses(
                    np.stack([d.R for d in dets]),
                    np.stack([d.t for d in dets]),
                    np.array([d.score for d in dets]),
                    R_gt[instances],
                    t_gt[instances],
                    batch["points"][instances[0]],
                    bool(batch["symmetric"][instances[0]]),
                )
        metric.update(
            None, None, R_gt, t_gt, batch["points"], batch["diameter"], batch["symmetric"], errors=errors
        )

    def _decode(self, images: torch.Tensor, labels: torch.Tensor, K: torch.Tensor) -> PoseEstimates:
        logits, offsets = self(images)
        return decode_poses(
            logits, offsets, labels, K, *self._decoding_inputs(images), **self._decoding_options()
        )

    def _decoding_inputs(self, images: torch.Tensor) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Class keypoints (C, 9, 3), cell centres and strides: what both decoders take beside the outputs."""
        return (self.keypoints_3d.cpu().numpy(), *self._cells(images))

    def _decoding_options(self) -> dict[str, Any]:
        return {k: self.hparams[k] for k in ("min_score", "top_k", "aggregation")}

    def score_batch(self, metric: PoseAccuracy, batch: dict[str, Any]) -> None:
        """Predict the poses of an evaluation batch (``BopEvalDataset.collate``) and update ``metric``."""
        est = self.predict_poses(batch["image"], batch["label"], batch["K"])
        metric.update(
            est.R,
            est.t,
            batch["R"],
            batch["t"],
            batch["points"],
            batch["diameter"],
            batch["symmetric"],
            est.detected,
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "image_index" in batch:  # BopImageEvalDataset: several instances of an object per image
            self.score_images(self.val_metric, batch)
        else:
            self.score_batch(self.val_metric, batch)

    def on_validation_epoch_end(self) -> None:
        result = self.val_metric.compute()
        self.log_dict({f"val/{k}": float(v) for k, v in result.items()})
        self.val_metric.reset()

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams["lr"], total_steps=total, pct_start=0.1
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
