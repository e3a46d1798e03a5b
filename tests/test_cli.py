import json
from pathlib import Path

import pytest

from nncf_ext.cli import build_parser, main


def test_demo_prints_statistics_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--task", "toy", "--epochs", "2", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Total" in out and "classifier.1.weight" in out
    result = json.loads((tmp_path / "demo_result.json").read_text())
    assert result["statistics"]["sparsity"] > 0.2
    assert len(result["history"]) == 2


def test_bad_config_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"compression": {"algorithm": "pruning"}}')
    assert (
        main(["demo", "--task", "toy", "--epochs", "1", "--config", str(bad), "--output-dir", str(tmp_path)])
        == 2
    )
    assert "compression.algorithm" in capsys.readouterr().err


def test_toy_task_refuses_a_data_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(Path(__file__).parents[1] / "examples" / "configs" / "deep_compression.json")
    out = tmp_path / "out"
    args = ["compress", "--task", "toy", "--config", config, "--output-dir", str(out), "--data", "/nowhere"]
    assert main(args) == 2
    assert "--data" in capsys.readouterr().err
    assert not out.exists()  # refused before anything is written


def compress(tmp_path: Path, *extra: str) -> Path:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "compression": [
                    {"algorithm": "threshold_pruning", "threshold": 0.02},
                    {"algorithm": "kmeans_quantization", "bits": 4},
                ]
            }
        )
    )
    out = tmp_path / "out"
    args = ["compress", "--task", "toy", "--config", str(config), "--epochs", "1", "--output-dir", str(out)]
    assert main([*args, *extra]) == 0
    return out


def test_compress_then_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = compress(tmp_path)
    assert (out / "compressed.pt").exists() and (out / "last.ckpt").exists()
    saved = json.loads((out / "statistics.json").read_text())
    assert saved["sparsity"] > 0.1 and saved["layers"][0]["bits"] == 4
    capsys.readouterr()
    assert main(["stats", str(out / "compressed.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == saved  # the artifact rebuilds the same model
    assert main(["stats", str(out / "compressed.pt")]) == 0
    assert "Total" in capsys.readouterr().out


def test_stats_refuses_unsafe_and_foreign_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("executed",))

    torch.save({"format": "nncf-ext/compressed-model/1", "x": Evil()}, tmp_path / "evil.pt")
    assert main(["stats", str(tmp_path / "evil.pt")]) == 2
    captured = capsys.readouterr()
    assert "cannot load" in captured.err and "executed" not in captured.out
    assert "holds objects other than tensors" in captured.err and "weights_only" not in captured.err

    out = compress(tmp_path)
    payload = torch.load(out / "compressed.pt", weights_only=True)
    payload["nncf_config"]["compression_state"][0]["module_path"] = "os"
    payload["nncf_config"]["compression_state"][0]["module_cls_name"] = "system"
    torch.save(payload, tmp_path / "foreign.pt")
    assert main(["stats", str(tmp_path / "foreign.pt")]) == 2
    assert "untrusted" in capsys.readouterr().err

    assert main(["stats", str(tmp_path / "missing.pt")]) == 2


def test_compress_resumes(tmp_path: Path) -> None:
    out = compress(tmp_path)
    config = tmp_path / "config.json"
    args = ["compress", "--task", "toy", "--config", str(config), "--epochs", "2", "--output-dir", str(out)]
    assert main([*args, "--resume", str(out / "last.ckpt")]) == 0
    import torch

    assert torch.load(out / "last.ckpt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["compress", "--task", "toy", "--config", "c.json", "--epochs", "-1"],  # Lightning: -1 trains forever
        ["compress", "--task", "toy", "--config", "c.json", "--devices", "0"],
        ["demo", "--task", "toy", "--epochs", "0"],  # was taken as "the default, 6"
        ["benchmark", "m.pt", "--repeats", "0"],  # failed after both IRs were exported
        ["benchmark", "m.pt", "--threads", "-2"],
        ["benchmark", "m.pt", "--batch-sizes", "8", "0"],
        ["benchmark", "m.pt", "--warmup", "x"],
    ],
)
def test_bad_counts_are_refused_by_the_parser(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    option = next(a for a in argv if a.startswith("--") and a not in ("--task", "--config"))
    assert f"argument {option}" in capsys.readouterr().err


def test_every_subcommand_documents_its_options() -> None:
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"demo", "compress", "stats", "export", "benchmark"} <= set(choices)
    for name, sub in choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.dest}"


