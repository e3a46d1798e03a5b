"""Revisited-format loader: generator -> files -> loader round trip, crops, training tuples, named errors."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from lightning_modules.data.places_synth import RenderedPlaces, SynthConfig, generate_places
from lightning_modules.data.revisited import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PoolImages,
    RevisitedData,
    RevisitedEvalSet,
    TrainingTuples,
    load_revisited,
)
from lightning_modules.metrics.retrieval import RevisitedMAP
from lightning_modules.retrieval.datamodule import RetrievalDataModule
from lightning_modules.retrieval.evaluation import evaluate
from lightning_modules.retrieval.model import build_retrieval_net
from nncf_ext.errors import DataError

TINY = SynthConfig(
    num_places=4, easy_views=2, hard_views=2, junk_views=1, distractors=6, image_size=48, query_size=64
)


def foreign_copy(root: Path, tmp_path: Path) -> dict[str, Any]:
    """The tiny set's ground truth, to edit and write beside its images (linked) under ``tmp_path``."""
    with open(root / "gnd_tiny.pkl", "rb") as f:
        raw = pickle.load(f)
    (tmp_path / "jpg").symlink_to(root / "jpg")
    return raw


def write_gnd(path: Path, raw: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        pickle.dump(raw, f)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RenderedPlaces]:
    root = tmp_path_factory.mktemp("tiny_places")
    return root, generate_places(root, "tiny", seed=5, config=TINY)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    rgb = x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    return (rgb.permute(1, 2, 0).numpy() * 255).round()


def test_round_trip_images_and_ground_truth(dataset: tuple[Path, RenderedPlaces]) -> None:
    root, rendered = dataset
    data = load_revisited(root)
    assert data.name == "tiny" and data.num_database == 26 and data.num_queries == 4
    for q, entry in enumerate(data.gnd):
        for kind in ("easy", "hard", "junk"):
            assert entry[kind] == [i for i, (p, k) in enumerate(rendered.labels) if (p, k) == (q, kind)]
    pool = PoolImages(data, image_size=48)
    for i in (0, 7, 25):  # database images come back as rendered, up to JPEG loss far below other images
        loaded = to_uint8(pool[i][0])
        assert (
            np.abs(loaded - rendered.images[i]).mean() < 10 < np.abs(loaded - rendered.images[i - 1]).mean()
        )
    x1, y1, x2, y2 = (round(v) for v in data.gnd[2]["bbx"])
    crop = rendered.queries[2][y1:y2, x1:x2]
    loaded = to_uint8(pool[data.num_database + 2][0])  # query crops follow the database in the pool
    expected = cv2.resize(crop, (48, 48), interpolation=cv2.INTER_AREA).astype(np.float64)
    assert np.abs(loaded - expected).mean() < 10


def test_eval_set_lists_queries_then_database(dataset: tuple[Path, RenderedPlaces]) -> None:
    data = load_revisited(dataset[0])
    evalset = RevisitedEvalSet(data, image_size=32)
    assert len(evalset) == 30
    image, index, is_query = evalset[3]
    assert image.shape == (3, 32, 32) and (index, is_query) == (3, True)
    assert evalset[4][1:] == (0, False) and evalset[29][1:] == (25, False)


def test_training_tuples_follow_the_ground_truth(dataset: tuple[Path, RenderedPlaces]) -> None:
    root, rendered = dataset
    tuples = TrainingTuples(load_revisited(root), image_size=32, num_negatives=3, seed=0)
    n = 26
    place = [p for p, _ in rendered.labels] + list(range(4))  # pool: database, then query crops
    kind = [k for _, k in rendered.labels] + ["query"] * 4
    assert sorted(tuples.anchors.tolist()) == [
        i for i in range(n + 4) if kind[i] in ("easy", "hard", "query")
    ]
    for row, anchor in enumerate(tuples.anchors.tolist()):
        positives = tuples.positives[row].nonzero().flatten().tolist()
        assert positives == [
            j for j in range(n + 4) if j != anchor and place[j] == place[anchor] and kind[j] != "junk"
        ]
        forbidden = tuples.forbidden[row].nonzero().flatten().tolist()
        assert forbidden == [j for j in range(n + 4) if place[j] == place[anchor]]  # junk is never a negative
    images, idx = tuples[0]
    assert images.shape == (5, 3, 32, 32)
    a, p, negs = int(idx[0]), int(idx[1]), idx[2:].tolist()
    assert place[a] == place[p] and all(place[j] != place[a] for j in negs)
    with pytest.raises(DataError, match=r"shape \(n, 5\)"):
        tuples.set_tuples(torch.zeros(2, 4, dtype=torch.long))


