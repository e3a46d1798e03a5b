import json

import pytest
import torch
from torch import nn

import nncf_ext
from nncf_ext.storage import best_layout, csr_entries, relative_gaps, split_gaps


class OneLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def sparse_model() -> OneLinear:
    model = OneLinear()
    with torch.no_grad():
        model.fc.weight.fill_(0.001)
        flat = model.fc.weight.view(-1)
        flat[[0, 1, 5, 20]] = torch.tensor([0.5, -0.5, 0.25, 1.0])
    return model


def test_relative_index_storage_by_hand() -> None:
    w = torch.zeros(32)
    w[[0, 1, 5, 20]] = 1.0
    gaps = relative_gaps(w)
    assert gaps.tolist() == [1, 1, 4, 15]
    # ceil(g / 2^b) entries per gap
    assert csr_entries(gaps, 2) == 1 + 1 + 1 + 4
    assert csr_entries(gaps, 3) == 1 + 1 + 1 + 2
    assert csr_entries(gaps, 4) == 4
    codes, real = split_gaps(gaps, 2)
    assert codes.tolist() == [0, 0, 3, 3, 3, 3, 2] and real.tolist() == [
        True,
        True,
        True,
        False,
        False,
        False,
        True,
    ]
    layout = best_layout(w, 32)
    assert (layout.format, layout.index_bits, layout.entries, layout.bits) == ("csr", 4, 4, 4 * 36)
    assert best_layout(w, 32, index_bits=2).bits == 7 * 34
    assert best_layout(torch.ones(32), 32).format == "dense"


def test_statistics_equal_hand_computed_sizes() -> None:
    model = sparse_model()
    config = {"compression": {"algorithm": "threshold_pruning", "threshold": 0.01}}
    nncf_ext.create_compression(model, config, torch.randn(1, 4))
    stat = nncf_ext.compression_statistic(model)
    (layer,) = stat.layers
    assert (layer.name, layer.params, layer.nonzeros, layer.bits) == ("fc.weight", 32, 4, 32)
    assert layer.sparsity == 28 / 32
    assert layer.dense_bytes == 128
    assert layer.nonzero_bytes == 4 * 32 / 8
    assert (layer.format, layer.index_bits, layer.compressed_bytes) == ("csr", 4, 4 * 36 / 8)
    assert stat.other_params == 8 and stat.other_bytes == 32
    assert stat.params == 40
    assert stat.dense_bytes == 160 and stat.compressed_bytes == 18 + 32
    assert stat.ratio == 160 / 50
    fixed = nncf_ext.compression_statistic(model, index_bits=2)
    assert fixed.layers[0].compressed_bytes == 7 * 34 / 8

    table = str(stat)
    assert "fc.weight" in table and "Total" in table and "csr/4b" in table
    as_dict = json.loads(json.dumps(stat.to_dict()))
    assert as_dict["layers"][0]["nonzeros"] == 4 and as_dict["ratio"] == stat.ratio


def test_uncompressed_model_has_ratio_one() -> None:
    model = OneLinear()
    stat = nncf_ext.compression_statistic(model)
    assert stat.layers == [] and stat.params == 40 and stat.ratio == 1.0


