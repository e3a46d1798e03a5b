"""The data cache: where it lives, and how a generated copy is put in place."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from lightning_modules.data.cache import _locked, data_root, publishing


def complete(path: Path) -> bool:
    return (path / "done").is_file()


def entries(folder: Path) -> list[str]:
    """What a folder holds besides the lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


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
    assert entries(tmp_path) == []


def test_a_copy_published_meanwhile_is_kept_and_a_stale_one_replaced(tmp_path: Path) -> None:
    target = tmp_path / "set"
    with publishing(target, complete) as tmp:
        (tmp / "done").write_text("mine")
        target.mkdir()  # another process finished first; a reader may have it open
        (target / "done").write_text("theirs")
    assert (target / "done").read_text() == "theirs" and entries(tmp_path) == ["set"]
    (target / "done").unlink()  # now stale (incomplete)
    old = os.umask(0o027)  # not the usual 022: a hard-coded 0755 would pass that
    try:
        with publishing(target, complete) as tmp:
            (tmp / "done").write_text("mine")
    finally:
        os.umask(old)
    assert (target / "done").read_text() == "mine" and entries(tmp_path) == ["set"]
    assert target.stat().st_mode & 0o777 == 0o750  # as any folder made under that umask


def test_a_file_in_the_way_is_replaced_and_failures_after_generating_clean_up(tmp_path: Path) -> None:
    target = tmp_path / "set"
    target.write_text("not a data set")
    with publishing(target, complete) as tmp:
        (tmp / "done").write_text("mine")
    assert (target / "done").read_text() == "mine" and entries(tmp_path) == ["set"]

    def broken(path: Path) -> bool:
        raise OSError("the shared cache went read-only")

    with pytest.raises(OSError, match="read-only"), publishing(tmp_path / "other", broken) as tmp:
        (tmp / "done").write_text("mine")
    assert entries(tmp_path) == ["set"]  # no temporary copy left


def test_the_check_and_the_swap_wait_for_another_publisher(tmp_path: Path) -> None:
    """Without the lock, a copy published between another process's check and its swap was deleted."""
    target = tmp_path / "set"
    with _locked(target):  # another process is between its check and its swap
        other = multiprocessing.get_context("fork").Process(target=_publish, args=(target,))
        other.start()
        other.join(1.0)
        assert other.exitcode is None and entries(tmp_path) != ["set"]  # it waits, nothing published yet
    other.join(20)
    assert other.exitcode == 0 and (target / "done").read_text() == "theirs"


def _publish(target: Path) -> None:
    with publishing(target, complete) as tmp:
        (tmp / "done").write_text("theirs")
