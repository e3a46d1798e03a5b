"""``nncf-ext benchmark --threads`` end to end, and the atomic write of ``compressed.pt``."""

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import torch

import nncf_ext
from nncf_ext.cli import build_parser, main
from tests.conftest import TinyNet, current_umask
from tests.test_cli import toy_base

# -- benchmark --threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [None, 3])
def test_benchmark_threads_reach_the_benchmark_and_its_json(
    threads: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nncf_ext.export.benchmark as benchmark

    base, _ = toy_base(tmp_path)
    seen: dict[str, Any] = {}

    def fake_benchmark(model: object, example: object, out_dir: object, **kwargs: Any) -> list[Any]:
        seen.update(kwargs)
        Path(str(out_dir)).mkdir(parents=True)  # where the real one exports its IRs
        return [benchmark.Timing("torch eager fp32", 1, 2.0, 3.0, 500.0, None, 4)]

    monkeypatch.setattr(benchmark, "benchmark_model", fake_benchmark)
    option = [] if threads is None else ["--threads", str(threads)]
    assert main(["benchmark", str(base), "--output-dir", str(tmp_path / "b"), *option]) == 0
    assert seen["threads"] == threads
    written = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert written["threads"] == threads and written["timings"][0]["median_ms"] == 2.0


@pytest.mark.parametrize("value", ["0", "1.5", "two"])
def test_benchmark_refuses_a_thread_count_that_is_not_positive(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["benchmark", "m.pt", "--threads", value])
    assert info.value.code == 2 and "argument --threads" in capsys.readouterr().err
    assert build_parser().parse_args(["benchmark", "m.pt", "--threads", "1"]).threads == 1


def test_benchmark_model_sets_the_threads_of_torch_and_openvino(
    tmp_path: Path, example_input: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's thread count is recorded, not changed, so that the rest of the run keeps its own; the
    exports are replaced by a tiny hand-built IR (converting a torch model takes seconds)."""
    import openvino as ov
    import openvino.opset13 as opset

    import nncf_ext.export.benchmark as benchmark
    from nncf_ext.export.openvino import ExportResult

    x = opset.parameter([-1, 3, 12, 12], ov.Type.f32)
    xml = tmp_path / "mean.xml"
    ov.save_model(ov.Model([opset.reduce_mean(x, [2, 3], keep_dims=False)], [x]), xml)

    def fake_export(model: object, example: object, path: str | Path, **kwargs: object) -> ExportResult:
        return ExportResult(xml, xml.with_suffix(".bin"), 0)

    torch_threads: list[int] = []
    ov_threads: list[int] = []
    compile_ir = benchmark.compile_ir

    def spy(xml: str | Path, device: str, threads: int | None) -> Any:
        compiled = compile_ir(xml, device, threads)
        ov_threads.append(compiled.get_property("INFERENCE_NUM_THREADS"))
        return compiled

    monkeypatch.setattr(benchmark, "export_openvino", fake_export)
    monkeypatch.setattr(benchmark, "compile_ir", spy)
    monkeypatch.setattr(torch, "set_num_threads", torch_threads.append)
    torch.manual_seed(0)
    timings = benchmark.benchmark_model(
        TinyNet(), example_input, tmp_path, batch_sizes=(1, 2), warmup=0, repeats=1, threads=1
    )
    assert len(timings) == 6 and torch_threads == [1] and ov_threads == [1] * 4


# -- compressed.pt ---------------------------------------------------------------------------------------


def toy_module() -> tuple[Any, nncf_ext.CompressionConfig]:
    from lightning_modules.tasks import get_task, network

    module = get_task("toy").module()
    config = nncf_ext.load_config({"compression": {"algorithm": "threshold_pruning", "threshold": 0.02}})
    nncf_ext.create_compression(network(module), config, module.example_input_array)
    return module, config


def test_save_compressed_leaves_only_the_target_with_the_umask_mode(tmp_path: Path) -> None:
    """mkstemp made the file 0600; the artifact is an ordinary file, readable as the umask allows."""
    from lightning_modules.tasks import load_compressed, save_compressed

    module, config = toy_module()
    old = os.umask(0o027)  # not the usual 022: a hard-coded 0644 would pass that
    try:
        path = save_compressed(tmp_path / "out" / "compressed.pt", "toy", module, config)
        assert current_umask() == 0o027  # left as it was
    finally:
        os.umask(old)
    assert path == tmp_path / "out" / "compressed.pt"
    assert [p.name for p in path.parent.iterdir()] == ["compressed.pt"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert load_compressed(path)[0] == "toy"


@pytest.mark.parametrize("fails", ["torch.save", "os.replace"])
def test_a_failed_save_leaves_no_temporary_file_and_the_previous_target(
    fails: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning_modules.tasks import save_compressed

    module, config = toy_module()
    target = tmp_path / "compressed.pt"
    target.write_bytes(b"previous")
    written: list[Path] = []

    def disk_full(payload: object, path: str | Path) -> None:
        written.append(Path(path))
        Path(path).write_bytes(b"half a checkpo")  # what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def no_rename(src: str | Path, dst: str | Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))

    if fails == "torch.save":
        monkeypatch.setattr(torch, "save", disk_full)
    else:
        monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match=r"No space left|Permission denied"):
        save_compressed(target, "toy", module, config)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["compressed.pt"]
    assert target.read_bytes() == b"previous"
    os.remove(target)  # and with no previous file: nothing at all
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_compressed(target, "toy", module, config)
    assert list(tmp_path.iterdir()) == []
    # beside the target, so that the rename stays on one file system (atomic)
    assert written[-1].parent == tmp_path and written[-1].name.startswith(".compressed.pt.")
