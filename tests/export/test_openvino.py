import os
import subprocess
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from torch import nn

import nncf_ext
from nncf_ext.errors import ExportError, ModelError, ParityError
from nncf_ext.export import OpenVINOModel
from tests.conftest import TinyNet

PRUNE = {"algorithm": "threshold_pruning", "threshold": 0.1}
CASES = {
    "kmeans4": ([PRUNE, {"algorithm": "kmeans_quantization", "bits": 4}], {"u4"}),
    "kmeans8": ([{"algorithm": "kmeans_quantization", "bits": 8, "preserve_sparsity": False}], {"u8"}),
    "int8-sym": ([{"algorithm": "uniform_quantization", "weights": {"bits": 8}}], {"i8"}),
    "int4-sym": ([PRUNE, {"algorithm": "uniform_quantization", "weights": {"bits": 4}}], {"i4"}),
    "int5-asym": (
        [{"algorithm": "uniform_quantization", "weights": {"bits": 5, "mode": "asymmetric"}}],
        {"u8"},
    ),
    "int8-acts": (
        [{"algorithm": "uniform_quantization", "weights": {"bits": 8}, "activations": {"bits": 8}}],
        {"i8"},
    ),
    # cluster-preserving quantization: centroids snapped to a per-tensor int8 grid -> int8 IR
    "cqat": (
        [
            PRUNE,
            {"algorithm": "kmeans_quantization", "bits": 4},
            {
                "algorithm": "uniform_quantization",
                "weights": {"bits": 8, "per_channel": False},
                "activations": {},
            },
        ],
        {"i8"},
    ),
    "pruned-only": ([PRUNE], set()),
}


def compressed(entries: list, example_input: torch.Tensor) -> tuple[TinyNet, nncf_ext.CompressionPipeline]:
    torch.manual_seed(0)
    model = TinyNet()
    pipeline = nncf_ext.create_compression(model, {"compression": entries}, example_input)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(3):  # trained codebooks / ranges, not just initial ones
        optimizer.zero_grad()
        model(example_input).pow(2).sum().backward()
        optimizer.step()
        pipeline.step()
    return model, pipeline


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_types_parity_and_size(case: str, tmp_path: Path, example_input: torch.Tensor) -> None:
    entries, element_types = CASES[case]
    model, pipeline = compressed(entries, example_input)
    result = nncf_ext.export_openvino(model, example_input, tmp_path / "model.xml")
    assert set(result.weights.values()) == element_types
    assert len(result.weights) == (3 if element_types else 0)
    ov_model = ov.Core().read_model(result.xml_path)
    types = {
        op.get_output_element_type(0).get_type_name()
        for op in ov_model.get_ops()
        if op.get_type_name() == "Constant"
    }
    assert element_types <= types
    assert result.parity is not None and result.parity.ok and result.parity.max_rel < 1e-5
    predicted = pipeline.statistics().ir_bytes
    # OpenVINO adds shape constants and FakeQuantize ranges, and folds BatchNorm into fewer constants
    assert abs(result.bin_bytes - predicted) <= 256 + 0.01 * predicted
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_codebook_ir_is_a_quarter_of_fp32(tmp_path: Path) -> None:
    class Wide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(512, 512)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    x = torch.randn(2, 512)
    fp32 = nncf_ext.export_openvino(Wide(), x, tmp_path / "fp32.xml").bin_bytes
    model = Wide()
    nncf_ext.create_compression(model, {"compression": {"algorithm": "kmeans_quantization", "bits": 8}}, x)
    clustered = nncf_ext.export_openvino(model, x, tmp_path / "kmeans8.xml").bin_bytes
    assert clustered / fp32 <= 0.27


