"""The embedded place generator: deterministic, revisited format, easy / hard / junk views, cache reuse."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from lightning_modules.data import places_synth
from lightning_modules.data.places_synth import DATASETS, SynthConfig, ensure_places_synth, generate_places
from nncf_ext.errors import DataError

TINY = SynthConfig(
    num_places=4, easy_views=2, hard_views=2, junk_views=1, distractors=5, image_size=48, query_size=64
)


def test_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    generate_places(tmp_path / "a", "x", seed=3, config=TINY)
    generate_places(tmp_path / "b", "x", seed=3, config=TINY)
    generate_places(tmp_path / "c", "x", seed=4, config=TINY)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 * 5 + 5 + 4 + 1  # database views + distractors, queries, gnd pickle
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "jpg" / "img_00000.jpg").read_bytes() != (
        tmp_path / "c" / "jpg" / "img_00000.jpg"
    ).read_bytes()


def test_ground_truth_lists_every_view_once(tmp_path: Path) -> None:
    rendered = generate_places(tmp_path, "x", seed=0, config=TINY)
    with open(tmp_path / "gnd_x.pkl", "rb") as f:
        raw = pickle.load(f)
    assert len(raw["imlist"]) == 4 * 5 + 5 and len(raw["qimlist"]) == 4
    seen: list[int] = []
    for q, entry in enumerate(raw["gnd"]):
        assert (len(entry["easy"]), len(entry["hard"]), len(entry["junk"])) == (2, 2, 1)
        seen += entry["easy"] + entry["hard"] + entry["junk"]
        assert all(rendered.labels[i][0] == q for i in entry["easy"] + entry["hard"] + entry["junk"])
        x1, y1, x2, y2 = entry["bbx"]
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        assert (x2 - x1) * (y2 - y1) > 0.2 * 64 * 64  # the query's facade fills a good part of the image
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 20  # 5 distractors belong to no query
    # the database order is shuffled: the views of one place are not consecutive
    assert raw["gnd"][0]["easy"] + raw["gnd"][0]["hard"] != list(range(min(seen), min(seen) + 4))


def test_views_differ_but_stay_closer_to_their_place() -> None:
    """Easy views resemble their query more than other places' views do (pixels, a crude check)."""
    rendered = places_synth.render_places(
        0, SynthConfig(num_places=6, distractors=0, image_size=64, query_size=64)
    )
    gnd = rendered.gnd()
    images = np.stack(rendered.images).astype(np.float64)
    same, other = [], []
    for q, entry in enumerate(gnd):
        views = images[entry["easy"]]
        assert np.abs(views[0] - views[1]).mean() > 5  # different viewpoint / light / occluders
        rest = images[[i for i, (p, _) in enumerate(rendered.labels) if p != q]]
        same.append(np.abs(views[0] - views[1]).mean())
        other.append(np.abs(views[0] - rest).mean(axis=(1, 2, 3)).mean())
    assert np.mean(same) < np.mean(other)


def test_ensure_writes_disjoint_datasets_and_reuses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = ensure_places_synth(tmp_path, TINY)
    assert set(paths) == set(DATASETS)
    queries = [(paths[n] / "jpg" / "query_0000.jpg").read_bytes() for n in DATASETS]
    assert len(set(queries)) == len(DATASETS)  # every dataset has places of its own
    manifest = json.loads((paths["synth_oxford"] / "manifest.json").read_text())
    assert manifest["config"]["num_places"] == 4

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated although the cache matches")

    monkeypatch.setattr(places_synth, "generate_places", fail)
    assert ensure_places_synth(tmp_path, TINY) == paths
    monkeypatch.undo()
    bigger = SynthConfig(**{**TINY.__dict__, "num_places": 5})
    ensure_places_synth(tmp_path, bigger)  # a different config regenerates in place
    with open(paths["synth_oxford"] / "gnd_synth_oxford.pkl", "rb") as f:
        assert len(pickle.load(f)["qimlist"]) == 5
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith(".")]  # no temporary copies


def test_ensure_writes_only_the_datasets_asked_for(tmp_path: Path) -> None:
    paths = ensure_places_synth(tmp_path, TINY, {"fresh11": 11, "fresh12": 12})
    assert set(paths) == {"fresh11", "fresh12"} == {p.name for p in tmp_path.iterdir() if p.is_dir()}
    assert json.loads((paths["fresh12"] / "manifest.json").read_text())["seed"] == 12
    with open(paths["fresh11"] / "gnd_fresh11.pkl", "rb") as f:
        assert len(pickle.load(f)["qimlist"]) == TINY.num_places
    queries = {(paths[n] / "jpg" / "query_0000.jpg").read_bytes() for n in paths}
    assert len(queries) == 2  # other seeds, other places
    with pytest.raises(DataError, match="'synth_oxford' is an embedded set of seed 1, not 5"):
        ensure_places_synth(tmp_path, TINY, {"fresh13": 13, "synth_oxford": 5})
    assert not (tmp_path / "fresh13").exists() and not (tmp_path / "synth_oxford").exists()  # nothing written


def test_default_config_has_at_least_50_places() -> None:
    config = SynthConfig()
    assert config.num_places >= 50 and config.easy_views + config.hard_views >= 4 and config.distractors > 0


def test_out_of_frame_junk_views_show_under_a_quarter_of_the_facade(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[float] = []
    move = places_synth.out_of_frame

    def recorded(quad: np.ndarray, size: int, side: int, share: float) -> np.ndarray:
        moved = move(quad, size, side, share)
        shown.append(places_synth.visible_fraction(moved, size))
        return moved

    config = SynthConfig(
        num_places=30, easy_views=0, hard_views=0, junk_views=2, distractors=0, image_size=48
    )
    monkeypatch.setattr(places_synth, "out_of_frame", recorded)
    places_synth.render_places(5, config)
    assert len(shown) > 15  # about half of the 60 junk views; the others are far away and tiny
    assert min(shown) > 0.02 and max(shown) <= 0.25


def test_visible_fraction_of_a_quadrilateral() -> None:
    square = np.array([[-10, 0], [10, 0], [10, 20], [-10, 20]], np.float64)
    assert places_synth.visible_fraction(square, 48) == pytest.approx(0.5)
    assert places_synth.visible_fraction(square + np.array([20, 0]), 48) == pytest.approx(1.0)
    assert places_synth.visible_fraction(square - np.array([30, 0]), 48) == 0.0
