"""Comparing an exported OpenVINO model with the torch model it came from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nncf_ext.errors import ParityError
from nncf_ext.model import frozen_state, run_model


@dataclass
class ParityReport:
    """Worst errors over all parity inputs and outputs; ``max_rel`` is relative to the output's magnitude."""

    max_abs: float
    max_rel: float
    tolerance: float
    inputs: int
    per_output: list[dict[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance  # False for NaN

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def to_numpy_inputs(example: Any) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Inputs for a compiled IR: positional, or by name for a dict (``ov.convert_model`` names them so)."""
    if isinstance(example, dict):
        return {k: to_numpy(t) for k, t in example.items()}
    return [to_numpy(t) for t in _as_tuple(example)]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` as numpy; bfloat16, which numpy lacks, as float32 (every bfloat16 value is a float32 one)."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _flatten(output: Any) -> list[np.ndarray]:
    if isinstance(output, torch.Tensor):
        return [to_numpy(output)]
    if isinstance(output, (tuple, list)):
        return [a for o in output for a in _flatten(o)]
    if isinstance(output, dict):
        return [a for v in output.values() for a in _flatten(v)]  # insertion order, as the IR keeps it
    raise ParityError(f"cannot compare a model output of type {type(output).__name__}")


def _random_like(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Gaussian noise of ``t``'s shape, mean and spread (unit spread if ``t`` has none, e.g. one element)."""
    std = float(t.float().std()) if t.numel() > 1 else 0.0
    mean = float(t.float().mean()) if t.numel() else 0.0
    noise = torch.randn(t.shape, generator=g) * (std if math.isfinite(std) and std > 0 else 1.0) + mean
    return noise.to(t.dtype)  # the model's input dtype (a float16 model takes float16 inputs)


def parity_inputs(example: Any, count: int = 4, seed: int = 0) -> list[Any]:
    """The example input and ``count - 1`` random inputs of its shapes and scale (integer inputs are kept)."""
    g = torch.Generator().manual_seed(seed)
    inputs = [example]

    def like(t: Any) -> Any:
        return _random_like(t, g) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    for _ in range(count - 1):
        if isinstance(example, dict):
            inputs.append({k: like(t) for k, t in example.items()})
            continue
        sample = tuple(like(t) for t in _as_tuple(example))
        inputs.append(sample if isinstance(example, tuple) else sample[0])
    return inputs


def check_parity(
    model: nn.Module,
    compiled: Any,
    inputs: Sequence[Any],
    tolerance: float = 1e-3,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Run both models on ``inputs``; relative error = max |ov - torch| / max |torch| per output."""
    if not inputs:
        raise ParityError("check_parity needs at least one input")
    worst_abs = worst_rel = 0.0
    per_output: list[dict[str, float]] = []
    with frozen_state(model):
        for j, x in enumerate(inputs):
            try:
                expected = _flatten(run_model(model, x))
                got = [np.asarray(v) for v in compiled(to_numpy_inputs(x)).values()]
            except Exception as error:  # an input of another shape or type than the IR was made for
                raise ParityError(
                    f"parity input {j} cannot be run: {type(error).__name__}: {error}"
                ) from error
            if len(got) != len(expected):
                raise ParityError(f"the IR has {len(got)} outputs, the torch model {len(expected)}")
            for i, (e, g) in enumerate(zip(expected, got, strict=True)):
                if e.shape != g.shape:
                    raise ParityError(f"output {i}: IR shape {g.shape} != torch shape {e.shape}")
                if e.size == 0:
                    raise ParityError(
                        f"parity input {j}: output {i} is empty (an empty batch?): nothing to compare"
                    )
                abs_err = float(np.max(np.abs(e.astype(np.float64) - g)))
                rel_err = abs_err / max(float(np.max(np.abs(e))), 1e-12)
                per_output.append({"input": j, "output": i, "max_abs": abs_err, "max_rel": rel_err})
                # np.maximum keeps NaN: a non-finite error fails the check
                worst_abs, worst_rel = (
                    float(np.maximum(worst_abs, abs_err)),
                    float(np.maximum(worst_rel, rel_err)),
                )
    report = ParityReport(worst_abs, worst_rel, tolerance, len(inputs), per_output)
    if raise_on_failure and not report.ok:
        raise ParityError(
            f"the exported model differs from the torch model: max relative error {worst_rel:.3g} "
            f"(max abs {worst_abs:.3g}) > tolerance {tolerance:g}"
        )
    return report