def test_missing_and_malformed_files_are_named(dataset: tuple[Path, RenderedPlaces], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"gnd_nothing\.pkl: ground-truth file not found"):
        load_revisited(tmp_path, "nothing")
    root = dataset[0]
    with open(root / "gnd_tiny.pkl", "rb") as f:
        raw = pickle.load(f)
    broken = tmp_path / "broken"
    (broken / "jpg").mkdir(parents=True)
    for name in raw["qimlist"] + raw["imlist"][1:]:
        (broken / "jpg" / f"{name}.jpg").write_bytes((root / "jpg" / f"{name}.jpg").read_bytes())
    write_gnd(broken / "gnd_broken.pkl", raw)
    with pytest.raises(DataError, match=r"img_00000\.jpg: image not found"):
        load_revisited(broken)
    (broken / "jpg" / "img_00000.jpg").write_bytes(b"not a jpeg")
    data = load_revisited(broken)
    with pytest.raises(DataError, match=r"img_00000\.jpg: cannot read image"):
        PoolImages(data, 32)[0]
    for outside in (99, len(raw["imlist"])):  # one past the end too
        raw["gnd"][1]["hard"] = [outside]
        write_gnd(broken / "gnd_broken.pkl", raw)
        with pytest.raises(
            DataError, match=r"gnd_broken\.pkl: gnd\[1\]\['hard'\] has an index outside imlist"
        ):
            load_revisited(broken)
    good = raw["gnd"][1]
    for entry, message in (
        (
            {**good, "hard": [1.9, 2.7]},
            r"gnd\[1\]\['hard'\] must hold integer image indices",
        ),  # not truncated
        ({**good, "hard": [1.0, 2.0]}, None),  # whole floats are indices
        ({**good, "bbx": [0, 0, float("nan"), 10]}, r"gnd\[1\]\['bbx'\] must have 4 finite numbers"),
        ({**good, "bbx": ["a", 0, 1, 2]}, r"gnd\[1\]\['bbx'\] is not numeric"),
        (None, r"gnd\[1\] must be a dict, got NoneType"),
    ):
        raw["gnd"][1] = entry
        write_gnd(broken / "gnd_broken.pkl", raw)
        if message is None:
            assert load_revisited(broken).gnd[1]["hard"] == [1, 2]
        else:
            with pytest.raises(DataError, match=message):
                load_revisited(broken)


def test_decoded_images_are_cached_when_they_fit(
    dataset: tuple[Path, RenderedPlaces], tmp_path: Path
) -> None:
    root = tmp_path / "copy"
    (root / "jpg").mkdir(parents=True)
    for f in (dataset[0] / "jpg").iterdir():
        (root / "jpg" / f.name).write_bytes(f.read_bytes())
    (root / "gnd_tiny.pkl").write_bytes((dataset[0] / "gnd_tiny.pkl").read_bytes())
    data = load_revisited(root)
    cached, uncached = PoolImages(data, 32), PoolImages(data, 32, cache_bytes=0)
    first = cached[3][0]
    (root / "jpg" / f"{data.imlist[3]}.jpg").unlink()
    assert torch.equal(cached[3][0], first)  # served from memory
    with pytest.raises(DataError, match="cannot read image"):
        uncached[3]


def test_original_oxford5k_ground_truth_loads_and_scores_with_the_original_protocol(
    dataset: tuple[Path, RenderedPlaces], tmp_path: Path
) -> None:
    from lightning_modules.metrics.retrieval import revisited_map

    root = dataset[0]
    with open(root / "gnd_tiny.pkl", "rb") as f:
        raw = pickle.load(f)
    original = tmp_path / "oxford5k"
    original.mkdir()
    (original / "jpg").symlink_to(root / "jpg")
    # cirtorch's gnd_oxford5k.pkl: good + ok merged under "ok", junk
    raw["gnd"] = [{"bbx": e["bbx"], "ok": e["easy"] + e["hard"], "junk": e["junk"]} for e in raw["gnd"]]
    write_gnd(original / "gnd_oxford5k.pkl", raw)
    data = load_revisited(original)
    assert data.gnd[1]["ok"] == raw["gnd"][1]["ok"] and data.gnd[1]["junk"] == raw["gnd"][1]["junk"]
    db = torch.eye(data.num_database)
    q = torch.stack([db[e["ok"]].sum(0) for e in data.gnd])  # every query closest to its own place
    scores = revisited_map(q, db, data.gnd)  # the protocol follows the ground truth
    assert list(scores) == ["mAP_original", "mP@1_original", "mP@5_original", "mP@10_original"]
    assert scores["mAP_original"].item() == pytest.approx(1.0)
    assert RevisitedMAP(data.gnd, data.num_database).protocols == ("original",)
    net = build_retrieval_net("small", widths=(4, 4, 4, 4), num_clusters=2, whitening_dim=4)
    assert set(evaluate(net, data, 32)) == set(scores)  # evaluate() and validation score it too
    tuples = TrainingTuples(data, image_size=32, num_negatives=3, seed=0)
    assert len(tuples) > 0
    raw["gnd"][0].pop("ok")
    write_gnd(original / "gnd_oxford5k.pkl", raw)
    with pytest.raises(DataError, match=r"gnd\[0\] lacks \['easy', 'hard'\]"):
        load_revisited(original)


