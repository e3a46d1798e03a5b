"""BOP-format 6D pose data (LINEMOD, Occluded-LINEMOD, the embedded set): models, scenes, torch datasets.

Layout read (https://github.com/thodan/bop_toolkit/blob/master/docs/bop_datasets_format.md)::

    <root>/models/models_info.json, obj_<id:06d>.ply
    <root>/<split>/<scene:06d>/scene_gt.json, scene_camera.json, [scene_gt_info.json],
                               rgb/<im:06d>.png|jpg, mask_visib/<im:06d>_<gt:06d>.png

Units are the data set's (mm for BOP). Images are returned as float CHW tensors in [0, 1].
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import trimesh
from torch.utils.data import Dataset

from lightning_modules.data.pose_augment import PoseAugment
from lightning_modules.pose.keypoints import (
    Symmetries,
    check_keypoints_kind,
    keypoints_2d,
    model_keypoints,
)
from nncf_ext.config_reader import check_float, check_int, is_integer
from nncf_ext.errors import ConfigError, DataError


@dataclass(frozen=True)
class ObjectModel:
    """One object: its vertices (P, 3), diameter, symmetries and 9 keypoints (see ``model_keypoints``)."""

    obj_id: int
    points: np.ndarray
    diameter: float
    symmetries: Symmetries
    keypoints: np.ndarray

    @property
    def symmetric(self) -> bool:
        return self.symmetries.symmetric


@dataclass(frozen=True)
class Annotation:
    """One ground-truth object instance in one image."""

    scene_dir: Path
    im_id: int
    gt_idx: int
    obj_id: int
    R: np.ndarray
    t: np.ndarray
    K: np.ndarray
    visib_fract: float | None


def read_json(path: Path) -> Any:
    """Parsed JSON; a missing or malformed file raises DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from exc