def test_export_and_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = compress(tmp_path)
    capsys.readouterr()
    xml = tmp_path / "ir" / "model.xml"
    assert (
        main(
            ["export", str(out / "compressed.pt"), "--output", str(xml), "--archive", str(tmp_path / "m.dca")]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["weights"].values()) == {"u4"} and summary["parity"]["ok"]
    assert xml.exists() and (tmp_path / "m.dca").exists()
    half = tmp_path / "ir" / "half.xml"
    assert main(["export", str(out / "compressed.pt"), "--output", str(half), "--fp16"]) == 0
    assert json.loads(capsys.readouterr().out)["parity"]["ok"]
    assert half.with_suffix(".bin").stat().st_size < xml.with_suffix(".bin").stat().st_size
    rounded = ["--output", str(half), "--archive", str(tmp_path / "r.dca"), "--round-fp16"]
    assert main(["export", str(out / "compressed.pt"), *rounded]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parity"]["ok"] and summary["archive"]["nbytes"] < (tmp_path / "m.dca").stat().st_size
    assert (
        main(
            [
                "benchmark",
                str(out / "compressed.pt"),
                "--output-dir",
                str(tmp_path / "bench"),
                "--repeats",
                "3",
                "--warmup",
                "1",
                "--batch-sizes",
                "1",
                "4",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    variants = {(t["variant"], t["batch"]) for t in result["timings"]}
    assert {("torch eager fp32", 1), ("openvino fp32 IR", 4), ("openvino compressed IR", 4)} <= variants
    sizes = {t["variant"]: t["size_bytes"] for t in result["timings"]}
    assert sizes["openvino compressed IR"] < 0.2 * sizes["openvino fp32 IR"]


def test_retrieval_task_compresses_and_rebuilds_its_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_modules.data.places_synth import SynthConfig, generate_places

    tiny = SynthConfig(num_places=6, easy_views=2, hard_views=1, junk_views=1, distractors=6, image_size=48)
    for name, seed in (("train", 1), ("test", 2)):
        generate_places(tmp_path / name, name, seed, tiny)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"compression": [{"algorithm": "kmeans_quantization", "bits": 3}]}))
    out = tmp_path / "out"
    data = f"{tmp_path / 'train'},{tmp_path / 'test'}"
    args = ["compress", "--task", "retrieval", "--config", str(config), "--epochs", "1", "--data", data]
    assert main([*args, "--output-dir", str(out)]) == 0
    capsys.readouterr()
    assert main(["stats", str(out / "compressed.pt"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {layer["name"] for layer in stats["layers"]} >= {"whitening.weight", "netvlad.conv.weight"}
    assert all(layer["bits"] == 3 for layer in stats["layers"])
    assert main(["export", str(out / "compressed.pt"), "--output", str(out / "model.xml")]) == 0
    assert (out / "model.bin").exists()
    bad = [*args[:-2], "--data", str(tmp_path / "train"), "--output-dir", str(tmp_path / "bad")]
    assert main(bad) == 2
    assert "TRAIN_DIR,TEST_DIR" in capsys.readouterr().err


def toy_base(tmp_path: Path, **hparams: object) -> tuple[Path, Path]:
    """A compressed toy base (``compressed.pt``) with non-default settings, and a config to compress it."""
    import nncf_ext
    from lightning_modules.tasks import get_task, network, save_compressed

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"compression": {"algorithm": "threshold_pruning", "threshold": 0.02}}))
    base = get_task("toy").module(**hparams)
    parsed = nncf_ext.load_config(config)
    nncf_ext.create_compression(network(base), parsed, base.example_input_array)
    return save_compressed(tmp_path / "base.pt", "toy", base, parsed), config


def test_init_from_builds_the_network_from_the_base_settings(tmp_path: Path) -> None:
    import torch

    base, config = toy_base(tmp_path, width=8)  # the toy task's default width is 16: a raw RuntimeError
    out = tmp_path / "out"
    args = ["compress", "--task", "toy", "--config", str(config), "--epochs", "1", "--output-dir", str(out)]
    assert main([*args, "--init-from", str(base)]) == 0
    payload = torch.load(out / "compressed.pt", weights_only=True)
    assert payload["hparams"]["width"] == 8 and payload["state_dict"]["features.0.weight"].shape[0] == 8


def test_a_file_whose_weights_do_not_fit_its_settings_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    base, _ = toy_base(tmp_path, width=8)
    payload = torch.load(base, weights_only=True)
    payload["hparams"]["width"] = 16  # edited by hand: the stored weights are 8 wide
    torch.save(payload, base)
    assert main(["stats", str(base)]) == 2  # was a raw RuntimeError from load_state_dict
    err = capsys.readouterr().err
    assert str(base) in err and "do not fit" in err and "features.0.weight" in err
    payload["hparams"]["depth"] = 3  # a setting the toy network does not take
    torch.save(payload, base)
    assert main(["stats", str(base)]) == 2
    assert "do not build a 'toy' model" in capsys.readouterr().err


def test_output_files_are_checked_when_parsed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not after a 17-minute training: a directory, or a folder that cannot be made, is a usage error."""
    import argparse
    import importlib.util

    from nncf_ext.cli import output_file

    with pytest.raises(argparse.ArgumentTypeError, match="is a directory"):
        output_file(str(tmp_path))
    (tmp_path / "afile").write_text("")
    with pytest.raises(argparse.ArgumentTypeError, match="cannot create the folder"):
        output_file(str(tmp_path / "afile" / "out.json"))
    assert output_file(str(tmp_path / "new" / "out.json")) == tmp_path / "new" / "out.json"
    assert (tmp_path / "new").is_dir()
    spec = importlib.util.spec_from_file_location("pose_example", "examples/pose.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for argv in (
        ["--output", str(tmp_path)],
        ["--epochs", "-1"],
        ["--checkpoint", str(tmp_path / "afile" / "m.pt")],
    ):
        with pytest.raises(SystemExit) as exit_info:
            example.main([*argv, "--data", str(tmp_path / "no_data")])
        assert exit_info.value.code == 2  # argparse's usage error, before any data is read
    assert "is a directory" in capsys.readouterr().err


def test_export_passes_the_parity_options_and_a_loaded_module_is_in_eval_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nncf_ext.export
    from lightning_modules.tasks import load_compressed

    base, _ = toy_base(tmp_path)
    assert not load_compressed(base)[1].training  # BatchNorm in inference mode for stats / export
    seen: dict[str, object] = {}

    def fake_export(model: object, example: object, path: object, **kwargs: object) -> object:
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(nncf_ext.export, "export_openvino", fake_export)
    with pytest.raises(SystemExit):
        main(["export", str(base), "--output", str(tmp_path / "m.xml"), "--no-check", "--tolerance", "0.02"])
    assert seen["check"] is False and seen["tolerance"] == 0.02


def test_stats_of_an_archive_points_to_load_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An archive gave torch's weights-only message, which advises loading the file unsafely."""
    import nncf_ext
    from tests.conftest import TinyNet

    archive = nncf_ext.save_archive(TinyNet(), tmp_path / "model.dca").path
    assert main(["stats", str(archive)]) == 2
    err = capsys.readouterr().err
    assert "is a Deep Compression archive" in err and "nncf_ext.load_archive" in err
    assert "weights_only" not in err and "will likely succeed" not in err


def test_stats_of_a_directory_or_a_corrupt_file_says_what_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory crashed with UnboundLocalError; garbage was called "objects other than tensors"."""
    assert main(["stats", str(tmp_path)]) == 2
    assert "IsADirectoryError" in capsys.readouterr().err
    for name, content in [("garbage.pt", b"xK\x00 not a checkpoint"), ("empty.pt", b"")]:
        (tmp_path / name).write_bytes(content)
        assert main(["stats", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert "not a torch file, or a damaged one" in err and "weights_only" not in err


def test_stats_calls_a_file_calling_os_system_unsafe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch refuses os.system with another message than print's ("module posix is blocked"): it was called a
    damaged file."""
    import os

    import torch

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("echo executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    assert main(["stats", str(tmp_path / "evil.pt")]) == 2
    assert "holds objects other than tensors" in capsys.readouterr().err