def test_read_image_crops_the_stored_pixels_whatever_the_exif_orientation(tmp_path: Path) -> None:
    from PIL import Image

    from lightning_modules.data.revisited import read_image

    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:50, :100], pixels[:50, 100:] = (255, 0, 0), (0, 0, 255)
    pixels[50:, :100], pixels[50:, 100:] = (0, 255, 0), (255, 255, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees to display", as phone photos are often tagged
    image.save(tmp_path / "tagged.jpg", exif=exif.tobytes(), quality=95)
    crop = read_image(tmp_path / "tagged.jpg", 8, [0, 50, 100, 100])  # the green block, stored coordinates
    assert np.abs(crop.reshape(-1, 3).mean(0) - (0, 255, 0)).max() < 8
    assert read_image(tmp_path / "tagged.jpg", 8).shape == (8, 8, 3)


def test_queries_of_the_same_place_are_positives_not_negatives_of_each_other(tmp_path: Path) -> None:
    """ROxford has five queries per landmark: one query's crop must not be mined as a negative for another."""
    imlist = [f"db{i}" for i in range(8)]
    gnd = [
        {"bbx": [0, 0, 4, 4], "easy": [0, 1], "hard": [], "junk": []},  # place A
        {"bbx": [0, 0, 4, 4], "easy": [1], "hard": [2], "junk": []},  # place A again
        {"bbx": [0, 0, 4, 4], "easy": [3, 4], "hard": [], "junk": []},  # place B
    ]
    data = RevisitedData(tmp_path, "same", imlist, ["q0", "q1", "q2"], gnd)
    tuples = TrainingTuples(data, image_size=32, num_negatives=2, seed=0)
    n = data.num_database
    row = {int(a): i for i, a in enumerate(tuples.anchors)}
    q0, q1, q2 = row[n], row[n + 1], row[n + 2]
    assert tuples.positives[q0, n + 1] and tuples.positives[q1, n] and tuples.forbidden[q0, n + 1]
    assert tuples.positives[q0, 2]  # q1's hard image shows place A too
    assert not tuples.positives[q2, n] and not tuples.forbidden[q2, n]  # place B: A's crops stay negatives


def test_a_query_without_positives_is_no_anchor(tmp_path: Path) -> None:
    """A query whose easy and hard lists are empty has nothing to pull towards: its crop is not an anchor."""
    imlist = [f"db{i}" for i in range(8)]
    gnd = [
        {"bbx": [0, 0, 4, 4], "easy": [0, 1], "hard": [], "junk": []},
        {"bbx": [0, 0, 4, 4], "easy": [], "hard": [], "junk": [2]},
        {"bbx": [0, 0, 4, 4], "easy": [3, 4], "hard": [], "junk": []},
    ]
    data = RevisitedData(tmp_path, "lonely", imlist, ["q0", "q1", "q2"], gnd)
    tuples = TrainingTuples(data, image_size=32, num_negatives=2, seed=0)
    n = data.num_database
    assert n + 1 not in tuples.anchors.tolist()
    assert {n, n + 2} <= set(tuples.anchors.tolist())


def test_image_sizes_and_counts_are_checked_in_the_constructors(dataset: tuple[Path, RenderedPlaces]) -> None:
    """Were a raw cv2.error at the first item, or a TypeError deep in torch.multinomial."""
    root = dataset[0]
    data = load_revisited(root)
    for size in (0, -5, 32.5, True, "32"):
        with pytest.raises(DataError, match=r"PoolImages: image_size must be a positive integer, got"):
            PoolImages(data, size)  # type: ignore[arg-type]
        with pytest.raises(DataError, match="image_size must be a positive integer"):
            RevisitedEvalSet(data, size)  # type: ignore[arg-type]
    for count in (2.5, 0, True):
        with pytest.raises(DataError, match=r"tiny: num_negatives must be a positive integer, got"):
            TrainingTuples(data, 32, num_negatives=count)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"PoolImages: cache_bytes must be an integer >= 0, got -1"):
        PoolImages(data, 32, cache_bytes=-1)
    assert PoolImages(data, np.int64(8))[0][0].shape == (3, 8, 8)  # type: ignore[arg-type]  # numpy sizes
    with pytest.raises(DataError, match="RetrievalDataModule: batch_size must be a positive integer, got 0"):
        RetrievalDataModule(root, root, batch_size=0)
    with pytest.raises(DataError, match=r"RetrievalDataModule: num_workers must be an integer >= 0, got -1"):
        RetrievalDataModule(root, root, num_workers=-1)
    with pytest.raises(DataError, match=r"RetrievalDataModule: image_size must be a positive integer"):
        RetrievalDataModule(root, root, image_size=(64, 64))  # type: ignore[arg-type]