def test_clustered_layer_storage_and_huffman_match_real_encoding() -> None:
    import numpy as np

    from nncf_ext.algorithms.kmeans_quantization import KMeansQuantizer
    from nncf_ext.hooks import effective_weight, hooks_of_type
    from nncf_ext.huffman import encode
    from nncf_ext.storage import split_gaps

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128))
    model = nn.ModuleDict({"body": model})
    wrapper = type("W", (nn.Module,), {"forward": lambda self, x: self.net["body"](x)})()
    wrapper.net = model
    config = {
        "compression": [
            {"algorithm": "threshold_pruning", "threshold": 0.05},
            {"algorithm": "kmeans_quantization", "bits": 4},
        ]
    }
    nncf_ext.create_compression(wrapper, config, torch.randn(1, 64))
    stat = nncf_ext.compression_statistic(wrapper)
    (layer,) = stat.layers
    name = "net.body.0.weight"
    hook = hooks_of_type(wrapper, KMeansQuantizer)[name]
    weight = effective_weight(wrapper, name, model["body"][0].weight)
    assert layer.bits == 4 and layer.codebook_entries == 16 and layer.format == "csr"
    assert layer.compressed_bytes == (layer.entries * (4 + layer.index_bits) + 16 * 32) / 8
    # Huffman: encode the real streams and compare byte for byte with the statistic
    gaps = relative_gaps(weight)
    gap_codes, is_real = split_gaps(gaps, layer.index_bits)
    values = torch.zeros(gap_codes.numel(), dtype=torch.long)
    values[is_real] = hook.index.long().reshape(-1)[weight.reshape(-1) != 0]
    encoded_gaps = encode(gap_codes.numpy(), 1 << layer.index_bits)
    encoded_values = encode(values.numpy(), 16)
    from nncf_ext.huffman import BLOCK, OFFSET_BITS, table_bits

    blocks = -(-gap_codes.numel() // BLOCK)  # both streams have one symbol per entry
    gap_bits = encoded_gaps.payload_bits + table_bits(1 << layer.index_bits) + blocks * OFFSET_BITS
    value_bits = encoded_values.payload_bits + table_bits(16) + blocks * OFFSET_BITS
    # each stream is Huffman coded only where that beats its fixed width
    expected_bits = min(gap_bits, layer.entries * layer.index_bits) + min(value_bits, layer.entries * 4)
    assert layer.huffman_bytes == (expected_bits + 16 * 32) / 8
    assert layer.entropy_bytes <= layer.huffman_bytes
    assert np.isfinite(stat.huffman_ratio) and stat.huffman_ratio > stat.ratio * 0.99


def test_table_of_a_fully_pruned_layer(example_input: torch.Tensor) -> None:
    from tests.conftest import TinyNet

    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():
        model.fc.weight.zero_()
    entry = {"algorithm": "threshold_pruning", "threshold": 0.01}
    pipeline = nncf_ext.create_compression(model, {"compression": [entry]}, example_input)
    table = str(pipeline.statistics())
    row = next(line for line in table.splitlines() if " fc.weight " in line)
    assert "100.0%" in row and row.split()[-2] == "-"
    # and its JSON is JSON: no ratio (it was Infinity, which json.dumps writes and strict parsers refuse)
    import json

    text = json.dumps(pipeline.statistics().to_dict(), allow_nan=False)
    (fc,) = [layer for layer in json.loads(text)["layers"] if layer["name"] == "fc.weight"]
    assert fc["compressed_bytes"] == 0 and fc["ratio"] is None


def test_other_parameters_show_their_own_bits() -> None:
    # the "(other parameters)" row printed 32 bits for an fp16 model (its bytes were right)
    model = sparse_model().half()
    config = {"compression": {"algorithm": "threshold_pruning", "threshold": 0.01}}
    nncf_ext.create_compression(model, config, torch.randn(1, 4).half())
    stat = nncf_ext.compression_statistic(model)
    row = next(line for line in str(stat).splitlines() if "(other parameters)" in line)
    assert row.split("│")[5].strip() == "16"
    assert stat.other_params == 8 and stat.other_bytes == 16 and stat.other_bits == 16
    assert json.loads(json.dumps(stat.to_dict()))["other_bits"] == 16

    class Mixed(nn.Module):  # an fp32 layer and an fp16 one: the mean bits per element
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4).half()

    mixed = nncf_ext.compression_statistic(Mixed())
    assert mixed.other_bits == 24 and mixed.to_dict()["other_bits"] == 24
    row = next(line for line in str(mixed).splitlines() if "(other parameters)" in line)
    assert row.split("│")[5].strip() == "24"
    assert nncf_ext.compression_statistic(nn.Sequential()).to_dict()["other_bits"] == 0


