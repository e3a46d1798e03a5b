import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

import nncf_ext
from nncf_ext.errors import CheckpointError, ModelError
from nncf_ext.export.archive import MAGIC
from nncf_ext.hooks import weight_hooks
from nncf_ext.storage import as_float16
from tests.conftest import TinyNet
from tests.export.test_archive import _edit_header, _stored_tensors
from tests.export.test_openvino import CASES, PRUNE, compressed


def _header(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    return dict(json.loads(zlib.decompress(data[len(MAGIC) + 8 : len(MAGIC) + 8 + length])))


def _stored_as(header: dict[str, Any], skip: str = "") -> list[str]:
    """Every raw float32 blob's ``stored`` dtype (float32 where it has none), but those under ``skip``."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("dtype") == "float32" and "offset" in node:
                found.append(node.get("stored", node["dtype"]))
            for key, value in node.items():
                if key != skip:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(header)
    return found


def test_as_float16_only_where_every_bit_survives() -> None:
    half = as_float16(torch.tensor([0.5, -0.0, 65504.0, 2.0**-24]))
    assert half is not None and half.view(torch.int16)[1] == -32768  # the sign of zero is kept
    assert as_float16(torch.tensor([0.5, float("nan")])) is None  # a NaN's bits need not survive
    assert as_float16(torch.tensor([0.1])) is None  # not a float16 value
    assert as_float16(torch.tensor([0.5, 1e-9])) is None  # below float16's smallest subnormal
    assert as_float16(torch.tensor([70000.0])) is None
    assert as_float16(torch.tensor([0.5], dtype=torch.float64)) is not None
    assert as_float16(torch.tensor([0.5], dtype=torch.bfloat16)) is None  # only float32 / float64
    assert as_float16(torch.tensor([1, 2])) is None


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_rounded_model_is_stored_in_float16_and_read_back_exactly(
    case: str, tmp_path: Path, example_input: torch.Tensor
) -> None:
    model, pipeline = compressed(CASES[case][0], example_input)
    before = nncf_ext.save_archive(model, tmp_path / "a.dca")
    assert "float32" in _stored_as(_header(tmp_path / "a.dca"))  # trained floats
    names = nncf_ext.round_to_float16(model)
    assert "features.1.running_var" in names and "fc.bias" in names
    after = nncf_ext.save_archive(model, tmp_path / "b.dca")
    # codebooks, ranges, BatchNorm, biases; but a codebook of quantized centroids (cluster-preserving QAT)
    # holds products of float16 scales and integers, which float16 need not hold
    stored = _stored_as(_header(tmp_path / "b.dca"), skip="codebook" if case == "cqat" else "")
    assert stored and all(s == "float16" for s in stored)
    assert after.nbytes < before.nbytes
    state = nncf_ext.load_archive(tmp_path / "b.dca")
    expected = _stored_tensors(model)
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        assert state[name].dtype == value.dtype and torch.equal(state[name], value), name
    # the statistics still predict the archive (float16 sizes included), plus header, buffers, alignment
    stats = pipeline.statistics()
    buffers = sum(
        b.numel() * (2 if b.is_floating_point() else b.element_size())
        for n, b in model.named_buffers()
        if "__nncf_hooks" not in n
    )
    streams = sum(2 if layer.format == "csr" else 1 for layer in stats.layers)
    payload = after.nbytes - after.header_bytes - buffers
    assert stats.huffman_bytes <= payload <= stats.huffman_bytes + 3 * streams


def test_the_model_computes_what_the_rounded_archive_gives_back(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    model, _ = compressed(CASES["kmeans4"][0], example_input)
    model.eval()
    unrounded = model(example_input)
    nncf_ext.round_to_float16(model)
    rounded = model(example_input)
    assert not torch.equal(rounded, unrounded)
    assert torch.allclose(rounded, unrounded, rtol=1e-2, atol=1e-3)
    nncf_ext.save_archive(model, tmp_path / "m.dca")
    plain = TinyNet().eval()
    plain.load_state_dict(nncf_ext.load_archive(tmp_path / "m.dca"))
    assert torch.equal(plain(example_input), rounded)


def test_raw_weight_values_are_stored_in_float16_after_rounding(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    model, _ = compressed([PRUNE], example_input)  # pruned only: the non-zeros are stored as floats
    nncf_ext.round_to_float16(model)
    info = nncf_ext.save_archive(model, tmp_path / "m.dca")
    assert info.layers["fc.weight"]["values"] == "float"
    header = _header(tmp_path / "m.dca")
    fc = next(t for t in header["tensors"] if t["name"] == "fc.weight")
    values = next(s for s in fc["streams"] if s["name"] == "values")
    assert values["stored"] == "float16" and values["data"]["nbytes"] == 2 * values["count"]
    state = nncf_ext.load_archive(tmp_path / "m.dca")
    for name, value in _stored_tensors(model).items():
        assert torch.equal(state[name], value), name


def test_rounding_leaves_what_float16_cannot_hold_and_rounds_tied_tensors_once() -> None:
    model = TinyNet()
    with torch.no_grad():
        model.fc.bias[0] = 1e6  # beyond float16: the tensor stays as it is
        model.features[1].running_var[0] = float("inf")  # not finite: no obstacle
    bias = model.fc.bias.detach().clone()
    model.register_buffer("steps", torch.tensor([3, 4]))
    model.alias = model.features[0]  # the same conv under two names
    names = nncf_ext.round_to_float16(model)
    assert "fc.bias" not in names and torch.equal(model.fc.bias, bias)
    assert "features.1.running_var" in names and "steps" not in names
    assert sum(n.endswith(".0.weight") or n == "alias.weight" for n in names) == 1
    weight = model.features[0].weight
    assert torch.equal(weight, weight.half().float())
    assert nncf_ext.round_to_float16(model) == names  # idempotent


def test_rounding_refuses_what_is_not_a_module() -> None:
    with pytest.raises(ModelError, match=r"round_to_float16 expects a torch\.nn\.Module, got dict"):
        nncf_ext.round_to_float16({})  # type: ignore[arg-type]


def test_a_format_4_archive_without_float16_blobs_still_loads(
    tmp_path: Path, example_input: torch.Tensor
) -> None:
    model, _ = compressed(CASES["kmeans4"][0], example_input)
    nncf_ext.save_archive(model, tmp_path / "m.dca")

    def format_4(header: dict[str, Any]) -> None:
        header["format"] = 4

    _edit_header(tmp_path / "m.dca", tmp_path / "t.dca", format_4)
    state = nncf_ext.load_archive(tmp_path / "t.dca")
    hooked = weight_hooks(model)
    assert hooked and all(torch.equal(state[k], v) for k, v in _stored_tensors(model).items())


@pytest.mark.parametrize(
    ("name", "stored", "message"),
    [
        ("fc.bias", "bfloat16", "a float32 tensor cannot be stored as 'bfloat16'"),
        ("features.1.num_batches_tracked", "float16", "a int64 tensor cannot be stored as 'float16'"),
    ],
)
def test_a_stored_dtype_the_reader_does_not_know_is_refused(
    name: str, stored: str, message: str, tmp_path: Path, example_input: torch.Tensor
) -> None:
    model, _ = compressed(CASES["kmeans4"][0], example_input)
    nncf_ext.round_to_float16(model)
    nncf_ext.save_archive(model, tmp_path / "m.dca")

    def edit(header: dict[str, Any]) -> None:
        entry = next(t for t in header["tensors"] if t["name"] == name)
        entry["raw"]["stored"] = stored

    _edit_header(tmp_path / "m.dca", tmp_path / "t.dca", edit)
    with pytest.raises(CheckpointError, match=rf"t\.dca: tensor '{name}': {message}"):
        nncf_ext.load_archive(tmp_path / "t.dca")