def test_set_tuples_never_truncates_and_takes_lists(dataset: tuple[Path, RenderedPlaces]) -> None:
    tuples = TrainingTuples(load_revisited(dataset[0]), image_size=32, num_negatives=2, seed=0)
    before = tuples.tuples.clone()
    for bad, message in (
        (torch.tensor([[0.5, 1.7, 2.0, 3.0]]), r"tuples must hold integer image indices, got \[0.5"),
        (np.array([[0, 1, 2, float("nan")]]), "integer image indices"),
        (torch.ones(1, 4, dtype=torch.bool), "integer image indices"),
        ([[0, 1, 2], [3, 4]], r"tuples must be an \(n, 4\) array of pool indices"),
        ([[0, 1, 2, 99]], "must lie in the pool of 30 images"),
        ([[0, 1, 2, -1]], "must lie in the pool of 30 images"),
        (torch.zeros(3, dtype=torch.long), r"shape \(n, 4\), got \(3,\)"),
    ):
        with pytest.raises(DataError, match=message):
            tuples.set_tuples(bad)
        assert torch.equal(tuples.tuples, before)  # unchanged
    tuples.set_tuples([[0, 1, 2, 3], [4, 5, 6, 7]])  # was an AttributeError
    assert tuples.tuples.dtype == torch.long and tuples.tuples.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    tuples.set_tuples(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # whole floats are indices
    assert tuples.tuples.tolist() == [[1, 2, 3, 4]] and tuples[0][1].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"imlist": 5}, r"gnd_foreign\.pkl: 'imlist' must be a list of names, got 5"),
        ({"imlist": None}, r"'imlist' must be a list of names, got None"),
        ({"qimlist": 5}, r"'qimlist' must be a list of names, got 5"),
        ({"qimlist": "abcd"}, r"'qimlist' must be a list of names, got 'abcd'"),  # was read letter by letter
        ({"imlist": [0, 1]}, r"'imlist' must be a list of names"),
        ({"gnd": 5}, r"gnd_foreign\.pkl: 'gnd' must be a list of per-query dicts, got 5"),
        ({"gnd": {"0": {}}}, r"'gnd' must be a list of per-query dicts"),
    ],
)
def test_foreign_ground_truth_containers_are_named(
    dataset: tuple[Path, RenderedPlaces], tmp_path: Path, change: dict[str, object], message: str
) -> None:
    raw = foreign_copy(dataset[0], tmp_path)
    write_gnd(tmp_path / "gnd_foreign.pkl", {**raw, **change})
    with pytest.raises(DataError, match=message):
        load_revisited(tmp_path)


def test_an_empty_query_box_fails_at_load_not_at_read(
    dataset: tuple[Path, RenderedPlaces], tmp_path: Path
) -> None:
    raw = foreign_copy(dataset[0], tmp_path)
    good = raw["gnd"][1]["bbx"]
    for bbx in (
        [40, 40, 10, 10],
        [10, 5, 50, 5],
        [-20, 0, -5, 10],
        [10.2, 0, 10.4, 30],
    ):  # rounds to x1 == x2
        raw["gnd"][1]["bbx"] = bbx
        write_gnd(tmp_path / "gnd_box.pkl", raw)
        with pytest.raises(DataError, match=r"gnd_box\.pkl: gnd\[1\]\['bbx'\] .* is empty"):
            load_revisited(tmp_path)
    raw["gnd"][1]["bbx"] = [-3.0, -2.0, *good[2:]]  # partly outside the image: cropped to it, as before
    write_gnd(tmp_path / "gnd_box.pkl", raw)
    assert load_revisited(tmp_path).gnd[1]["bbx"] == [-3.0, -2.0, *good[2:]]


def test_ground_truth_lists_stored_as_numpy_arrays_load(
    dataset: tuple[Path, RenderedPlaces], tmp_path: Path
) -> None:
    """Pickles written from numpy keep names and entries in 1-D arrays; any iterable loaded before."""
    raw = foreign_copy(dataset[0], tmp_path)
    arrays = {key: np.array(raw[key], dtype=object) for key in ("imlist", "qimlist", "gnd")}
    write_gnd(tmp_path / "gnd_arrays.pkl", {**raw, **arrays})
    loaded = load_revisited(tmp_path)
    assert loaded.imlist == list(raw["imlist"]) and loaded.qimlist == list(raw["qimlist"])
    assert len(loaded.gnd) == len(raw["gnd"])
