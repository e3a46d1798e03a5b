import json
import os
import stat
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import nncf_ext
from nncf_ext.errors import CheckpointError, ExportError
from nncf_ext.export.archive import MAGIC, pack_fixed, unpack_fixed
from nncf_ext.hooks import effective_weight, weight_hooks
from nncf_ext.storage import stored_bits
from tests.conftest import TinyNet
from tests.export.test_openvino import CASES, compressed


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_bit_exact(case: str, tmp_path: Path, example_input: torch.Tensor) -> None:
    model, pipeline = compressed(CASES[case][0], example_input)
    info = nncf_ext.save_archive(model, tmp_path / "m.dca")
    state = nncf_ext.load_archive(tmp_path / "m.dca")
    hooked = weight_hooks(model)
    expected = {k: v for k, v in model.state_dict().items() if "__nncf_hooks" not in k}
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        target = effective_weight(model, name, value) if name in hooked else value
        assert torch.equal(state[name], target), name
    # the archive is what the statistics predicted (quantizer states included), plus its header, buffers and
    # byte alignment
    stats = pipeline.statistics()
    buffers = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "__nncf_hooks" not in n)
    streams = sum(2 if layer.format == "csr" else 1 for layer in stats.layers)
    payload = info.nbytes - info.header_bytes - buffers
    assert stats.huffman_bytes <= payload <= stats.huffman_bytes + 3 * streams  # byte alignment only


