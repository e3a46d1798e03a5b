"""BOP files written by hand round-trip through the loader; broken files raise DataError naming them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import trimesh

from lightning_modules.data.bop import (
    BopEvalDataset,
    BopImageEvalDataset,
    BopTrainDataset,
    load_models,
    resize_camera,
)
from lightning_modules.pose.keypoints import (
    bbox_keypoints,
    canonical_pose,
    project,
    rotation_about,
    surface_keypoints,
)
from nncf_ext.errors import ConfigError, DataError

K = np.array([[120.0, 0.0, 47.5], [0.0, 110.0, 31.5], [0.0, 0.0, 1.0]])
POSES = [
    (1, rotation_about(np.array([1.0, 0.0, 0.0]), 0.4), np.array([5.0, -3.0, 400.0])),
    (2, rotation_about(np.array([0.0, 1.0, 1.0]), 1.2), np.array([-20.0, 10.0, 650.0])),
]


def write_bop(root: Path) -> None:
    """Two objects (a box; a symmetric box-shaped 'can'), one scene with two images of one object each."""
    models = root / "models"
    models.mkdir(parents=True)
    info: dict[str, dict[str, object]] = {}
    for obj_id, size in ((1, (40.0, 30.0, 20.0)), (2, (30.0, 30.0, 60.0))):
        trimesh.creation.box(extents=size).export(str(models / f"obj_{obj_id:06d}.ply"))
        info[str(obj_id)] = {"diameter": float(np.linalg.norm(size))}
    info["2"]["symmetries_continuous"] = [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]
    (models / "models_info.json").write_text(json.dumps(info))
    scene = root / "test" / "000003"
    for sub in ("rgb", "mask_visib"):
        (scene / sub).mkdir(parents=True)
    gt, cam = {}, {}
    for im_id, (obj_id, R, t) in enumerate(POSES):
        image = np.full((64, 96, 3), 40 * (im_id + 1), dtype=np.uint8)
        image[0, 0] = (255, 0, 0)  # RGB red, written as BGR by OpenCV below
        cv2.imwrite(str(scene / "rgb" / f"{im_id:06d}.png"), image[..., ::-1])
        mask = np.zeros((64, 96), dtype=np.uint8)
        mask[20:40, 30:60] = 255
        cv2.imwrite(str(scene / "mask_visib" / f"{im_id:06d}_000000.png"), mask)
        gt[str(im_id)] = [{"cam_R_m2c": R.reshape(-1).tolist(), "cam_t_m2c": t.tolist(), "obj_id": obj_id}]
        cam[str(im_id)] = {"cam_K": K.reshape(-1).tolist(), "depth_scale": 1.0}
    (scene / "scene_gt.json").write_text(json.dumps(gt))
    (scene / "scene_camera.json").write_text(json.dumps(cam))


@pytest.fixture
def bop_root(tmp_path: Path) -> Path:
    write_bop(tmp_path)
    return tmp_path


def test_models_round_trip(bop_root: Path) -> None:
    models = load_models(bop_root / "models")
    assert sorted(models) == [1, 2]
    assert models[1].diameter == pytest.approx(np.linalg.norm([40, 30, 20]))
    assert not models[1].symmetric and models[2].symmetric
    np.testing.assert_allclose(models[1].points.max(0), [20, 15, 10])
    np.testing.assert_allclose(models[1].keypoints, bbox_keypoints(models[1].points))


def test_eval_dataset_round_trip(bop_root: Path) -> None:
    ds = BopEvalDataset(bop_root, "test")
    assert len(ds) == 2 and ds.obj_ids == [1, 2]
    batch = BopEvalDataset.collate([ds[0], ds[1]])
    for i, (obj_id, R, t) in enumerate(POSES):
        np.testing.assert_allclose(batch["R"][i].numpy(), R)
        np.testing.assert_allclose(batch["t"][i].numpy(), t)
        assert int(batch["obj_id"][i]) == obj_id and int(batch["label"][i]) == obj_id - 1
    np.testing.assert_allclose(batch["K"][0].numpy(), K)
    assert batch["image"].shape == (2, 3, 64, 96)
    assert torch.allclose(batch["image"][0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # RGB order
    assert batch["symmetric"].tolist() == [False, True]
    assert [p.shape[0] for p in batch["points"]] == [8, 8]


def test_image_eval_dataset_keeps_every_instance_of_an_image(bop_root: Path) -> None:
    """Image 0 gets a second instance of object 1: one item per image, instances concatenated in order."""
    gt_path = bop_root / "test" / "000003" / "scene_gt.json"
    gt = json.loads(gt_path.read_text())
    moved = {**gt["0"][0], "cam_t_m2c": [60.0, 0.0, 500.0]}
    gt["0"].append(moved)
    gt_path.write_text(json.dumps(gt))
    ds = BopImageEvalDataset(bop_root, "test", image_size=(32, 48))
    assert len(ds) == 2
    batch = BopImageEvalDataset.collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 32, 48)
    np.testing.assert_allclose(batch["K"][1].numpy(), resize_camera(K, (64, 96), (32, 48)))
    assert batch["image_index"].tolist() == [0, 0, 1]
    assert batch["obj_id"].tolist() == [1, 1, 2] and batch["label"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(batch["t"].numpy(), [POSES[0][2], [60.0, 0.0, 500.0], POSES[1][2]])
    np.testing.assert_allclose(batch["R"][2].numpy(), POSES[1][1])
    assert batch["symmetric"].tolist() == [False, False, True]
    assert batch["diameter"].tolist() == pytest.approx(
        [np.linalg.norm([40, 30, 20])] * 2 + [np.linalg.norm([30, 30, 60])]
    )
    assert len(batch["points"]) == 3


def test_train_dataset_keypoints_and_masks(bop_root: Path) -> None:
    ds = BopTrainDataset(bop_root, "test", max_instances=2)
    models = ds.models
    item = ds[0]
    _, R, t = POSES[0]
    np.testing.assert_allclose(item["keypoints"][0].numpy(), project(models[1].keypoints, K, R, t), rtol=1e-5)
    assert item["labels"].tolist() == [0, -1]
    assert item["masks"][0].sum() == 20 * 30 and not item["masks"][1].any()
    # the symmetric object is labelled in its canonical pose
    _, R2, t2 = POSES[1]
    R_c, t_c = canonical_pose(R2, t2, models[2].symmetries)
    np.testing.assert_allclose(
        ds[1]["keypoints"][0].numpy(), project(models[2].keypoints, K, R_c, t_c), rtol=1e-5
    )


def test_surface_keypoints_flow_into_the_training_targets(bop_root: Path) -> None:
    ds = BopTrainDataset(bop_root, "test", keypoints="surface")
    kp3d = ds.models[1].keypoints
    np.testing.assert_allclose(kp3d, surface_keypoints(ds.models[1].points))
    assert (np.abs(ds.models[1].points[None] - kp3d[:8, None]).sum(-1) == 0).any(1).all()  # mesh vertices
    np.testing.assert_allclose(ds.keypoints_3d()[0], kp3d)
    _, R, t = POSES[0]
    np.testing.assert_allclose(ds[0]["keypoints"][0].numpy(), project(kp3d, K, R, t), rtol=1e-5)
    with pytest.raises(ConfigError, match="keypoints must be one of"):
        BopEvalDataset(bop_root, "test", keypoints="corners")


def test_resizing_rescales_the_camera(bop_root: Path) -> None:
    ds = BopTrainDataset(bop_root, "test", image_size=(32, 48))
    item = ds[0]
    assert item["image"].shape == (3, 32, 48) and item["masks"].shape[-2:] == (32, 48)
    _, R, t = POSES[0]
    full = project(ds.models[1].keypoints, K, R, t)
    np.testing.assert_allclose(item["keypoints"][0].numpy(), (full + 0.5) / 2 - 0.5, rtol=1e-5)
    np.testing.assert_allclose(resize_camera(K, (64, 96), (64, 96)), K)
    # another aspect ratio: x scales by 64 / 96, y by 32 / 64; a pixel centre maps as (u + 0.5) s - 0.5
    squeezed = resize_camera(K, (64, 96), (32, 64))
    point = np.array([30.0, -12.0, 500.0])
    u, v, w = K @ point
    u2, v2, w2 = squeezed @ point
    assert u2 / w2 == pytest.approx((u / w + 0.5) * 64 / 96 - 0.5)
    assert v2 / w2 == pytest.approx((v / w + 0.5) * 32 / 64 - 0.5)


def test_min_visib_fract_drops_mostly_hidden_instances(bop_root: Path) -> None:
    info = {"0": [{"visib_fract": 0.05}], "1": [{"visib_fract": 0.5}]}
    (bop_root / "test" / "000003" / "scene_gt_info.json").write_text(json.dumps(info))
    assert [a.im_id for a in BopEvalDataset(bop_root, "test", min_visib_fract=0.1).annotations] == [1]
    assert len(BopEvalDataset(bop_root, "test").annotations) == 2  # the default scores every instance


def test_missing_and_malformed_files_are_named(bop_root: Path) -> None:
    scene = bop_root / "test" / "000003"
    (scene / "rgb" / "000001.png").unlink()
    with pytest.raises(DataError, match=r"000001\.png"):
        BopEvalDataset(bop_root, "test")[1]
    (scene / "scene_camera.json").write_text("{not json")
    with pytest.raises(DataError, match=r"scene_camera\.json"):
        BopEvalDataset(bop_root, "test")
    (bop_root / "models" / "obj_000002.ply").unlink()
    with pytest.raises(DataError, match=r"obj_000002\.ply"):
        load_models(bop_root / "models")
    with pytest.raises(DataError, match="split directory"):
        BopEvalDataset(bop_root, "val", obj_ids=[1])


def test_bad_pose_entries_are_named(bop_root: Path) -> None:
    gt_path = bop_root / "test" / "000003" / "scene_gt.json"
    gt = json.loads(gt_path.read_text())
    gt["1"][0]["cam_R_m2c"] = [1, 0, 0]
    gt_path.write_text(json.dumps(gt))
    with pytest.raises(DataError, match=r"scene_gt.json\[1\]\[0\].cam_R_m2c"):
        BopEvalDataset(bop_root, "test")


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        (
            "scene_gt.json",
            lambda d: d["0"][0].update(obj_id="x"),
            r"scene_gt.json\[0\]\[0\].obj_id: expected an integer",
        ),
        ("scene_gt.json", lambda d: d["0"][0].update(obj_id=1.5), r"obj_id: expected an integer, got float"),
        ("scene_gt.json", lambda d: d["0"][0].update(obj_id=0), r"obj_id: must be >= 1, got 0"),
        ("scene_gt.json", lambda d: d.update({"abc": []}), r"keys must be image ids \(digits\), got 'abc'"),
        ("scene_gt.json", lambda d: d.update({"\u00b2": []}), "keys must be image ids"),  # a digit, not ASCII
        ("scene_gt.json", lambda d: d.update({"0": {"a": 1}}), r"scene_gt.json\[0\]: expected a JSON list"),
        ("scene_camera.json", lambda d: d.update({"0": [1, 2]}), "no cam_K for image 0"),
        ("scene_gt_info.json", lambda d: d["0"][0].pop("visib_fract"), r"\[0\]\[0\]: no visib_fract"),
        (
            "scene_gt_info.json",
            lambda d: d["0"][0].update(visib_fract="high"),
            "visib_fract: expected a number",
        ),
        ("scene_gt_info.json", lambda d: d["0"][0].update(visib_fract=1.5), "visib_fract: must be <= 1.0"),
        ("scene_gt_info.json", lambda d: d["0"][0].update(visib_fract=10**400), "an integer too large"),
    ],
)
def test_malformed_scene_entries_are_named(
    bop_root: Path, file: str, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    scene = bop_root / "test" / "000003"
    info = {str(i): [{"visib_fract": 1.0}] for i in range(len(POSES))}
    (scene / "scene_gt_info.json").write_text(json.dumps(info))
    data = json.loads((scene / file).read_text())
    edit(data)
    (scene / file).write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        BopEvalDataset(bop_root, "test")


def test_malformed_models_info_is_named(bop_root: Path) -> None:
    info_path = bop_root / "models" / "models_info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "readme": {}}))
    with pytest.raises(DataError, match="keys must be object ids"):
        load_models(bop_root / "models")
    info_path.write_text(json.dumps({**info, "1": {"diameter": "big"}}))
    with pytest.raises(DataError, match=r"models_info.json\[1\].diameter: expected a number, got str"):
        load_models(bop_root / "models")
    info_path.write_text(json.dumps({**info, "1": {"diameter": 0}}))
    with pytest.raises(DataError, match=r"diameter: must be >= 1e-09, got 0"):
        load_models(bop_root / "models")
    info_path.write_bytes(b'{"1": "\xff"}')  # not UTF-8: was a raw UnicodeDecodeError
    with pytest.raises(DataError, match=r"models_info.json: invalid JSON"):
        load_models(bop_root / "models")
    info_path.write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(DataError, match="expected an object keyed by obj_id"):
        load_models(bop_root / "models")


def test_cache_serves_decoded_items_without_rereading(bop_root: Path) -> None:
    ds = BopTrainDataset(bop_root, "test", cache=True)
    first = ds[1]
    for path in (bop_root / "test" / "000003").rglob("*.png"):
        path.unlink()
    again = ds[1]
    assert all(torch.equal(first[k], again[k]) for k in first)
    with pytest.raises(DataError, match="000000"):
        ds[0]  # never read, so it is not cached


@pytest.mark.parametrize("image_size", [(0, 0), (-3, 32), (32,), (32.5, 32), (True, 32), "32x32", 32])
@pytest.mark.parametrize("dataset", [BopEvalDataset, BopTrainDataset, BopImageEvalDataset])
def test_image_size_is_checked_in_the_constructor(bop_root: Path, dataset: type, image_size: Any) -> None:
    """Was a raw cv2.error or IndexError at the first item."""
    with pytest.raises(ConfigError, match=r"image_size: must be \(height, width\), two positive integers"):
        dataset(bop_root, "test", image_size=image_size)
    assert dataset(bop_root, "test", image_size=[32, 48])[0]["image"].shape[-2:] == (32, 48)  # a list (YAML)


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        (
            "scene_gt.json",
            lambda d: d["0"][0].update(cam_t_m2c=[float("nan"), 0, 400]),
            r"scene_gt.json\[0\]\[0\].cam_t_m2c: not finite",
        ),
        (
            "scene_gt.json",
            lambda d: d["1"][0].update(cam_t_m2c=[0, float("inf"), 400]),
            r"\[1\]\[0\].cam_t_m2c",
        ),
        (
            "scene_gt.json",
            lambda d: d["1"][0].update(cam_t_m2c=[10, -5, -400]),
            r"\[1\]\[0\].cam_t_m2c: t_z = -400 puts the object at or behind the camera",
        ),
        ("scene_gt.json", lambda d: d["0"][0].update(cam_t_m2c=[0, 0, 0]), r"t_z = 0 puts the object"),
        (
            "scene_gt.json",
            lambda d: d["0"][0]["cam_R_m2c"].__setitem__(4, float("nan")),
            "cam_R_m2c: not finite",
        ),
        (
            "scene_gt.json",
            lambda d: d["0"][0].update(cam_R_m2c=[0] * 9),
            r"\[0\]\[0\].cam_R_m2c: not a rotation",
        ),
        (
            "scene_gt.json",
            lambda d: d["0"][0].update(cam_R_m2c=[v * 1.01 for v in d["0"][0]["cam_R_m2c"]]),  # scaled
            "cam_R_m2c: not a rotation",
        ),
        (
            "scene_gt.json",
            lambda d: d["0"][0].update(cam_R_m2c=[-v for v in d["0"][0]["cam_R_m2c"]]),
            r"cam_R_m2c: a reflection \(determinant -1\)",
        ),
        (
            "scene_camera.json",
            lambda d: d["0"].update(cam_K=[0] * 9),
            r"scene_camera.json\[0\].cam_K: expected",
        ),
        (
            "scene_camera.json",
            lambda d: d["1"]["cam_K"].__setitem__(2, float("nan")),
            r"\[1\].cam_K: not finite",
        ),
        ("scene_camera.json", lambda d: d["0"]["cam_K"].__setitem__(8, 0.0), r"cam_K: expected \[fx, s, cx"),
        ("scene_camera.json", lambda d: d["0"]["cam_K"].__setitem__(4, -110.0), r"fx, fy > 0"),
    ],
)
def test_non_finite_or_degenerate_poses_and_cameras_are_named(
    bop_root: Path, file: str, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    path = bop_root / "test" / "000003" / file
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # NaN / Infinity as Python's json writes them
    with pytest.raises(DataError, match=message):
        BopEvalDataset(bop_root, "test")


def test_rotations_stored_with_few_decimals_still_load(bop_root: Path) -> None:
    """BOP files keep a handful of decimals; 3 decimals deviate from a rotation by ~1e-3, and still load."""
    path = bop_root / "test" / "000003" / "scene_gt.json"
    gt = json.loads(path.read_text())
    gt["0"][0]["cam_R_m2c"] = [round(v, 3) for v in gt["0"][0]["cam_R_m2c"]]
    # LINEMOD test image 0 of object 1, as the BOP release stores it
    gt["1"][0]["cam_R_m2c"] = [0.0963063, 0.99404401, 0.0510079, 0.57332098, -0.0135081, -0.81922001]
    gt["1"][0]["cam_R_m2c"] += [-0.81365103, 0.10814, -0.57120699]
    path.write_text(json.dumps(gt))
    ds = BopEvalDataset(bop_root, "test")
    np.testing.assert_allclose(ds[0]["R"].numpy(), POSES[0][1], atol=5e-4)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"symmetries_continuous": [{"axis": [0, 0, 0], "offset": [0, 0, 0]}]},
            r"models_info.json\[2\].symmetries_continuous\[0\]: axis \[0.0, 0.0, 0.0\] has no direction",
        ),
        (
            {"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, float("nan"), 0]}]},
            "axis and offset must be finite",
        ),
        (
            {"symmetries_discrete": [[2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1]]},  # a scaling
            r"models_info.json\[2\].symmetries_discrete\[0\]: not a rotation",
        ),
        (
            {"symmetries_discrete": [[-1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]},  # a mirror
            r"symmetries_discrete\[0\]: a reflection",
        ),
        (
            {"symmetries_discrete": [[-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1]]},
            r"symmetries_discrete\[0\]: last row must be \[0, 0, 0, 1\]",
        ),
        (
            {"symmetries_discrete": [[-1, 0, 0, float("inf"), 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]},
            r"symmetries_discrete\[0\]: not finite",
        ),
    ],
)
def test_degenerate_symmetries_are_named(bop_root: Path, entry: dict[str, Any], message: str) -> None:
    info_path = bop_root / "models" / "models_info.json"
    info = json.loads(info_path.read_text())
    info["2"] = {"diameter": info["2"]["diameter"], **entry}
    info_path.write_text(json.dumps(info))
    with pytest.raises(DataError, match=message):
        load_models(bop_root / "models")


def test_real_discrete_symmetries_load(bop_root: Path) -> None:
    """LINEMOD's eggbox (obj 10) symmetry, as models_info.json stores it (6 significant digits)."""
    info_path = bop_root / "models" / "models_info.json"
    info = json.loads(info_path.read_text())
    eggbox = [-0.999964, -0.00333777, -0.0077452, 0.232611, 0.00321462, -0.999869, 0.0158593, 0.694388]
    eggbox += [-0.00779712, 0.0158338, 0.999844, -0.0593306, 0, 0, 0, 1]
    info["1"]["symmetries_discrete"] = [eggbox]
    info_path.write_text(json.dumps(info))
    assert load_models(bop_root / "models")[1].symmetric


