"""The embedded generator: deterministic bytes, BOP layout the loader reads, masks that match the mesh."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from lightning_modules.data.bop import BopEvalDataset, load_annotations, read_mask
from lightning_modules.data.meshes import diameter, mesh_arrays
from lightning_modules.data.pose_synth import SynthConfig, make_models, models_info, pose_synth
from lightning_modules.data.render import Renderer
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
    fractions = []  # of the silhouette inside the image, which the occluders' placement rule measures
    for ann in load_annotations(root / "train"):
        visib = read_mask(ann.scene_dir, ann.im_id, 0)
        full = read_mask(ann.scene_dir, ann.im_id, 0, "mask")
        assert not (visib & ~full).any()  # visible part lies inside the full silhouette
        fractions.append(visib.sum() / full.sum())
    assert min(fractions) >= cfg.min_visib_fract - 0.02 and np.mean(fractions) < 0.97  # 0.02: downsampling


def test_truncated_objects_count_their_whole_silhouette(tmp_path: Path) -> None:
    """px_count_all, bbox_obj and visib_fract include the part cut off by the image border, as BOP's
    calc_gt_info (which renders on a canvas three times the image) does."""
    cfg = SynthConfig(
        seed=8, image_size=64, focal=75.0, num_train=12, num_test=0, supersample=2, occlusion_prob=0.0,
        max_distractors=0, depth_range=(150.0, 250.0),
    )  # fmt: skip
    root = pose_synth(cfg, tmp_path)
    scene = root / "train" / "000000"
    info = json.loads((scene / "scene_gt_info.json").read_text())
    meshes = {i: mesh_arrays(trimesh.load_mesh(str(root / "models" / f"obj_{i:06d}.ply"), process=False))
              for i in (1, 2)}  # fmt: skip
    canvas = Renderer(3 * 64, 3 * 64, cfg.supersample)  # the whole image and its eight neighbours at once
    truncated = 0
    for ann in load_annotations(root / "train"):
        entry = info[str(ann.im_id)][0]
        K = ann.K.copy()
        K[:2, 2] += 64
        whole = (
            canvas.downsample(canvas.silhouette(meshes[ann.obj_id], ann.R, ann.t, K).astype(np.float32))
            >= 0.5
        )
        ys, xs = np.nonzero(whole)
        assert entry["px_count_all"] == whole.sum()
        assert entry["bbox_obj"] == [xs.min() - 64, ys.min() - 64, xs.max() - xs.min(), ys.max() - ys.min()]
        inside = read_mask(ann.scene_dir, ann.im_id, 0, "mask").sum()
        assert entry["visib_fract"] == pytest.approx(inside / whole.sum(), abs=1e-6)  # nothing occludes it
        truncated += int(inside < whole.sum())
    canvas.release()
    assert 0 < truncated < len(info)  # some objects are cut by the border, and some are not


def test_depths_span_the_configured_range(tmp_path: Path) -> None:
    root = pose_synth(TINY, tmp_path)
    ds = BopEvalDataset(root, "train")
    depths = [float(ds[i]["t"][2]) for i in range(len(ds))]
    assert all(TINY.depth_range[0] <= d <= TINY.depth_range[1] for d in depths)
    with pytest.raises(ValueError, match="depth_range"):
        SynthConfig(depth_range=(500.0, 100.0))


def test_several_instances_of_one_object_per_image(tmp_path: Path) -> None:
    """``instances=3``: three annotated instances of one object per image, apart, each with its own masks."""
    cfg = SynthConfig(**{**TINY.__dict__, "instances": 3, "num_train": 0, "num_test": 5})
    root = pose_synth(cfg, tmp_path)
    scene = root / "test" / "000000"
    gt = json.loads((scene / "scene_gt.json").read_text())
    info = json.loads((scene / "scene_gt_info.json").read_text())
    K = cfg.camera()
    for im_id, entries in gt.items():
        assert len(entries) == 3 and len({e["obj_id"] for e in entries}) == 1
        visible = [read_mask(scene, int(im_id), i) for i in range(3)]
        assert all(m.any() for m in visible)
        for i, (entry, mask) in enumerate(zip(info[im_id], visible, strict=True)):
            assert entry["px_count_visib"] == int(mask.sum())
            whole = read_mask(scene, int(im_id), i, "mask")
            assert (mask <= whole).all()  # the visible part lies inside the whole silhouette
        centres = [K[:2] @ (np.array(e["cam_t_m2c"]) / e["cam_t_m2c"][2]) for e in entries]
        assert min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1 :]) > 5
    # the one-instance default keeps the key (and so the cache) of data generated before the option
    assert SynthConfig().key() == "3494f627" and cfg.key() != TINY.key()
    with pytest.raises(ValueError, match="instances"):
        SynthConfig(instances=0)


def test_models_info_gives_diameters_and_the_cylinder_s_symmetry() -> None:
    meshes = make_models(0)
    info = models_info(meshes)
    for obj_id, mesh in meshes.items():
        v = np.asarray(mesh.vertices, dtype=np.float64)
        brute = max(np.linalg.norm(v[i] - v, axis=1).max() for i in range(len(v)))  # every pair
        assert info[str(obj_id)]["diameter"] == pytest.approx(brute, abs=1e-5)
        np.testing.assert_allclose(
            [info[str(obj_id)][f"size_{a}"] for a in "xyz"], np.ptp(v, axis=0), atol=1e-5
        )
    assert info["2"]["symmetries_continuous"] == [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]
    assert "symmetries_continuous" not in info["1"] and "symmetries_discrete" not in info["1"]
    # the diameter's hull search also handles a flat point set, where Qhull fails
    flat = np.random.default_rng(0).normal(size=(100, 3)) * [1.0, 1.0, 0.0]
    assert diameter(flat) == pytest.approx(max(np.linalg.norm(p - flat, axis=1).max() for p in flat))
