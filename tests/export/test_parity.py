import numpy as np
import pytest
import torch

from nncf_ext.errors import ParityError
from nncf_ext.export.parity import check_parity, parity_inputs


class ConstantIR:
    """Stands in for a compiled IR that returns ``value`` everywhere."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"out": np.full((inputs[0].shape[0], 3), self.value, dtype=np.float32)}


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_ir_outputs_fail_parity(value: float) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    inputs = [torch.randn(2, 4), torch.randn(2, 4)]
    report = check_parity(model, ConstantIR(value), inputs, raise_on_failure=False)
    assert not report.ok and not np.isfinite(report.max_rel)
    with pytest.raises(ParityError, match="relative error"):
        check_parity(model, ConstantIR(value), inputs)


def test_parity_inputs_of_a_single_element_are_finite() -> None:
    inputs = parity_inputs(torch.tensor([[0.5]]))
    assert len(inputs) == 4 and all(torch.isfinite(x).all() for x in inputs)
    assert len({float(x) for x in inputs}) == 4  # random inputs, not copies
    one, empty = parity_inputs((torch.tensor([2.0]), torch.zeros(0)))[1]
    assert torch.isfinite(one).all() and empty.shape == (0,)


def test_parity_needs_inputs_and_keeps_their_dtype() -> None:
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ParityError, match="at least one input"):
        check_parity(model, ConstantIR(1e6), [])  # would otherwise pass having compared nothing
    inputs = parity_inputs(torch.randn(2, 4).half())
    assert [x.dtype for x in inputs] == [torch.float16] * 4  # a float16 model gets float16 inputs
