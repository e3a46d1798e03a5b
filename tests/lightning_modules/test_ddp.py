import json
import os
import subprocess
import sys
from pathlib import Path


def test_two_process_ddp_keeps_ranks_identical(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "NNCF_CI": "1"}
    result = subprocess.run(
        [sys.executable, "tests/lightning_modules/ddp_script.py", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for epoch in range(3):
        rank0 = json.loads((tmp_path / f"rank0_epoch{epoch}.json").read_text())
        rank1 = json.loads((tmp_path / f"rank1_epoch{epoch}.json").read_text())
        assert rank0.keys() == rank1.keys()
        hooks = [k for k in rank0 if "__nncf_hooks" in k]
        assert any(k.endswith(".mask") for k in hooks) and any(k.endswith(".index") for k in hooks)
        assert any(k.endswith(".codebook") for k in hooks) and any(k.endswith(".scale") for k in hooks)
        diverged = [k for k in rank0 if rank0[k] != rank1[k]]
        assert not diverged, f"epoch {epoch}: ranks differ in {diverged}"
    # training really happened: the weights changed between epochs
    first = json.loads((tmp_path / "rank0_epoch0.json").read_text())
    last = json.loads((tmp_path / "rank0_epoch2.json").read_text())
    assert first["classifier.1.weight"] != last["classifier.1.weight"]
