"""Min / max of the inputs of given operations, observed over one forward pass of the example input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from nncf.torch.function_hook.wrapper import register_pre_function_hook
from torch import nn

from nncf_ext.model import frozen_state, run_model


class MinMaxObserver(nn.Module):
    """A pass-through hook that records the running min and max of what flows through it, and its size."""

    def __init__(self) -> None:
        super().__init__()
        self.low = torch.tensor(float("inf"))
        self.high = torch.tensor(float("-inf"))
        self.per_sample = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.low = torch.minimum(self.low, x.detach().min().float().cpu())
        self.high = torch.maximum(self.high, x.detach().max().float().cpu())
        self.per_sample = x[0].numel() if x.dim() > 1 else x.numel()
        return x


@torch.no_grad()
def observe_inputs(
    model: nn.Module, ports: Mapping[str, int], example_input: Any
) -> dict[str, MinMaxObserver]:
    """Observers of each op's input at its port (``{op: port}``) after one forward pass; they are removed
    afterwards."""
    observers = {op: MinMaxObserver() for op in ports}
    handles = [
        register_pre_function_hook(model, op_name=op, port_id=ports[op], hook=obs)
        for op, obs in observers.items()
    ]
    try:
        with frozen_state(model):
            run_model(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    return observers


def collect_input_ranges(
    model: nn.Module, ports: Mapping[str, int], example_input: Any
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{op: (min, max)}`` of each op's input (at ``ports[op]``) over the example input."""
    return {op: (obs.low, obs.high) for op, obs in observe_inputs(model, ports, example_input).items()}
