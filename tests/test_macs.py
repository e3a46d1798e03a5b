"""MAC counts of weighted operations, against torch's own FLOP counter and hand counts."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nncf_ext.model import model_weights
from nncf_ext.scopes import WeightInfo


class Mixed(nn.Module):
    """Every kind of weighted op NNCF finds, with shapes that tell the formulas apart."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
        self.conv1 = nn.Conv1d(6, 5, 2)
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2)
        self.linear = nn.Linear(4, 7)
        self.left = nn.Parameter(torch.randn(3, 7))  # left @ x
        self.right = nn.Parameter(torch.randn(7, 2))  # x @ right
        self.embedding = nn.Embedding(10, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, 6, 5, 5)
        z = self.conv1(y.flatten(2))  # (B, 5, 24)
        u = self.up(y)  # (B, 4, 11, 11)
        v = self.linear(u.flatten(2).transpose(1, 2))  # (B, 121, 7)
        w = self.left @ v.transpose(1, 2)  # (B, 3, 121)
        t = v @ self.right  # (B, 121, 2)
        e = self.embedding(torch.arange(3))  # (3, 7)
        return w.sum() + t.sum() + z.sum() + e.sum()


def weights_of(model: nn.Module, x: torch.Tensor) -> dict[str, WeightInfo]:
    return {w.name: w for w in model_weights(model, x)}


def test_macs_by_hand_and_against_torch_flop_counter() -> None:
    torch.manual_seed(0)
    model, x = Mixed().eval(), torch.randn(2, 4, 9, 9)
    weights = weights_of(model, x)
    macs = {
        name.rsplit(".", 1)[0] if name.endswith(".weight") else name: w.op_macs for name, w in weights.items()
    }
    assert macs == {
        "conv": (2 * 6 * 5 * 5 * (2 * 3 * 3),),  # every output element: in/groups x kernel MACs
        "conv1": (2 * 5 * 24 * (6 * 2),),
        "up": (2 * 6 * 5 * 5 * (2 * 3 * 3),),  # every input element scatters through out/groups x kernel
        "linear": (2 * 121 * 7 * 4,),
        "left": (2 * 3 * 121 * 7,),  # the contracted dimension: left's last
        "right": (2 * 121 * 2 * 7,),  # right's first
        "embedding": (0,),  # lookups
    }
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    assert sum(m for w in weights.values() for m in w.op_macs) * 2 == counter.get_total_flops()


def test_a_shared_weight_counts_every_op() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x)[..., ::2, ::2])

    (weight,) = weights_of(Shared(), torch.randn(1, 3, 8, 8)).values()
    assert weight.op_macs == (3 * 64 * 27, 3 * 16 * 27)


@pytest.mark.parametrize("batch", [1, 3])
def test_macs_scale_with_the_batch(batch: int) -> None:
    (weight,) = weights_of(Fc(), torch.randn(batch, 5)).values()
    assert weight.op_macs == (batch * 10,)


class Fc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Odd(nn.Module):
    """A 1-D linear weight, a 1-D @ 1-D matmul (a scalar output), a weight on both ports of one matmul
    (torch's FLOP counter skips ``mv`` and ``dot``, so these are counted by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.vector = nn.Parameter(torch.randn(3))
        self.dot = nn.Parameter(torch.randn(5))
        self.square = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.linear(x, self.vector)  # (4,): 3 MACs per row
        b = self.dot @ x[0, :1].repeat(5)  # scalar: 5 MACs
        return a.sum() + b + (self.square @ self.square).sum()  # 4 x 4 outputs x 4


def test_one_dimensional_weights_scalar_outputs_and_a_weight_on_two_ports() -> None:
    model, x = Odd(), torch.randn(4, 3)
    weights = weights_of(model, x)
    assert weights["vector"].op_macs == (12,)
    assert weights["dot"].op_macs == (5,)
    assert weights["square"].op_macs == (64, 0)  # the op is listed per port, its MACs counted once


def test_an_op_whose_output_is_unused_is_not_counted() -> None:
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.unused(x)
            return self.used(x)

    weights = weights_of(Unused(), torch.randn(1, 3))
    assert weights["used.weight"].op_macs == (6,)
    assert weights["unused.weight"].op_macs == (None,)
