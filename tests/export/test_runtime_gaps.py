"""Export paths that other tests run but do not check: the int8 widening of 4-bit convolution weights and
an IR with several inputs and outputs behind ``OpenVINOModel``."""

from pathlib import Path

import openvino as ov
import pytest
import torch
from torch import nn

import nncf_ext
from nncf_ext.export import OpenVINOModel
from nncf_ext.export.openvino import exact_config
from tests.conftest import TinyNet


def convert_chain(model: ov.Model, name: str) -> list[str]:
    """Element types of the ``<name>/codes`` constant and of the Convert ops that follow it."""
    (node,) = [op for op in model.get_ops() if op.get_friendly_name() == f"{name}/codes"]
    types = [node.get_output_element_type(0).get_type_name()]
    while True:
        (target,) = [t.get_node() for t in node.output(0).get_target_inputs()]
        if target.get_type_name() != "Convert":
            return types
        types.append(target.get_output_element_type(0).get_type_name())
        node = target


@pytest.mark.parametrize(
    ("mode", "codes", "widened"), [("symmetric", "i4", "i8"), ("asymmetric", "u4", "u8")]
)
def test_int4_convolution_weights_are_widened_to_int8_and_match_torch(
    mode: str, codes: str, widened: str, tmp_path: Path, example_input: torch.Tensor
) -> None:
    """Convolutions (no int4 kernels) get ``codes -> Convert(8 bits) -> Convert(f32)``; the classifier's
    MatMul keeps ``codes -> Convert(f32)``; the .bin stores 4 bits for both."""
    torch.manual_seed(0)
    model = TinyNet()
    entry = {"algorithm": "uniform_quantization", "weights": {"bits": 4, "mode": mode}}
    nncf_ext.create_compression(model, {"compression": [entry]}, example_input)
    result = nncf_ext.export_openvino(model, example_input, tmp_path / "m.xml")
    assert result.weights == {"features.0.weight": codes, "features.3.weight": codes, "fc.weight": codes}
    ir = ov.Core().read_model(result.xml_path)
    # features.0 is found through BatchNorm folding, features.3 by its name
    assert convert_chain(ir, "features.0.weight") == [codes, widened, "f32"]
    assert convert_chain(ir, "features.3.weight") == [codes, widened, "f32"]
    assert convert_chain(ir, "fc.weight") == [codes, "f32"]
    batch = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        expected = model(batch)
    got = OpenVINOModel(result.xml_path, config=exact_config())(batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


class TwoInTwoOut(nn.Module):
    """Two inputs of different shapes, two outputs of different shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.head = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc(x) + y
        return logits, self.head(logits).relu()


def test_openvino_model_returns_every_output_in_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    example = (torch.randn(2, 4), torch.randn(2, 3))
    result = nncf_ext.export_openvino(model, example, tmp_path / "m.xml")
    assert result.parity is not None and {e["output"] for e in result.parity.per_output} == {0, 1}
    ir = OpenVINOModel(tmp_path / "m.xml", config=exact_config())
    x = torch.randn(6, 4, requires_grad=True)  # a batch of another size, from a graph
    y = torch.randn(6, 3)
    got = ir(x, y)
    with torch.no_grad():
        expected = model(x, y)
    assert isinstance(got, tuple) and len(got) == 2
    assert all(isinstance(t, torch.Tensor) for t in got)
    assert [t.shape for t in got] == [torch.Size([6, 3]), torch.Size([6, 5])]
    for out, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