def test_archive_loads_into_the_plain_architecture(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed(CASES["kmeans4"][0], example_input)
    nncf_ext.save_archive(model, tmp_path / "m.dca")
    plain = TinyNet()
    plain.load_state_dict(nncf_ext.load_archive(tmp_path / "m.dca"))
    model.eval(), plain.eval()
    assert torch.equal(plain(example_input), model(example_input))


class Wide(torch.nn.Module):
    def __init__(self, inputs: int = 1024, outputs: int = 256) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(inputs, outputs, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_archive_of_a_sparse_clustered_layer_is_small(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Wide()
    config = {
        "compression": [
            {"algorithm": "threshold_pruning", "threshold": 0.025},
            {"algorithm": "kmeans_quantization", "bits": 5},
        ]
    }
    nncf_ext.create_compression(model, config, torch.randn(1, 1024))
    info = nncf_ext.save_archive(model, tmp_path / "m.dca")
    dense = 1024 * 256 * 4
    assert dense / info.nbytes > 20  # ~16% non-zeros at 5 bits + relative indices, Huffman coded


def test_foreign_and_corrupt_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x.dca").write_bytes(b"not an archive")
    with pytest.raises(CheckpointError, match="not an nncf-ext archive"):
        nncf_ext.load_archive(tmp_path / "x.dca")
    (tmp_path / "y.dca").write_bytes(MAGIC + (5).to_bytes(8, "little") + b"xxxxx")
    with pytest.raises(CheckpointError, match="corrupt"):
        nncf_ext.load_archive(tmp_path / "y.dca")


def test_fixed_width_packing_round_trip() -> None:
    import numpy as np

    symbols = np.random.default_rng(0).integers(0, 32, size=1001)
    assert np.array_equal(unpack_fixed(pack_fixed(symbols, 5), 5, 1001), symbols)
    assert len(pack_fixed(symbols, 5)) == (1001 * 5 + 7) // 8


PRUNE = {"algorithm": "threshold_pruning", "threshold": 0.1}


def _stored_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What an archive of ``model`` must load: effective weights and every other state entry."""
    hooked = weight_hooks(model)
    return {
        k: effective_weight(model, k, v) if k in hooked else v
        for k, v in model.state_dict().items()
        if "__nncf_hooks" not in k
    }


def test_a_fully_pruned_layer_is_stored_in_no_bits(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, pipeline = compressed([PRUNE], example_input)
    with torch.no_grad():
        model.fc.weight.zero_()
    info = nncf_ext.save_archive(model, tmp_path / "m.dca")
    state = nncf_ext.load_archive(tmp_path / "m.dca")
    assert info.layers["fc.weight"]["layout"]["entries"] == 0
    assert torch.equal(state["fc.weight"], torch.zeros(4, 8))
    fc = next(layer for layer in pipeline.statistics().layers if layer.name == "fc.weight")
    assert fc.huffman_bytes == 0 and fc.compressed_bytes == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_raw_weights_keep_their_dtype_and_predicted_size(
    dtype: torch.dtype, tmp_path: Path, example_input: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = TinyNet().to(dtype)
    pipeline = nncf_ext.create_compression(model, {"compression": [PRUNE]}, example_input.to(dtype))
    info = nncf_ext.save_archive(model, tmp_path / "m.dca")
    state = nncf_ext.load_archive(tmp_path / "m.dca")
    expected = _stored_tensors(model)
    for name, value in expected.items():
        assert state[name].dtype == value.dtype and torch.equal(state[name], value), name
    # the weights take exactly the bytes the statistics counted at the model's own precision (float16 where
    # that holds a tensor exactly, as BatchNorm's initial statistics)
    stats = pipeline.statistics()
    hooked = weight_hooks(model)
    raw = sum(stored_bits(v) // 8 for k, v in expected.items() if k not in hooked)
    layers = sum(layer.huffman_bytes for layer in stats.layers)
    streams = sum(2 if layer.format == "csr" else 1 for layer in stats.layers)
    assert layers <= info.nbytes - info.header_bytes - raw <= layers + 3 * streams


def test_a_bfloat16_buffer_is_stored(tmp_path: Path, example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    model.register_buffer("calib", torch.tensor([1.5, -2.25, 3e-3], dtype=torch.bfloat16))
    nncf_ext.create_compression(
        model, {"compression": {"algorithm": "kmeans_quantization", "bits": 4}}, example_input
    )
    nncf_ext.save_archive(model, tmp_path / "m.dca")
    state = nncf_ext.load_archive(tmp_path / "m.dca")
    assert state["calib"].dtype == torch.bfloat16 and torch.equal(state["calib"], model.calib)


def test_archive_gets_the_mode_the_umask_allows(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed([PRUNE], example_input)
    old = os.umask(0o027)
    try:
        nncf_ext.save_archive(model, tmp_path / "m.dca")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.dca").stat().st_mode) == 0o640


def sparse_clustered_wide() -> Wide:
    """A 256 -> 64 layer pruned and clustered to 5 bits: stored as CSR with Huffman-coded values."""
    torch.manual_seed(0)
    model = Wide(256, 64)
    entries = [
        {"algorithm": "threshold_pruning", "threshold": 0.025},
        {"algorithm": "kmeans_quantization", "bits": 5},
    ]
    nncf_ext.create_compression(model, {"compression": entries}, torch.randn(1, 256))
    return model


def test_truncated_or_extended_archive_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    model = sparse_clustered_wide()
    info = nncf_ext.save_archive(model, tmp_path / "m.dca")
    assert info.layers["fc.weight"]["layout"]["format"] == "csr"
    data = (tmp_path / "m.dca").read_bytes()
    # the last bytes are Huffman-coded values: a decoder reading past them sees zeros, not an error
    for cut in (3, len(data) // 2):
        (tmp_path / "t.dca").write_bytes(data[:-cut])
        with pytest.raises(CheckpointError, match=r"t\.dca: tensor 'fc\.weight': .*outside the payload"):
            nncf_ext.load_archive(tmp_path / "t.dca")
    (tmp_path / "t.dca").write_bytes(data + b"\0")
    with pytest.raises(CheckpointError, match=r"t\.dca: 1 bytes after"):
        nncf_ext.load_archive(tmp_path / "t.dca")


def _edit_header(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Write ``source`` to ``target`` with its JSON header changed by ``edit``."""
    data = source.read_bytes()
    start = len(MAGIC) + 8
    length = int.from_bytes(data[len(MAGIC) : start], "little")
    header = json.loads(zlib.decompress(data[start : start + length]))
    edit(header)
    new = zlib.compress(json.dumps(header).encode())
    target.write_bytes(MAGIC + len(new).to_bytes(8, "little") + new + data[start + length :])


def test_a_blob_of_the_wrong_size_is_refused(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed([PRUNE], example_input)
    nncf_ext.save_archive(model, tmp_path / "m.dca")

    def shrink_fc_bias(header: dict[str, Any]) -> None:  # the header disagrees with the blob it points to
        next(t for t in header["tensors"] if t["name"] == "fc.bias")["raw"]["shape"] = [2]

    _edit_header(tmp_path / "m.dca", tmp_path / "t.dca", shrink_fc_bias)
    with pytest.raises(CheckpointError, match=r"t\.dca: tensor 'fc\.bias': a blob of 16 bytes where 8"):
        nncf_ext.load_archive(tmp_path / "t.dca")


def test_a_format_1_archive_still_loads() -> None:
    """Written by nncf-ext before format 2 (raw fp16 weight streams were stored as float32)."""
    torch.manual_seed(0)
    model = TinyNet().half()
    example = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1)).half()
    nncf_ext.create_compression(model, {"compression": [PRUNE]}, example)
    state = nncf_ext.load_archive(Path(__file__).parent / "data" / "format1_fp16_pruned.dca")
    expected = _stored_tensors(model)
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        assert state[name].dtype == value.dtype and torch.equal(state[name], value), name


def test_an_archive_of_an_unknown_format_is_refused(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed([PRUNE], example_input)
    nncf_ext.save_archive(model, tmp_path / "m.dca")

    def next_format(header: dict[str, Any]) -> None:
        assert header["format"] == 5
        header["format"] = 6

    _edit_header(tmp_path / "m.dca", tmp_path / "t.dca", next_format)
    with pytest.raises(
        CheckpointError, match=r"t\.dca: archive format 6; this nncf-ext reads formats 1 to 5"
    ):
        nncf_ext.load_archive(tmp_path / "t.dca")


def test_every_single_bit_flip_in_the_payload_is_refused(tmp_path: Path) -> None:
    """Before format 4 about half of them loaded silently, as other weights."""
    model = sparse_clustered_wide()
    nncf_ext.save_archive(model, tmp_path / "m.dca")
    data = (tmp_path / "m.dca").read_bytes()
    start = len(MAGIC) + 8
    payload_at = start + int.from_bytes(data[len(MAGIC) : start], "little")
    assert nncf_ext.load_archive(tmp_path / "m.dca").keys() == {"fc.weight"}
    rng = torch.Generator().manual_seed(0)
    positions = torch.randint(payload_at, len(data), (60,), generator=rng).tolist()
    for at, bit in zip(positions, torch.randint(0, 8, (60,), generator=rng).tolist(), strict=True):
        damaged = bytearray(data)
        damaged[at] ^= 1 << bit
        (tmp_path / "t.dca").write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match=r"t\.dca: "):
            nncf_ext.load_archive(tmp_path / "t.dca")


def test_a_format_3_archive_without_a_checksum_still_loads(tmp_path: Path) -> None:
    model = sparse_clustered_wide()
    nncf_ext.save_archive(model, tmp_path / "m.dca")

    def format_3(header: dict[str, Any]) -> None:
        del header["crc32"]
        header["format"] = 3

    _edit_header(tmp_path / "m.dca", tmp_path / "t.dca", format_3)
    state = nncf_ext.load_archive(tmp_path / "t.dca")
    expected = _stored_tensors(model)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], v) for k, v in expected.items())

    def wrong_checksum(header: dict[str, Any]) -> None:
        header["crc32"] ^= 1

    _edit_header(tmp_path / "m.dca", tmp_path / "c.dca", wrong_checksum)
    with pytest.raises(CheckpointError, match=r"c\.dca: the payload does not match its checksum"):
        nncf_ext.load_archive(tmp_path / "c.dca")


