"""Cache paths found untested by a mutation audit: symlinks at the target, and the generator version."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from lightning_modules.data import places_synth
from lightning_modules.data.cache import publishing
from lightning_modules.data.places_synth import DATASETS, GENERATOR_VERSION, SynthConfig, ensure_places_synth


def complete(path: Path) -> bool:
    return (path / "done").is_file()


def entries(folder: Path) -> list[str]:
    """What a folder holds besides the lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_a_symlink_at_the_target_is_replaced_without_touching_what_it_points_at(tmp_path: Path) -> None:
    """A stale (incomplete) linked copy and a dangling link are swapped for the new copy; the folder the
    link pointed at keeps its files."""
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    cache.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.jpg").write_text("someone's data")
    target = cache / "set"
    target.symlink_to(elsewhere, target_is_directory=True)
    with publishing(target, complete) as tmp:
        (tmp / "done").write_text("mine")
    assert not target.is_symlink() and (target / "done").read_text() == "mine"
    assert (elsewhere / "keep.jpg").read_text() == "someone's data"
    assert entries(cache) == ["set"]  # the link moved aside was removed, not left as a stale entry

    target2 = cache / "dangling"
    target2.symlink_to(tmp_path / "gone", target_is_directory=True)
    with publishing(target2, complete) as tmp:
        (tmp / "done").write_text("mine")
    assert not target2.is_symlink() and (target2 / "done").read_text() == "mine"
    assert entries(cache) == ["dangling", "set"]


def test_a_symlink_to_a_complete_copy_is_kept(tmp_path: Path) -> None:
    """A complete copy reached through a link (a shared cache) is in use: it stays, the new one goes."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "done").write_text("theirs")
    target = tmp_path / "cache" / "set"
    target.parent.mkdir()
    target.symlink_to(shared, target_is_directory=True)
    with publishing(target, complete) as tmp:
        (tmp / "done").write_text("mine")
    assert target.is_symlink() and (target / "done").read_text() == "theirs"
    assert entries(target.parent) == ["set"]


TINY = SynthConfig(num_places=2, easy_views=1, hard_views=1, junk_views=0, distractors=1, image_size=32)


def test_a_cache_of_another_generator_version_is_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same seed and config but an older generator: the images would differ, so the copy is rebuilt."""
    for name, seed in DATASETS.items():
        old = tmp_path / name
        old.mkdir()
        (old / "old.jpg").write_text("")
        manifest = {"version": GENERATOR_VERSION - 1, "name": name, "seed": seed, "config": asdict(TINY)}
        (old / "manifest.json").write_text(json.dumps(manifest))
    generated: list[str] = []

    def fake_generate(out_dir: Path, name: str, seed: int, config: SynthConfig) -> None:
        generated.append(name)
        (Path(out_dir) / "new.jpg").write_text("")

    monkeypatch.setattr(places_synth, "generate_places", fake_generate)
    paths = ensure_places_synth(tmp_path, TINY)
    assert generated == list(DATASETS)
    for path in paths.values():
        assert entries(path) == ["manifest.json", "new.jpg"]
        assert json.loads((path / "manifest.json").read_text())["version"] == GENERATOR_VERSION
    ensure_places_synth(tmp_path, TINY)  # now current: reused
    assert generated == list(DATASETS)