def test_exported_ir_serves_task_metrics_through_the_torch_interface(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    model, _ = compressed(CASES["kmeans4"][0], example_input)
    nncf_ext.export_openvino(model, example_input, tmp_path / "m.xml")
    ir = OpenVINOModel(tmp_path / "m.xml", config={"INFERENCE_PRECISION_HINT": "f32"})
    batch = torch.randn(5, 3, 12, 12)
    model.eval()
    torch.testing.assert_close(ir(batch), model(batch), atol=1e-5, rtol=1e-4)


def test_benchmark_app_runs_the_ir(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed(CASES["kmeans4"][0], example_input)
    nncf_ext.export_openvino(model, example_input, tmp_path / "m.xml")
    app = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "benchmark_app"
    app = app if app.exists() else Path(".venv/bin/benchmark_app")
    result = subprocess.run(
        [str(app), "-m", str(tmp_path / "m.xml"), "-niter", "5", "-nireq", "1", "-shape", "[2,3,12,12]", "-hint", "none"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Throughput" in result.stdout


# -- bad input -------------------------------------------------------------------------------------------


def test_parity_failure_writes_nothing(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed(CASES["kmeans4"][0], example_input)
    with pytest.raises(ParityError, match="relative error"):  # bf16 inference cannot meet 1e-6
        nncf_ext.export_openvino(model, example_input, tmp_path / "m.xml", precision="bf16", tolerance=1e-6)
    assert list(tmp_path.iterdir()) == []


def test_unknown_hook_is_refused(tmp_path: Path, example_input: torch.Tensor) -> None:
    from nncf.torch.function_hook import register_post_function_hook

    from nncf_ext.hooks import WeightHook

    class Doubler(WeightHook):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    model, _ = compressed([PRUNE], example_input)
    register_post_function_hook(model, "fc.weight", 0, Doubler())
    with pytest.raises(ExportError, match=r"does not know the hook .*Doubler"):
        nncf_ext.export_openvino(model, example_input, tmp_path / "m.xml")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_path_and_rejected_input(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed([PRUNE], example_input)
    with pytest.raises(ExportError, match="not writable"):
        nncf_ext.export_openvino(model, example_input, "/proc/self/m.xml")  # even root cannot write there
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="cannot create the directory"):
        nncf_ext.export_openvino(model, example_input, tmp_path / "file" / "m.xml")
    with pytest.raises(ModelError, match="rejects the example input"):
        nncf_ext.export_openvino(model, torch.randn(1, 7, 12, 12), tmp_path / "m.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
@pytest.mark.parametrize("case", ["kmeans4", "int8-sym"])
def test_float16_and_float64_models_export_compressed(
    case: str, dtype: torch.dtype, tmp_path: Path, example_input: torch.Tensor
) -> None:
    """The decompression subgraph (f32) is converted to the model's element type."""
    torch.manual_seed(0)
    model = TinyNet().to(dtype)
    nncf_ext.create_compression(model, {"compression": CASES[case][0]}, example_input.to(dtype))
    result = nncf_ext.export_openvino(model, example_input.to(dtype), tmp_path / "m.xml")
    assert set(result.weights.values()) == CASES[case][1]
    assert result.parity is not None and result.parity.ok


def test_bfloat16_models_are_refused_and_dotted_names_kept(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    model, _ = compressed([PRUNE], example_input)
    with pytest.raises(ExportError, match=r"bfloat16 model or input cannot be exported.*model\.float\(\)"):
        nncf_ext.export_openvino(model.to(torch.bfloat16), example_input.bfloat16(), tmp_path / "m.xml")
    assert list(tmp_path.iterdir()) == []
    model.float()
    for name in ("resnet.int8", "resnet.fp32"):  # two names, two IRs: the last dotted part is not a suffix
        result = nncf_ext.export_openvino(model, example_input, tmp_path / name)
        assert result.xml_path.name == f"{name}.xml" and result.bin_path.name == f"{name}.bin"
    assert len(list(tmp_path.iterdir())) == 4


def test_uncompressed_model_exports_too(tmp_path: Path, example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    result = nncf_ext.export_openvino(model, example_input, tmp_path / "plain.xml")
    assert result.weights == {} and result.parity is not None and result.parity.ok
    assert np.isclose(result.bin_bytes, sum(p.numel() * 4 for p in model.parameters()) + 16 * 4, rtol=0.05)


def test_per_channel_activation_quantizer_exports_with_its_channel_ranges(tmp_path: Path) -> None:
    from nncf.torch.function_hook import register_pre_function_hook, wrap_model

    from nncf_ext.quantizers import make_quantizer, set_range

    torch.manual_seed(0)
    model = wrap_model(TinyNet().eval())
    quantizer = make_quantizer(8, "symmetric", (1, 8, 1, 1), signed=True, is_weights=False)
    highs = torch.linspace(0.05, 2.0, 8)  # a per-tensor export (one range for all channels) fails parity
    set_range(quantizer, -highs, highs)
    register_pre_function_hook(model, op_name="features/3/conv2d/0", port_id=0, hook=quantizer)
    x = torch.randn(2, 3, 12, 12)
    result = nncf_ext.export_openvino(model, x, tmp_path / "model.xml")
    assert result.parity is not None and result.parity.max_rel < 1e-3
    fq = [
        op for op in ov.Core().read_model(result.xml_path).get_ops() if op.get_type_name() == "FakeQuantize"
    ]
    assert len(fq) == 1
    high = fq[0].input_value(2).get_node().get_data()
    assert high.size == 8 and len(np.unique(np.round(high, 4))) == 8


class Gained(nn.Module):
    """TinyNet whose features are scaled by a parameter used elementwise (as NetVLAD uses its centroids)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet()
        self.gain = nn.Parameter(torch.rand(8, 8, 8) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.fc((self.net.features(x) * self.gain).mean((2, 3)))


INT8 = {"algorithm": "uniform_quantization", "weights": {"bits": 8}}


def test_a_parameter_used_elementwise_is_compressed_only_by_its_exact_name(
    example_input: torch.Tensor,
) -> None:
    from nncf_ext.hooks import weight_hooks

    torch.manual_seed(0)
    model = Gained()
    nncf_ext.create_compression(model, {"compression": [INT8]}, example_input)
    assert "gain" not in weight_hooks(model) and len(weight_hooks(model)) == 3
    with pytest.raises(nncf_ext.ConfigError, match="patterns\\[0\\]"):
        by_pattern = {**INT8, "target_scope": {"patterns": ["gai"]}}
        nncf_ext.create_compression(Gained(), {"compression": [by_pattern]}, example_input)
    model = Gained()
    by_name = {**INT8, "target_scope": {"names": ["gain"]}}
    nncf_ext.create_compression(model, {"compression": [by_name]}, example_input)
    assert set(weight_hooks(model)) == {"gain"}


def test_a_parameter_used_elementwise_is_stored_as_integers(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = Gained()
    entries = [INT8, {**INT8, "weights": {"bits": 4}, "target_scope": {"names": ["gain"]}}]
    nncf_ext.create_compression(model, {"compression": entries}, example_input)
    result = nncf_ext.export_openvino(model, example_input, tmp_path / "model.xml")
    assert result.weights["gain"] == "i4"
    assert result.parity is not None and result.parity.max_rel < 1e-5
    codes = [
        op for op in ov.Core().read_model(result.xml_path).get_ops() if op.get_friendly_name() == "gain/codes"
    ]
    assert len(codes) == 1 and list(codes[0].get_output_shape(0)) == [1, 8, 8, 8]  # as OpenVINO unsqueezed it


def constant_types(xml_path: Path) -> dict[str, str]:
    """Element type of every Constant of the IR, by friendly name."""
    return {
        op.get_friendly_name(): op.get_output_element_type(0).get_type_name()
        for op in ov.Core().read_model(xml_path).get_ops()
        if op.get_type_name() == "Constant"
    }


def test_fp16_reaches_only_constants_that_no_fake_quantize_follows(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    model, _ = compressed(CASES["int8-acts"][0], example_input)
    result = nncf_ext.export_openvino(model, example_input, tmp_path / "model.xml", compress_to_fp16=True)
    assert result.parity is not None and result.parity.max_rel < 1e-3
    types = constant_types(result.xml_path)
    # the first convolution feeds the quantized input of the second; the classifier is last
    assert types["features.0.weight/scale"] == "f32"
    assert types["fc.weight/scale/fp16"] == "f16"
    assert not any(n.startswith("fc.") and t == "f32" for n, t in types.items())
    # codebooks follow the same rule: the first convolution's stays f32, the classifier's goes to f16
    entries = [
        {"algorithm": "kmeans_quantization", "bits": 4},
        {"algorithm": "uniform_quantization", "weights": {"bits": 8}, "activations": {},
         "target_scope": {"names": ["features.3.weight"]}},
    ]  # fmt: skip
    model, _ = compressed(entries, example_input)
    result = nncf_ext.export_openvino(model, example_input, tmp_path / "cb.xml", compress_to_fp16=True)
    assert result.parity is not None and result.parity.max_rel < 1e-3
    types = constant_types(result.xml_path)
    assert types["features.0.weight/codebook"] == "f32" and types["fc.weight/codebook"] == "f16"


def test_a_stripped_model_with_activation_quantizers_exports_again(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    """``benchmark_model`` exports the stripped model as its FP32 baseline: stripping twice must work."""
    from nncf_ext.export.strip import strip_for_export

    model, _ = compressed(CASES["int8-acts"][0], example_input)
    stripped, _ = strip_for_export(model, example_input)
    again, storages = strip_for_export(stripped, example_input)
    assert storages == {} and torch.equal(again(example_input), stripped(example_input))
    result = nncf_ext.export_openvino(stripped, example_input, tmp_path / "fp32.xml")
    assert result.parity is not None and result.parity.max_rel < 1e-5


def test_benchmark_fp32_baseline_has_no_fake_quantize(tmp_path: Path, example_input: torch.Tensor) -> None:
    """The FP32 rows time a float model: the compressed model's activation quantizers are not in it."""
    from nncf_ext.export.benchmark import _timing, benchmark_model

    model, _ = compressed(CASES["int8-acts"][0], example_input)
    timings = benchmark_model(model, example_input, tmp_path, batch_sizes=(1,), warmup=0, repeats=2)
    assert [t.variant for t in timings] == ["torch eager fp32", "openvino fp32 IR", "openvino compressed IR"]

    def fake_quantizes(xml: str) -> int:
        ops = ov.Core().read_model(str(tmp_path / xml)).get_ops()
        return sum(op.get_type_name() == "FakeQuantize" for op in ops)

    assert fake_quantizes("fp32.xml") == 0 < fake_quantizes("compressed.xml")
    # p90 is a nearest rank: with 2 or 5 calls it is the slowest, never the fastest
    assert _timing("x", 1, [3.0, 1.0], None).p90_ms == 3.0
    assert _timing("x", 8, [2.0], None).throughput == 4000.0  # samples per second: 8 every 2 ms
    assert _timing("x", 1, [1.0, 2.0, 3.0, 4.0, 5.0], None).p90_ms == 5.0
    assert _timing("x", 1, [float(i) for i in range(1, 21)], None).p90_ms == 18.0


def test_a_bin_in_the_way_writes_nothing(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed([PRUNE], example_input)
    (tmp_path / "m.bin").mkdir()
    with pytest.raises(ExportError, match=r"m\.bin is a directory"):
        nncf_ext.export_openvino(model, example_input, tmp_path / "m.xml")
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]


def test_a_failed_move_keeps_the_previous_ir(
    tmp_path: Path, example_input: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = compressed([PRUNE], example_input)
    (tmp_path / "m.xml").write_text("old xml")
    (tmp_path / "m.bin").write_text("old bin")
    replace = os.replace

    def failing_xml(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == "m.xml":
            raise PermissionError(13, "Permission denied", str(src), None, str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_xml)
    with pytest.raises(ExportError, match=r"cannot write .*m\.xml: Permission denied"):
        nncf_ext.export_openvino(model, example_input, tmp_path / "m.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
    assert (tmp_path / "m.xml").read_text() == "old xml" and (tmp_path / "m.bin").read_text() == "old bin"


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.fc(x)
        return {"logits": y, "features": 10 * y}  # not in sorted order


class DictIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + y


def test_dict_outputs_and_dict_inputs_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    out = nncf_ext.export_openvino(DictOut(), torch.randn(2, 4), tmp_path / "out.xml")
    assert out.parity is not None and out.parity.max_rel < 1e-5
    example = {"y": torch.randn(2, 3), "x": torch.randn(2, 4)}  # by name, not in signature order
    result = nncf_ext.export_openvino(DictIn(), example, tmp_path / "in.xml")
    assert result.parity is not None and result.parity.max_rel < 1e-5 and result.parity.inputs == 4


def test_parity_uses_the_given_inputs_and_tolerance_and_a_re_export_leaves_two_files(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    model, _ = compressed(CASES["int8-acts"][0], example_input)
    inputs = [example_input, example_input + 1.0, example_input * 2.0]
    result = nncf_ext.export_openvino(model, example_input, tmp_path / "m.xml", inputs=inputs)
    assert result.parity is not None and result.parity.inputs == 3
    nncf_ext.export_openvino(model, example_input, tmp_path / "m.xml")  # over the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
    with pytest.raises(ParityError):  # fp16 constants differ from torch by more than 1e-12
        nncf_ext.export_openvino(
            model, example_input, tmp_path / "t.xml", compress_to_fp16=True, tolerance=1e-12
        )


def test_a_model_exports_before_its_quantization_starts(tmp_path: Path, example_input: torch.Tensor) -> None:
    """Quantizers that are not enabled yet are left out of the IR, which matches the float model."""
    entries = [
        {"algorithm": "uniform_quantization", "weights": {"bits": 4}, "activations": {}, "start_epoch": 2}
    ]
    model, _ = compressed(entries, example_input)
    result = nncf_ext.export_openvino(model, example_input, tmp_path / "m.xml")
    assert result.parity is not None and result.parity.max_rel < 1e-5


def test_a_missing_ir_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no such IR"):
        OpenVINOModel(tmp_path / "missing.xml")


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"tolerance": float("nan")}, ExportError, "tolerance must be a finite number >= 0, got nan"),
        ({"tolerance": -1.0}, ExportError, "tolerance must be a finite number >= 0"),
        ({"device": "TPU"}, ExportError, r"device 'TPU' is not available .*\['CPU'"),
        (
            {"precision": "f7"},
            ExportError,
            r"precision must be one of \['f32', 'f16', 'bf16'\], an ov.Type or None, got 'f7'",
        ),
        ({"inputs": "tensor"}, ExportError, "inputs must be a non-empty list of model inputs, got Tensor"),
        ({"inputs": [torch.randn(1, 5, 12, 12)]}, ParityError, "parity input 0 cannot be run"),
        ({"example": torch.randn(1, 5, 12, 12)}, ModelError, "rejects the example input"),
        ({"example": torch.randn(0, 3, 12, 12)}, ParityError, "parity input 0: output 0 is empty"),
        ({"path": ""}, ExportError, "give the path of the .xml file to write, not ''"),
    ],
)
def test_bad_export_options_are_named_and_write_nothing(
    options: dict[str, object],
    error: type[Exception],
    match: str,
    tmp_path: Path,
    example_input: torch.Tensor,
) -> None:
    """Each came through raw (OpenVINO's RuntimeError, numpy's ValueError), or as a misleading parity failure
    (a NaN tolerance), and a rejected input left the output directories behind."""
    model, _ = compressed([PRUNE], example_input)
    example = options.pop("example", example_input)
    if options.get("inputs") == "tensor":
        options["inputs"] = example_input
    path = options.pop("path", tmp_path / "out" / "sub" / "m.xml")
    with pytest.raises(error, match=match):
        nncf_ext.export_openvino(model, example, path, **options)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_virtual_devices_numpy_tolerances_and_ov_types_are_accepted(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    """The option checks refused what OpenVINO takes: "AUTO:CPU", a numpy tolerance, ov.Type.f32."""
    model, _ = compressed([PRUNE], example_input)
    for i, options in enumerate(
        [{"device": "AUTO:CPU"}, {"tolerance": np.float32(1e-3)}, {"precision": ov.Type.f32}]
    ):
        result = nncf_ext.export_openvino(model, example_input, tmp_path / f"m{i}.xml", **options)  # type: ignore[arg-type]
        assert result.parity is not None and result.parity.ok


def test_directories_created_for_a_failed_probe_are_removed(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    """A directory made writable-checked and then refused is not left behind."""
    import tempfile as tempfile_module

    model, _ = compressed([PRUNE], example_input)

    def unwritable(*args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile_module, "TemporaryFile", unwritable)
        with pytest.raises(ExportError, match="not writable"):
            nncf_ext.export_openvino(model, example_input, tmp_path / "a" / "b" / "m.xml")
    assert list(tmp_path.iterdir()) == []


def test_directories_made_before_a_failed_mkdir_are_removed(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    """mkdir makes the upper directories, then fails on a name too long: those were left behind."""
    model, _ = compressed([PRUNE], example_input)
    with pytest.raises(ExportError, match="cannot create the directory"):
        nncf_ext.export_openvino(model, example_input, tmp_path / "new1" / "new2" / ("x" * 300) / "m.xml")
    assert list(tmp_path.iterdir()) == []
