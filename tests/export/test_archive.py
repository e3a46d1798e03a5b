from pathlib import Path

import pytest
import torch

import nncf_ext
from nncf_ext.errors import CheckpointError
from nncf_ext.export.archive import MAGIC, pack_fixed, unpack_fixed
from nncf_ext.hooks import effective_weight, weight_hooks
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
    # the archive is what the statistics predicted, plus its header, buffers and byte alignment
    stats = pipeline.statistics()
    buffers = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "__nncf_hooks" not in n)
    streams = sum(2 if layer.format == "csr" else 1 for layer in stats.layers)
    payload = info.nbytes - info.header_bytes - buffers
    assert stats.huffman_bytes <= payload <= stats.huffman_bytes + 3 * streams + 64


def test_archive_loads_into_the_plain_architecture(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed(CASES["kmeans4"][0], example_input)
    nncf_ext.save_archive(model, tmp_path / "m.dca")
    plain = TinyNet()
    plain.load_state_dict(nncf_ext.load_archive(tmp_path / "m.dca"))
    model.eval(), plain.eval()
    assert torch.equal(plain(example_input), model(example_input))


def test_archive_of_a_sparse_clustered_layer_is_small(tmp_path: Path) -> None:
    class Wide(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(1024, 256, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

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