def _matrix(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: expected {int(np.prod(shape))} numbers, got {value!r}") from exc


def _number(
    value: Any,
    where: str,
    kind: type[int] | type[float] = float,
    minimum: float = 0.0,
    maximum: float = math.inf,
) -> Any:
    """``value`` as a ``kind`` in [minimum, maximum] (the config reader's checks), else a DataError."""
    try:
        if kind is int:
            return check_int(value, where, int(minimum))
        return check_float(value, where, minimum, None if math.isinf(maximum) else maximum)
    except ConfigError as exc:
        raise DataError(str(exc)) from None


def _key_id(key: str, where: str, what: str = "image") -> int:
    if not (isinstance(key, str) and key.isascii() and key.isdigit()):
        raise DataError(f"{where}: keys must be {what} ids (digits), got {key!r}")
    return int(key)


ROTATION_TOLERANCE = 2e-3
"""Largest ``|R R^T - I|`` entry of a stored rotation: BOP files keep a handful of decimals (3-decimal entries
deviate by up to ~1.7e-3), a scaled or sheared matrix far more."""


def _finite(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """``_matrix`` whose entries must all be finite."""
    m = _matrix(value, shape, where)
    if not np.isfinite(m).all():
        raise DataError(f"{where}: not finite ({m.reshape(-1).tolist()})")
    return m


def _check_rotation(R: np.ndarray, where: str) -> None:
    """A DataError unless ``R`` (3 x 3, finite) is a rotation up to ``ROTATION_TOLERANCE``."""
    error = float(np.abs(R @ R.T - np.eye(3)).max())
    if error > ROTATION_TOLERANCE:
        raise DataError(f"{where}: not a rotation (R R^T differs from I by {error:.3g})")
    if np.linalg.det(R) < 0:
        raise DataError(f"{where}: a reflection (determinant -1), not a rotation")


def _check_camera(K: np.ndarray, where: str) -> None:
    """A DataError unless ``K`` (3 x 3, finite) is ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``, fx, fy > 0."""
    pinhole = np.allclose(K[[1, 2, 2, 2], [0, 0, 1, 2]], [0, 0, 0, 1], rtol=0, atol=1e-6)
    if not (pinhole and K[0, 0] > 0 and K[1, 1] > 0):
        raise DataError(
            f"{where}: expected [fx, s, cx, 0, fy, cy, 0, 0, 1] with fx, fy > 0, got {K.reshape(-1).tolist()}"
        )


def _check_symmetries(symmetries: Symmetries, where: str) -> None:
    """Discrete symmetries must be rigid transforms, continuous ones need a finite non-zero axis."""
    for i, m in enumerate(symmetries.discrete):
        at = f"{where}.symmetries_discrete[{i}]"
        if not np.isfinite(m).all():
            raise DataError(f"{at}: not finite")
        if not np.allclose(m[3], [0, 0, 0, 1], rtol=0, atol=1e-6):
            raise DataError(f"{at}: last row must be [0, 0, 0, 1], got {m[3].tolist()}")
        _check_rotation(m[:3, :3], at)
    for i, (axis, offset) in enumerate(symmetries.continuous):
        at = f"{where}.symmetries_continuous[{i}]"
        if not (np.isfinite(axis).all() and np.isfinite(offset).all()):
            raise DataError(f"{at}: axis and offset must be finite")
        if np.linalg.norm(axis) < 1e-9:
            raise DataError(f"{at}: axis {axis.tolist()} has no direction")


def _positive_int(value: Any) -> bool:
    return is_integer(value) and bool(value >= 1)


def check_obj_ids(obj_ids: Sequence[int] | None) -> list[int] | None:
    """``obj_ids`` as a list of distinct positive ints (numpy integers too, not bools), or None."""
    if obj_ids is None:
        return None
    if isinstance(obj_ids, (str, bytes)) or not isinstance(obj_ids, Iterable):
        raise ConfigError("obj_ids", f"must be a list of object ids, got {obj_ids!r}")
    ids = list(obj_ids)
    if not ids or not all(_positive_int(i) for i in ids):
        raise ConfigError("obj_ids", f"must be a non-empty list of positive integers, got {ids!r}")
    repeated = sorted({int(i) for i in ids if ids.count(i) > 1})
    if repeated:
        raise ConfigError("obj_ids", f"lists {repeated} more than once (each id is one class)")
    return [int(i) for i in ids]


def check_image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)`` positive ints, or None (images as stored)."""
    if image_size is None:
        return None
    if (
        isinstance(image_size, (str, bytes))
        or not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(_positive_int(v) for v in image_size)
    ):
        raise ConfigError("image_size", f"must be (height, width), two positive integers, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _object(value: Any, where: str, kind: type) -> Any:
    if not isinstance(value, kind):
        raise DataError(f"{where}: expected a JSON {'object' if kind is dict else 'list'}, got {value!r:.60}")
    return value


def load_models(
    models_dir: str | Path, obj_ids: Sequence[int] | None = None, keypoints: str = "bbox"
) -> dict[int, ObjectModel]:
    """Read ``models_info.json`` and the PLY models (through trimesh) of ``obj_ids`` (default: all), with
    their ``keypoints`` (``keypoints.model_keypoints``)."""
    check_keypoints_kind(keypoints)  # before any file is read
    obj_ids = check_obj_ids(obj_ids)
    models_dir = Path(models_dir)
    info_path = models_dir / "models_info.json"
    info = read_json(info_path)
    if not isinstance(info, dict):
        raise DataError(f"{info_path}: expected an object keyed by obj_id")
    wanted = sorted(_key_id(k, str(info_path), "object") for k in info) if obj_ids is None else list(obj_ids)
    models = {}
    for obj_id in wanted:
        entry = info.get(str(obj_id))
        if not isinstance(entry, dict) or "diameter" not in entry:
            raise DataError(f"{info_path}: no entry with a 'diameter' for obj_id {obj_id}")
        ply = models_dir / f"obj_{obj_id:06d}.ply"
        if not ply.is_file():
            raise DataError(f"{ply}: model file not found")
        try:
            mesh = trimesh.load(str(ply), process=False, force="mesh")
            points = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))), dtype=np.float64)
        except Exception as exc:  # trimesh raises assorted errors on broken files
            raise DataError(f"{ply}: cannot read PLY ({exc})") from exc
        if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
            raise DataError(f"{ply}: no vertices")
        try:
            symmetries = Symmetries.from_models_info(entry)
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{info_path}: bad symmetries for obj_id {obj_id} ({exc})") from exc
        _check_symmetries(symmetries, f"{info_path}[{obj_id}]")
        diameter = _number(entry["diameter"], f"{info_path}[{obj_id}].diameter", minimum=1e-9)
        models[obj_id] = ObjectModel(obj_id, points, diameter, symmetries, model_keypoints(points, keypoints))
    return models


def load_annotations(
    split_dir: str | Path, obj_ids: Sequence[int] | None = None, min_visib_fract: float = 0.0
) -> list[Annotation]:
    """All instances of ``obj_ids`` in every scene of a split, ordered by (scene, image, gt index)."""
    obj_ids = check_obj_ids(obj_ids)
    min_visib_fract = check_float(min_visib_fract, "min_visib_fract", 0.0, 1.0)
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split directory not found")
    scenes = sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not scenes:
        raise DataError(f"{split_dir}: no scene directories (000000, 000001, ...)")
    wanted = None if obj_ids is None else set(obj_ids)
    out = []
    for scene in scenes:
        gt_path, cam_path = scene / "scene_gt.json", scene / "scene_camera.json"
        scene_gt = _object(read_json(gt_path), str(gt_path), dict)
        scene_cam = _object(read_json(cam_path), str(cam_path), dict)
        info_path = scene / "scene_gt_info.json"
        scene_info = _object(read_json(info_path), str(info_path), dict) if info_path.is_file() else {}
        for key in sorted(scene_gt, key=lambda k: _key_id(k, str(gt_path))):
            camera = scene_cam.get(key)
            if not isinstance(camera, dict) or "cam_K" not in camera:
                raise DataError(f"{cam_path}: no cam_K for image {key}")
            K = _finite(camera["cam_K"], (3, 3), f"{cam_path}[{key}].cam_K")
            _check_camera(K, f"{cam_path}[{key}].cam_K")
            infos = _object(scene_info.get(key, []), f"{info_path}[{key}]", list)
            for gt_idx, gt in enumerate(_object(scene_gt[key], f"{gt_path}[{key}]", list)):
                where = f"{gt_path}[{key}][{gt_idx}]"
                if not isinstance(gt, dict) or not all(k in gt for k in ("cam_R_m2c", "cam_t_m2c", "obj_id")):
                    raise DataError(f"{where}: needs cam_R_m2c, cam_t_m2c and obj_id")
                obj_id = _number(gt["obj_id"], f"{where}.obj_id", int, minimum=1)
                if wanted is not None and obj_id not in wanted:
                    continue
                visib = None
                if gt_idx < len(infos):
                    info_where = f"{info_path}[{key}][{gt_idx}]"
                    info = _object(infos[gt_idx], info_where, dict)
                    if "visib_fract" not in info:
                        raise DataError(f"{info_where}: no visib_fract")
                    visib = _number(info["visib_fract"], f"{info_where}.visib_fract", maximum=1.0)
                if visib is not None and visib < min_visib_fract:
                    continue
                R = _finite(gt["cam_R_m2c"], (3, 3), f"{where}.cam_R_m2c")
                _check_rotation(R, f"{where}.cam_R_m2c")
                t = _finite(gt["cam_t_m2c"], (3,), f"{where}.cam_t_m2c")
                if t[2] <= 0:
                    raise DataError(
                        f"{where}.cam_t_m2c: t_z = {t[2]:g} puts the object at or behind the camera "
                        "(BOP's camera looks along +z)"
                    )
                out.append(Annotation(scene, int(key), gt_idx, obj_id, R, t, K, visib))
    return out


def read_rgb(scene_dir: Path, im_id: int) -> np.ndarray:
    """The (H, W, 3) uint8 RGB image ``rgb/<im_id>.png`` (or .jpg) of a scene."""
    for ext in (".png", ".jpg"):
        path = scene_dir / "rgb" / f"{im_id:06d}{ext}"
        if path.is_file():
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"{path}: cannot decode image")
            return np.ascontiguousarray(image[..., ::-1])
    raise DataError(f"{scene_dir / 'rgb' / f'{im_id:06d}.png'}: image not found")


def read_mask(scene_dir: Path, im_id: int, gt_idx: int, kind: str = "mask_visib") -> np.ndarray:
    """The (H, W) bool mask ``<kind>/<im_id>_<gt_idx>.png`` of a scene."""
    path = scene_dir / kind / f"{im_id:06d}_{gt_idx:06d}.png"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    if mask is None:
        raise DataError(f"{path}: mask not found or unreadable")
    return mask > 127


def resize_camera(K: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics after resizing an image from ``src_hw`` to ``dst_hw`` (pixel centres at integers)."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    K = K.copy()
    K[0, 0], K[0, 1], K[0, 2] = K[0, 0] * sx, K[0, 1] * sx, (K[0, 2] + 0.5) * sx - 0.5
    K[1, 1], K[1, 2] = K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5
    return K


class _BopDataset(Dataset):
    """Shared parts: models, annotations, class indices (position in ``obj_ids``), optional resizing."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        obj_ids: Sequence[int] | None = None,
        image_size: tuple[int, int] | None = None,
        min_visib_fract: float = 0.0,
        keypoints: str = "bbox",
    ) -> None:
        self.image_size = check_image_size(image_size)  # arguments first, then the files
        obj_ids = check_obj_ids(obj_ids)
        self.root = Path(root)
        self.models = load_models(self.root / "models", obj_ids, keypoints)
        self.obj_ids = sorted(self.models) if obj_ids is None else obj_ids
        self.label_of = {obj_id: i for i, obj_id in enumerate(self.obj_ids)}
        self.annotations = load_annotations(self.root / split, self.obj_ids, min_visib_fract)
        if not self.annotations:
            raise DataError(f"{self.root / split}: no annotations of objects {self.obj_ids}")

    def keypoints_3d(self) -> np.ndarray:
        """(C, 9, 3) model keypoints in class order, for decoding predictions."""
        return np.stack([self.models[i].keypoints for i in self.obj_ids])

    def _image(self, scene_dir: Path, im_id: int) -> tuple[np.ndarray, tuple[int, int]]:
        rgb = read_rgb(scene_dir, im_id)
        src = (rgb.shape[0], rgb.shape[1])
        if self.image_size is not None and src != self.image_size:
            rgb = cv2.resize(rgb, (self.image_size[1], self.image_size[0]), interpolation=cv2.INTER_AREA)
        return rgb, src

    def _camera(self, K: np.ndarray, src: tuple[int, int]) -> np.ndarray:
        if self.image_size is None or src == self.image_size:
            return K
        return resize_camera(K, src, self.image_size)

    def _mask(self, scene_dir: Path, im_id: int, gt_idx: int, hw: tuple[int, int]) -> np.ndarray:
        mask = read_mask(scene_dir, im_id, gt_idx)
        if mask.shape != hw:
            mask = cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0
        return mask


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