@pytest.mark.parametrize(
    ("shift", "entry_bits"),
    [(0.0, 16), (1e-4, 32)],  # centroids that float16 holds exactly are stored in it (as an archive does)
)
def test_codebooks_count_in_every_size_and_totals_use_each_dtype(shift: float, entry_bits: int) -> None:
    model = sparse_model()
    with torch.no_grad():
        flat = model.fc.weight.view(-1)
        flat[[0, 1, 5, 20]] += shift
    config = {
        "compression": [
            {"algorithm": "threshold_pruning", "threshold": 0.01},
            {"algorithm": "kmeans_quantization", "bits": 2},
        ]
    }
    nncf_ext.create_compression(model, config, torch.randn(1, 4))
    stat = nncf_ext.compression_statistic(model)
    (layer,) = stat.layers
    book = 4 * entry_bits  # zero + 3 centroids
    assert layer.codebook_entries == 4 and layer.metadata_bits == book
    assert layer.nonzero_bytes == (4 * 2 + book) / 8
    # CSR: 4 entries of a 4-bit gap and a 2-bit code, plus the codebook
    assert layer.compressed_bytes == (4 * (4 + 2) + book) / 8
    # Huffman streams: gaps and codes (at least 1 bit per entry each), plus the codebook
    assert layer.entropy_bytes >= book / 8 and layer.huffman_bytes >= (4 * 2 + book) / 8
    assert layer.huffman_bytes <= layer.compressed_bytes
    # totals: the other parameters (the bias) count as stored, and sparsity only over compressed weights
    assert stat.nonzeros == 4 + 8 and stat.sparsity == 28 / 32
    half = sparse_model().half()
    nncf_ext.create_compression(half, config, torch.randn(1, 4).half())
    stat16 = nncf_ext.compression_statistic(half)
    assert stat16.layers[0].dense_bytes == 32 * 2 and stat16.dense_bytes == 32 * 2 + 8 * 2


def test_predicted_ir_bytes_of_int_weights_by_hand() -> None:
    """8 x 4 weights per channel: 4- or 8-bit containers, an fp32 scale per channel, and for asymmetric
    ranges an fp32 zero point per channel."""
    for mode, bits, expected in (
        ("symmetric", 4, 32 * 4 // 8 + 8 * 4),
        ("asymmetric", 4, 32 * 4 // 8 + 8 * 4 + 8 * 4),
        ("asymmetric", 6, 32 + 8 * 4 + 8 * 4),  # 6 bits ride in 8-bit containers
    ):
        model = OneLinear()
        weights = {"bits": bits, "mode": mode, "per_channel": True}
        nncf_ext.create_compression(
            model,
            {"compression": {"algorithm": "uniform_quantization", "weights": weights}},
            torch.randn(1, 4),
        )
        assert nncf_ext.compression_statistic(model).layers[0].ir_bytes == expected, (mode, bits)


def test_bad_arguments_are_named_not_raw() -> None:
    """A state dict gave AttributeError ('forward'); index_bits -1 numpy's negative shift count, 2.5 a
    NotImplementedError; codebook_bits 0 gave bogus ratios."""
    import pytest

    from nncf_ext.errors import ModelError
    from tests.conftest import TinyNet

    model = TinyNet()
    with pytest.raises(
        ModelError, match=r"compression_statistic expects a torch\.nn\.Module, got OrderedDict"
    ):
        nncf_ext.compression_statistic(model.state_dict())  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=r"save_archive expects a torch\.nn\.Module, got OrderedDict"):
        nncf_ext.save_archive(model.state_dict(), "unused.dca")  # type: ignore[arg-type]
    for kwargs, match in [
        ({"index_bits": -1}, r"index_bits must be an integer in \[1, 32\], got -1"),
        ({"index_bits": 2.5}, "got 2.5"),
        ({"codebook_bits": 0}, r"codebook_bits must be an integer in \[1, 64\], got 0"),
    ]:
        with pytest.raises(ModelError, match=match):
            nncf_ext.compression_statistic(model, **kwargs)  # type: ignore[arg-type]
