"""nncf_ext.files: atomic writes beside the target."""

from pathlib import Path

import pytest

from nncf_ext import files


def test_a_taken_temporary_name_is_skipped_and_a_failed_body_leaves_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb", "cccccccc"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(names))
    target = tmp_path / "model.pt"
    (tmp_path / ".model.pt.aaaaaaaa.tmp").write_text("someone else's")  # taken: O_EXCL refuses it
    target.write_text("previous")
    with pytest.raises(RuntimeError), files.atomic_file(target) as tmp:
        assert tmp.name == ".model.pt.bbbbbbbb.tmp"
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.pt.aaaaaaaa.tmp", "model.pt"]
    with files.atomic_file(target) as tmp:
        tmp.write_text("new")
    assert (
        target.read_text() == "new" and (tmp_path / ".model.pt.aaaaaaaa.tmp").read_text() == "someone else's"
    )
