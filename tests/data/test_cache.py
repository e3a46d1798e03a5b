"""The data cache: where it lives, and how a generated copy is put in place."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_modules.data.cache import data_root, publishing


def complete(path: Path) -> bool:
    return (path / "done").is_file()


def test_data_root_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NNCF_EXT_DATA", "")  # empty: the default, not the working directory itself
    assert data_root() == tmp_path / "data"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNCF_EXT_DATA", "~/cache")
    assert data_root() == tmp_path / "home" / "cache"


def test_a_failed_generation_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "set"
    with pytest.raises(RuntimeError, match="renderer died"), publishing(target, complete) as tmp:
        (tmp / "half.png").write_text("")
        raise RuntimeError("renderer died")
    assert list(tmp_path.iterdir()) == []


def test_a_copy_published_meanwhile_is_kept_and_a_stale_one_replaced(tmp_path: Path) -> None:
    target = tmp_path / "set"
    with publishing(target, complete) as tmp:
        (tmp / "done").write_text("mine")
        target.mkdir()  # another process finished first; a reader may have it open
        (target / "done").write_text("theirs")
    assert (target / "done").read_text() == "theirs" and list(tmp_path.iterdir()) == [target]
    (target / "done").unlink()  # now stale (incomplete)
    with publishing(target, complete) as tmp:
        (tmp / "done").write_text("mine")
    assert (target / "done").read_text() == "mine" and list(tmp_path.iterdir()) == [target]
    assert target.stat().st_mode & 0o777 == 0o755  # readable by the other users of a shared cache