@pytest.mark.parametrize(
    ("obj_ids", "message"),
    [
        (["1"], r"obj_ids: must be a non-empty list of positive integers, got \['1'\]"),
        ([1, 1], r"obj_ids: lists \[1\] more than once"),
        ([1.0], "positive integers"),
        ([True], "positive integers"),
        ([0], "positive integers"),
        ([], "non-empty"),
        ("12", "must be a list of object ids"),
    ],
)
def test_obj_ids_must_be_distinct_positive_integers(bop_root: Path, obj_ids: Any, message: str) -> None:
    """["1"] was a raw "Unknown format code 'd'"; [1, 1] silently made two classes of one object."""
    with pytest.raises(ConfigError, match=message):
        BopEvalDataset(bop_root, "test", obj_ids=obj_ids)
    with pytest.raises(ConfigError, match=message):
        load_models(bop_root / "models", obj_ids)
    ds = BopEvalDataset(bop_root, "test", obj_ids=np.array([2, 1]))  # type: ignore[arg-type]  # numpy ids
    assert ds.obj_ids == [2, 1] and ds.label_of == {2: 0, 1: 1}


def test_other_dataset_arguments_are_checked_before_reading(bop_root: Path) -> None:
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError, match="max_instances: "):
            BopTrainDataset(bop_root, "test", max_instances=bad)  # type: ignore[arg-type]
    for fraction in (1.5, "high", float("nan")):
        with pytest.raises(ConfigError, match="min_visib_fract: "):
            BopEvalDataset(bop_root, "test", min_visib_fract=fraction)  # type: ignore[arg-type]