class BopTrainDataset(_BopDataset):
    """One item per image: image, 2D keypoints (M, 9, 2), class labels (M,) and visible masks (M, H, W).

    Up to ``max_instances`` instances per image (padded with label -1); symmetric objects get the
    keypoints of their canonical pose (``keypoints.canonical_pose``). ``cache=True`` keeps the decoded
    images and masks in memory after their first read (about 70 kB per 128 x 128 image); ``augment``
    warps and recolours each item anew (``pose_augment.PoseAugment``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        obj_ids: Sequence[int] | None = None,
        image_size: tuple[int, int] | None = None,
        min_visib_fract: float = 0.1,
        max_instances: int = 4,
        cache: bool = False,
        augment: PoseAugment | None = None,
        keypoints: str = "bbox",
    ) -> None:
        max_instances = check_int(max_instances, "max_instances", 1)  # before any file is read
        super().__init__(root, split, obj_ids, image_size, min_visib_fract, keypoints)
        self.max_instances = max_instances
        images: dict[tuple[Path, int], list[Annotation]] = {}
        for ann in self.annotations:
            images.setdefault((ann.scene_dir, ann.im_id), []).append(ann)
        self.images = list(images.items())
        self._cache: dict[int, tuple[Any, ...]] | None = {} if cache else None
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int) -> tuple[Any, ...]:
        """Image (H, W, 3) uint8, then keypoints (n, 9, 2), labels (n,), masks (n, H, W) of n instances, and
        the (annotation, camera) of each instance."""
        (scene_dir, im_id), anns = self.images[index]
        anns = anns[: self.max_instances]
        rgb, src = self._image(scene_dir, im_id)
        hw = (rgb.shape[0], rgb.shape[1])
        views = [(a, self._camera(a.K, src)) for a in anns]
        keypoints = self._keypoints(views)
        labels = np.array([self.label_of[a.obj_id] for a in anns], dtype=np.int64)
        masks = np.stack([self._mask(scene_dir, im_id, a.gt_idx, hw) for a in anns])
        return rgb, keypoints, labels, masks, views

    def _keypoints(
        self, views: list[tuple[Annotation, np.ndarray]], roll: np.ndarray | None = None
    ) -> np.ndarray:
        """Keypoints (n, 9, 2) of the instances (symmetric ones: canonical for the camera rolled by roll)."""
        models = self.models
        return np.stack(
            [
                keypoints_2d(models[a.obj_id].keypoints, K, a.R, a.t, models[a.obj_id].symmetries, roll)
                for a, K in views
            ]
        ).astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._cache is None:
            rgb, kp, lab, msk, views = self._load(index)
        else:
            if index not in self._cache:
                self._cache[index] = self._load(index)
            rgb, kp, lab, msk, views = self._cache[index]
        if self.augment is not None:  # random stream from torch's generator, so seed_everything fixes it
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            symmetric = any(self.models[a.obj_id].symmetric for a, _ in views)
            rolled = partial(self._keypoints, views) if symmetric else kp
            rgb, kp, msk = self.augment(rgb, rolled, msk, rng)
        m, n = self.max_instances, len(lab)
        keypoints = np.zeros((m, 9, 2), dtype=np.float32)
        labels = np.full((m,), -1, dtype=np.int64)
        masks = np.zeros((m, *rgb.shape[:2]), dtype=bool)
        keypoints[:n], labels[:n], masks[:n] = kp, lab, msk
        return {
            "image": to_tensor(rgb),
            "keypoints": torch.from_numpy(keypoints),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(masks),
        }


class BopEvalDataset(_BopDataset):
    """One item per ground-truth instance: image, K, R, t, obj id, label, model points and what ADD needs.

    Use ``collate_fn=BopEvalDataset.collate`` (model points differ in size between objects).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        obj_ids: Sequence[int] | None = None,
        image_size: tuple[int, int] | None = None,
        min_visib_fract: float = 0.0,
        keypoints: str = "bbox",
    ) -> None:
        super().__init__(root, split, obj_ids, image_size, min_visib_fract, keypoints)

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ann = self.annotations[index]
        rgb, src = self._image(ann.scene_dir, ann.im_id)
        model = self.models[ann.obj_id]
        return {
            "image": to_tensor(rgb),
            "K": torch.from_numpy(self._camera(ann.K, src)),
            "R": torch.from_numpy(ann.R),
            "t": torch.from_numpy(ann.t),
            "obj_id": ann.obj_id,
            "label": self.label_of[ann.obj_id],
            "points": torch.from_numpy(model.points),
            "diameter": model.diameter,
            "symmetric": model.symmetric,
        }

    @staticmethod
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack every field but ``points``, which stays a list of (P_i, 3) tensors."""
        out: dict[str, Any] = {"points": [s["points"] for s in samples]}
        for key in samples[0]:
            if key == "points":
                continue
            values = [s[key] for s in samples]
            out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
        return out


class BopImageEvalDataset(BopEvalDataset):
    """One item per image with all its ground-truth instances, for data sets with several instances of an
    object in one image (T-LESS, IC-BIN): score with ``PoseModule.score_images``, which decodes every
    instance and matches them as BOP does (``metrics.pose.match_poses``). Arguments as ``BopEvalDataset``.

    Use ``collate_fn=BopImageEvalDataset.collate``: images and K are stacked per image (B), the instances'
    fields are concatenated (M) with ``image_index`` (M,) naming each one's image in the batch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        images: dict[tuple[Path, int], list[Annotation]] = {}
        for ann in self.annotations:
            images.setdefault((ann.scene_dir, ann.im_id), []).append(ann)
        self.images = list(images.items())

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        (scene_dir, im_id), anns = self.images[index]
        rgb, src = self._image(scene_dir, im_id)
        models = [self.models[a.obj_id] for a in anns]
        return {
            "image": to_tensor(rgb),
            "K": torch.from_numpy(self._camera(anns[0].K, src)),  # one camera per image (scene_camera)
            "R": torch.from_numpy(np.stack([a.R for a in anns])),
            "t": torch.from_numpy(np.stack([a.t for a in anns])),
            "obj_id": torch.tensor([a.obj_id for a in anns]),
            "label": torch.tensor([self.label_of[a.obj_id] for a in anns]),
            "points": [torch.from_numpy(m.points) for m in models],
            "diameter": torch.tensor([m.diameter for m in models], dtype=torch.float64),
            "symmetric": torch.tensor([m.symmetric for m in models]),
        }

    @staticmethod
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Images and K stacked (B); the instances' fields concatenated (M), ``points`` a list."""
        counts = [len(s["label"]) for s in samples]
        out: dict[str, Any] = {
            "image": torch.stack([s["image"] for s in samples]),
            "K": torch.stack([s["K"] for s in samples]),
            "image_index": torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(counts)),
            "points": [p for s in samples for p in s["points"]],
        }
        for key in ("R", "t", "obj_id", "label", "diameter", "symmetric"):
            out[key] = torch.cat([s[key] for s in samples])
        return out