class Tied(torch.nn.Module):
    """An embedding tied to the output layer, as in language models."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x).mean(1))


def test_a_tied_weight_is_stored_once_and_loads_compressed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = Tied(), torch.randint(0, 16, (2, 5))
    config = {"compression": [{"algorithm": "kmeans_quantization", "bits": 2, "preserve_sparsity": False}]}
    nncf_ext.create_compression(model, config, x)
    assert list(weight_hooks(model)) == ["emb.weight"]
    info = nncf_ext.save_archive(model, tmp_path / "m.dca")
    state = nncf_ext.load_archive(tmp_path / "m.dca")
    assert state["head.weight"] is state["emb.weight"] and state["emb.weight"].unique().numel() == 4
    plain = Tied()
    plain.load_state_dict(state)  # the alias no longer overwrites the compressed weight with the float one
    model.eval()
    assert torch.equal(plain(x), model(x))
    assert info.nbytes < info.header_bytes + 16 * 8  # not even one float copy of the 16 x 8 table

    def lose_target(header: dict[str, Any]) -> None:
        header["tensors"] = [t for t in header["tensors"] if t["name"] != "emb.weight"]

    _edit_header(tmp_path / "m.dca", tmp_path / "t.dca", lose_target)
    with pytest.raises(
        CheckpointError, match=r"'head\.weight' is an alias of 'emb\.weight', which is not stored"
    ):
        nncf_ext.load_archive(tmp_path / "t.dca")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_integer_and_codebook_weights_of_any_dtype_round_trip_exactly(
    dtype: torch.dtype, tmp_path: Path, example_input: torch.Tensor
) -> None:
    """int levels are kept only where they give back the model's values (float32 arithmetic); codebooks are
    stored in the weight's dtype (a float64 codebook is not rounded to float32)."""
    for entry in (
        {"algorithm": "uniform_quantization", "weights": {"bits": 8, "init": "minmax"}},
        {"algorithm": "kmeans_quantization", "bits": 4},
    ):
        torch.manual_seed(0)
        model = TinyNet().to(dtype)
        nncf_ext.create_compression(model, {"compression": [entry]}, example_input.to(dtype))
        if dtype == torch.float64 and entry["algorithm"] == "kmeans_quantization":
            with torch.no_grad():  # centroids with float64 digits
                for hook in (h for hooks in weight_hooks(model).values() for h in hooks):
                    hook.codebook.data = hook.codebook.double() + 1e-12
        nncf_ext.save_archive(model, tmp_path / "m.dca")
        state = nncf_ext.load_archive(tmp_path / "m.dca")
        for name, value in _stored_tensors(model).items():
            assert state[name].dtype == value.dtype and torch.equal(state[name], value), (entry, name)


