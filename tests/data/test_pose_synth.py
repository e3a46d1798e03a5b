"""The embedded generator: deterministic bytes, BOP layout the loader reads, masks that match the mesh."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from lightning_modules.data.bop import BopEvalDataset, load_annotations, read_mask
from lightning_modules.data.pose_synth import SynthConfig, pose_synth
from lightning_modules.pose.keypoints import project

TINY = SynthConfig(seed=3, image_size=64, focal=75.0, num_train=6, num_test=4, supersample=2)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_a_new_seed_does_not(tmp_path: Path) -> None:
    a = files(pose_synth(TINY, tmp_path / "a"))
    b = files(pose_synth(TINY, tmp_path / "b"))
    assert a == b
    assert any(k.startswith("train/000000/rgb/") for k in a) and "models/models_info.json" in a
    other = files(pose_synth(SynthConfig(**{**TINY.__dict__, "seed": 4}), tmp_path / "c"))
    assert other["train/000000/rgb/000000.png"] != a["train/000000/rgb/000000.png"]


def test_cache_is_reused(tmp_path: Path) -> None:
    root = pose_synth(TINY, tmp_path)
    stamp = (root / "train" / "000000" / "scene_gt.json").stat().st_mtime_ns
    assert pose_synth(TINY, tmp_path) == root
    assert (root / "train" / "000000" / "scene_gt.json").stat().st_mtime_ns == stamp
    assert root.name == f"pose_synth_3_{TINY.key()}"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_unoccluded_masks_match_the_projected_mesh(tmp_path: Path) -> None:
    """The mask of an unoccluded object equals the mesh's triangles projected and filled by OpenCV."""
    cfg = SynthConfig(
        seed=5,
        image_size=64,
        focal=75.0,
        num_train=8,
        num_test=0,
        supersample=2,
        occlusion_prob=0.0,
        max_distractors=0,
        depth_range=(250.0, 400.0),
    )
    root = pose_synth(cfg, tmp_path)
    anns = load_annotations(root / "train")
    assert {a.obj_id for a in anns} == {1, 2}
    for ann in anns:
        mesh = trimesh.load_mesh(str(root / "models" / f"obj_{ann.obj_id:06d}.ply"), process=False)
        uv = project(np.asarray(mesh.vertices), ann.K, ann.R, ann.t)
        triangles = np.round(uv[np.asarray(mesh.faces)] * 16).astype(np.int32)  # (T, 3, 2), 4 fraction bits
        raster = np.zeros((64, 64), dtype=np.uint8)
        cv2.fillPoly(raster, list(triangles), 1, lineType=cv2.LINE_8, shift=4)
        mask = read_mask(ann.scene_dir, ann.im_id, ann.gt_idx)
        assert mask.sum() > 30
        assert iou(mask, raster > 0) > 0.85
        # no sub-pixel convention slip between renderer and projection (a half-pixel shift fails this)
        centroid_shift = np.argwhere(mask).mean(0) - np.argwhere(raster > 0).mean(0)
        assert np.abs(centroid_shift).max() < 0.35
        np.testing.assert_array_equal(mask, read_mask(ann.scene_dir, ann.im_id, ann.gt_idx, "mask"))
        # a wrong pose (shifted by 3 px) must not match as well
        assert iou(mask, np.roll(raster > 0, 3, axis=1)) < iou(mask, raster > 0) - 0.1


def test_occluders_hide_part_of_the_object(tmp_path: Path) -> None:
    cfg = SynthConfig(
        seed=6, image_size=64, focal=75.0, num_train=6, num_test=0, supersample=2, occlusion_prob=1.0
    )
    root = pose_synth(cfg, tmp_path)
    info = json.loads((root / "train" / "000000" / "scene_gt_info.json").read_text())
    fractions = [entry[0]["visib_fract"] for entry in info.values()]
    assert min(fractions) >= cfg.min_visib_fract and np.mean(fractions) < 0.97
    for ann in load_annotations(root / "train"):
        visib = read_mask(ann.scene_dir, ann.im_id, 0)
        full = read_mask(ann.scene_dir, ann.im_id, 0, "mask")
        assert not (visib & ~full).any()  # visible part lies inside the full silhouette


def test_depths_span_the_configured_range(tmp_path: Path) -> None:
    root = pose_synth(TINY, tmp_path)
    ds = BopEvalDataset(root, "train")
    depths = [float(ds[i]["t"][2]) for i in range(len(ds))]
    assert all(TINY.depth_range[0] <= d <= TINY.depth_range[1] for d in depths)
    with pytest.raises(ValueError, match="depth_range"):
        SynthConfig(depth_range=(500.0, 100.0))
