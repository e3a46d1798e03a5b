"""``nncf-ext compress --init-from`` with a base of another task."""

from __future__ import annotations

from pathlib import Path

import pytest

from nncf_ext.cli import main
from tests.test_cli import toy_base


def test_init_from_a_base_of_another_task_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A toy ``compressed.pt`` cannot start a retrieval model: named, before any data or output."""
    base, config = toy_base(tmp_path)
    out = tmp_path / "out"
    args = ["compress", "--task", "retrieval", "--config", str(config), "--output-dir", str(out)]
    assert main([*args, "--init-from", str(base), "--data", str(tmp_path / "nowhere")]) == 2
    assert "--init-from holds a 'toy' model, not a 'retrieval' one" in capsys.readouterr().err
    assert not out.exists()


def test_compress_gives_the_datamodule_the_base_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data follow the network's settings (the retrieval task resizes to the base's ``image_size``)."""
    from dataclasses import replace

    from lightning_modules import tasks

    seen: list[dict[str, object]] = []
    toy = tasks.TASKS["toy"]

    def spy(data: str | None, batch_size: int | None, seed: int, hparams: dict[str, object]) -> object:
        seen.append(dict(hparams))
        return toy.datamodule(data, batch_size, seed, hparams)

    monkeypatch.setitem(tasks.TASKS, "toy", replace(toy, datamodule=spy))
    base, config = toy_base(tmp_path, width=8)
    args = ["compress", "--task", "toy", "--config", str(config), "--epochs", "1", "--init-from", str(base)]
    assert main([*args, "--output-dir", str(tmp_path / "out")]) == 0
    assert len(seen) == 1 and seen[0]["width"] == 8
