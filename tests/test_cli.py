import json
from pathlib import Path

import pytest

from nncf_ext.cli import build_parser, main


def test_demo_prints_statistics_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "2", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Total" in out and "classifier.1.weight" in out
    result = json.loads((tmp_path / "demo_result.json").read_text())
    assert result["statistics"]["sparsity"] > 0.2
    assert len(result["history"]) == 2


def test_bad_config_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"compression": {"algorithm": "pruning"}}')
    assert main(["demo", "--epochs", "1", "--config", str(bad), "--output-dir", str(tmp_path)]) == 2
    assert "compression.algorithm" in capsys.readouterr().err


def test_help_describes_every_option() -> None:
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices["demo"]._actions:  # type: ignore[union-attr]
        assert action.help, action.dest