def test_a_quantizer_before_a_codebook_stores_the_codebook(example_input: torch.Tensor) -> None:
    """Codebook values lie off the quantizer's grid: integer codes would change them, in the IR too."""
    from nncf_ext.model import get_weight
    from nncf_ext.storage import weight_storage

    model, _ = compressed(
        [
            {"algorithm": "uniform_quantization", "weights": {"bits": 8}},
            {"algorithm": "kmeans_quantization", "bits": 4},
        ],
        example_input,
    )
    for name, hooks in weight_hooks(model).items():
        for prefer in ("int", "compact"):
            effective, storage = weight_storage(hooks, get_weight(model, name), prefer=prefer)
            assert storage.kind == "codebook", (name, prefer)
            assert storage.codebook is not None and storage.codes is not None
            assert torch.equal(storage.codebook[storage.codes].reshape(effective.shape), effective)


def test_bad_paths_and_headers_are_named(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed(CASES["int8-sym"][0], example_input)
    (tmp_path / "d.dca").mkdir()
    with pytest.raises(ExportError, match=r"d\.dca: it is a directory"):
        nncf_ext.save_archive(model, tmp_path / "d.dca")
    with pytest.raises(CheckpointError, match=r"cannot read the archive .*missing\.dca"):
        nncf_ext.load_archive(tmp_path / "missing.dca")
    nncf_ext.save_archive(model, tmp_path / "m.dca")

    def not_a_list(header: dict[str, Any]) -> None:
        header["tensors"] = 5

    _edit_header(tmp_path / "m.dca", tmp_path / "t.dca", not_a_list)
    with pytest.raises(CheckpointError, match="'tensors' is not a list"):
        nncf_ext.load_archive(tmp_path / "t.dca")

    def pruning_mask_as_quantizer(header: dict[str, Any]) -> None:
        quantizer = next(t for t in header["tensors"] if "values" in t)["values"]["quantizer"]
        quantizer["module_path"] = "nncf_ext.algorithms.threshold_pruning.modules"
        quantizer["module_cls_name"] = "ThresholdPruningMask"
        quantizer["module_config"] = {"shape": [4, 8]}

    _edit_header(tmp_path / "m.dca", tmp_path / "t.dca", pruning_mask_as_quantizer)
    with pytest.raises(CheckpointError, match="'ThresholdPruningMask' is not a quantizer"):
        nncf_ext.load_archive(tmp_path / "t.dca")


def test_a_corrupt_code_table_or_a_negative_offset_is_refused(tmp_path: Path) -> None:
    model = sparse_clustered_wide()
    nncf_ext.save_archive(model, tmp_path / "m.dca")
    data = bytearray((tmp_path / "m.dca").read_bytes())
    start = len(MAGIC) + 8
    length = int.from_bytes(data[len(MAGIC) : start], "little")
    header = json.loads(zlib.decompress(data[start : start + length]))
    values = header["tensors"][0]["streams"][1]
    assert values["coding"] == "huffman"
    # the first 5-bit code length (MSB first) set to 31: decoding would build tables of 2^31 entries
    lengths_at = start + length + values["lengths"]["offset"]
    data[lengths_at] |= 0b11111000
    (tmp_path / "t.dca").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="codes longer than"):
        nncf_ext.load_archive(tmp_path / "t.dca")

    def negative_offset(header: dict[str, Any]) -> None:  # would read bytes from the end of the payload
        header["tensors"][0]["values"]["codebook"]["offset"] = -128

    _edit_header(tmp_path / "m.dca", tmp_path / "n.dca", negative_offset)
    with pytest.raises(CheckpointError, match="outside the payload"):
        nncf_ext.load_archive(tmp_path / "n.dca")
