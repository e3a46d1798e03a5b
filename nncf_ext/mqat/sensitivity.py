"""How much each module suffers from low precision, per candidate bit-width.

* ``measure_sensitivity``: quantize one module's weights alone and evaluate the task (a metric on a
  validation subset, or a loss: any ``evaluate() -> float``); the cost is the drop from full precision.
* ``hessian_sensitivity`` (HAWQ-V3, Yao et al. 2021): ``Tr(H_m) / n_m * ||Q_b(W_m) - W_m||^2`` with each
  module's Hessian trace estimated by Hutchinson's method from Hessian-vector products.

Both quantize as the MQAT algorithm will (``mode``, ``per_channel``, ``init``: its ``weights`` settings).
Tables are cached as JSON, keyed by the method and its settings (that weight format, the Hessian samples),
the bit-widths and each module's weights (names and shapes) they were measured for; a cache that differs in
any of them is measured again.

An ``evaluate()`` that returns NaN or an infinity with a module quantized is recorded as it came: a failed
evaluation (a loss that overflowed at 2 bits), which the MQAT allocation rules out and ``order`` ranks most
sensitive. A baseline (full precision) that is not finite, a non-finite Hessian cost, and arguments outside
what the MQAT algorithm supports (bit-widths 2 to 8, its weight ``mode`` and ``init``) are refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nncf_ext.algorithms.uniform_quantization.algo import INITS
from nncf_ext.errors import CheckpointError, ConfigError, ModelError
from nncf_ext.files import atomic_file
from nncf_ext.model import eval_mode, frozen_state, get_weight
from nncf_ext.quantizers import MODES, init_weight_range, make_weight_quantizer
from nncf_ext.scopes import WeightInfo

Setting = bool | int | str  # a recorded measurement setting
MIN_BITS, MAX_BITS = 2, 8  # the widths the MQAT and uniform quantization configs accept


def _check_bits(bits: object, path: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(path, f"expected a bit-width from {MIN_BITS} to {MAX_BITS}, got {bits!r}")


def _check_format(mode: str, per_channel: bool, init: str) -> None:
    if mode not in MODES:
        raise ConfigError("mode", f"expected one of {list(MODES)}, got {mode!r}")
    if not isinstance(per_channel, bool):
        raise ConfigError("per_channel", f"expected a boolean, got {per_channel!r}")
    if init not in INITS:
        raise ConfigError("init", f"expected one of {list(INITS)}, got {init!r}")


def _check_measurement(
    modules: Mapping[str, Sequence[WeightInfo]],
    candidate_bits: Sequence[int],
    mode: str,
    per_channel: bool,
    init: str,
) -> None:
    """Refuse what would measure nothing, or measure other than the MQAT algorithm quantizes."""
    _check_modules(modules)
    if isinstance(candidate_bits, (str, bytes)) or not candidate_bits:
        raise ConfigError("candidate_bits", f"expected a list of bit-widths, got {candidate_bits!r}")
    for i, bits in enumerate(candidate_bits):
        _check_bits(bits, f"candidate_bits[{i}]")
    _check_format(mode, per_channel, init)


def _check_samples(samples: int) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError("samples", f"expected a number of samples >= 1, got {samples!r}")


def _check_modules(modules: Mapping[str, Sequence[WeightInfo]]) -> None:
    if not modules:
        raise ConfigError("modules", "no modules to measure")
    for name, weights in modules.items():
        if not weights:
            raise ConfigError("modules", f"module '{name}' has no weights")


@dataclass
class SensitivityTable:
    """``costs[module][bits]``: the loss of quality when only ``module`` is quantized to ``bits``."""

    method: str
    baseline: float
    costs: dict[str, dict[int, float]]
    # what a cached table was measured on: "name:shape" of each module's weights, the method's settings
    weights: dict[str, list[str]] = field(default_factory=dict)
    settings: dict[str, Setting] = field(default_factory=dict)

    def order(self, bits: Mapping[str, int] | None = None) -> list[str]:
        """Modules from the least to the most sensitive (at ``bits``, else at the fewest bits measured); a
        failed evaluation (NaN) ranks as the most sensitive."""

        def cost(m: str) -> float:
            b = bits[m] if bits and m in bits else min(self.costs[m])
            if b not in self.costs[m]:
                raise ConfigError("bits", f"module '{m}' was not measured at {b} bits")
            c = self.costs[m][b]
            return math.inf if math.isnan(c) else c

        return sorted(self.costs, key=cost)

    def to_dict(self) -> dict[str, object]:
        costs = {m: {str(b): c for b, c in per.items()} for m, per in self.costs.items()}
        out: dict[str, object] = {"method": self.method, "baseline": self.baseline, "costs": costs}
        if self.weights or self.settings:
            out.update(weights=self.weights, settings=self.settings)
        return out

    def save(self, path: str | Path) -> None:
        """Write the table atomically: an interrupted save leaves the previous cache, not half of one."""
        text = json.dumps(self.to_dict(), indent=2)
        with atomic_file(path) as tmp:
            tmp.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> SensitivityTable:
        try:
            raw = json.loads(Path(path).read_text())
            costs = {m: {int(b): float(c) for b, c in per.items()} for m, per in raw["costs"].items()}
            weights = {m: [str(w) for w in ws] for m, ws in raw.get("weights", {}).items()}
            settings = {str(k): _setting(v) for k, v in raw.get("settings", {}).items()}
            return cls(str(raw["method"]), float(raw["baseline"]), costs, weights, settings)
        except (OSError, KeyError, ValueError, TypeError, AttributeError) as e:  # AttributeError: a list
            raise CheckpointError(
                f"cannot read the sensitivity table {path}: {type(e).__name__}: {e}"
            ) from None

    def matches(
        self,
        method: str,
        modules: Mapping[str, Sequence[WeightInfo]],
        bits: Sequence[int],
        settings: Mapping[str, Setting] | None = None,
    ) -> bool:
        """Whether this table was measured by ``method`` with ``settings`` on these modules' weights."""
        return (
            self.method == method
            and self.settings == dict(settings or {})
            and self.weights == _fingerprint(modules)
            and all(set(self.costs[m]) == set(bits) for m in modules)
        )


def _setting(value: object) -> Setting:
    if not isinstance(value, (bool, int, str)):
        raise ValueError(f"a setting must be a number, a string or a boolean, not {value!r}")
    return value


def weight_format(mode: str = "symmetric", per_channel: bool = True, init: str = "mse") -> dict[str, Setting]:
    """The settings that record how a table's weights were quantized."""
    return {"mode": mode, "per_channel": per_channel, "init": init}


def _fingerprint(modules: Mapping[str, Sequence[WeightInfo]]) -> dict[str, list[str]]:
    return {m: [f"{w.name}:{list(w.shape)}" for w in ws] for m, ws in modules.items()}


@torch.no_grad()
def quantized_weight(
    weight: torch.Tensor, bits: int, mode: str = "symmetric", *, per_channel: bool = True, init: str = "mse"
) -> torch.Tensor:
    """``weight`` as a ``bits``-bit NNCF weight quantizer with a freshly initialised range would make it."""
    _check_bits(bits, "bits")
    _check_format(mode, per_channel, init)
    quantizer = make_weight_quantizer(weight, bits, mode, per_channel).to(weight.device)
    init_weight_range(quantizer, weight, init)
    return quantizer.quantize(weight)


@contextmanager
def weights_quantized(
    model: nn.Module,
    weights: Sequence[WeightInfo],
    bits: int,
    mode: str = "symmetric",
    *,
    per_channel: bool = True,
    init: str = "mse",
) -> Iterator[None]:
    """Temporarily replace the values of ``weights`` by their ``bits``-bit quantization."""
    _check_bits(bits, "bits")
    _check_format(mode, per_channel, init)
    originals = {w.name: get_weight(model, w.name).detach().clone() for w in weights}
    try:
        with torch.no_grad():
            for w in weights:
                param = get_weight(model, w.name)
                param.copy_(quantized_weight(param, bits, mode, per_channel=per_channel, init=init))
        yield
    finally:
        with torch.no_grad():
            for w in weights:
                get_weight(model, w.name).copy_(originals[w.name])


def _cached(
    cache: str | Path | None,
    method: str,
    modules: Mapping[str, Sequence[WeightInfo]],
    bits: Sequence[int],
    settings: Mapping[str, Setting] | None = None,
) -> SensitivityTable | None:
    if cache is None or not Path(cache).exists():
        return None
    table = SensitivityTable.load(cache)
    return table if table.matches(method, modules, bits, settings) else None


def measure_sensitivity(
    model: nn.Module,
    modules: Mapping[str, Sequence[WeightInfo]],
    candidate_bits: Sequence[int],
    evaluate: Callable[[], float],
    *,
    higher_is_better: bool = True,
    method: str = "metric",
    cache: str | Path | None = None,
    mode: str = "symmetric",
    per_channel: bool = True,
    init: str = "mse",
) -> SensitivityTable:
    """Quantize each module alone at each bit-width and record the drop of ``evaluate()``.

    A NaN or infinite ``evaluate()`` with a module quantized is recorded as a failed evaluation (see the
    module's docstring); one at full precision is refused.
    """
    _check_measurement(modules, candidate_bits, mode, per_channel, init)
    settings = weight_format(mode, per_channel, init)
    if (table := _cached(cache, method, modules, candidate_bits, settings)) is not None:
        return table
    sign = 1.0 if higher_is_better else -1.0
    baseline = _score(evaluate(), "at full precision")
    if not math.isfinite(baseline):
        raise ModelError(f"evaluate() returned {baseline} at full precision: no drop can be measured from it")
    costs: dict[str, dict[int, float]] = {}
    for name, weights in modules.items():
        costs[name] = {}
        for bits in candidate_bits:
            with weights_quantized(model, weights, bits, mode, per_channel=per_channel, init=init):
                score = _score(evaluate(), f"with module '{name}' at {bits} bits")
            costs[name][bits] = sign * (baseline - score)
    table = SensitivityTable(method, baseline, costs, _fingerprint(modules), settings)
    if cache is not None:
        table.save(cache)
    return table


def _score(value: object, when: str) -> float:
    """``evaluate()``'s result as a float (a number or a one-element tensor)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of more than one element
        raise ModelError(f"evaluate() returned {value!r} {when}, expected a number") from None


def hessian_traces(
    model: nn.Module,
    modules: Mapping[str, Sequence[WeightInfo]],
    loss_fn: Callable[[], torch.Tensor],
    samples: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Hutchinson estimates of ``Tr(H_m)`` per module: the mean of ``v^T H v`` over Rademacher ``v``.

    One Hessian-vector product per sample serves every module: block cross terms vanish in expectation.
    ``loss_fn`` runs in eval mode, as PyHessian (HAWQ-V3's) runs it: BatchNorm uses its running statistics
    and does not update them, so measuring leaves the model as it was.
    """
    _check_modules(modules)
    _check_samples(samples)
    params = {name: [get_weight(model, w.name) for w in ws] for name, ws in modules.items()}
    flat = [p for ps in params.values() for p in ps]
    g = torch.Generator().manual_seed(seed)
    traces = dict.fromkeys(modules, 0.0)
    with eval_mode(model):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, flat, create_graph=True)
        for _ in range(samples):
            vs = [(torch.randint(0, 2, p.shape, generator=g) * 2 - 1).to(p) for p in flat]
            hvs = torch.autograd.grad(grads, flat, grad_outputs=vs, retain_graph=True)
            i = 0
            for name, ps in params.items():
                for _ in ps:
                    traces[name] += float((hvs[i] * vs[i]).sum()) / samples
                    i += 1
    return traces


def hessian_sensitivity(
    model: nn.Module,
    modules: Mapping[str, Sequence[WeightInfo]],
    candidate_bits: Sequence[int],
    loss_fn: Callable[[], torch.Tensor],
    *,
    samples: int = 32,
    cache: str | Path | None = None,
    mode: str = "symmetric",
    per_channel: bool = True,
    init: str = "mse",
) -> SensitivityTable:
    """HAWQ-V3's sensitivity: mean Hessian trace of a module times its squared quantization perturbation."""
    _check_measurement(modules, candidate_bits, mode, per_channel, init)
    _check_samples(samples)
    # "traces": how the traces were measured; tables from before they were measured in eval mode lack it,
    # so a cache of one is measured again
    settings = {"samples": samples, "traces": "eval", **weight_format(mode, per_channel, init)}
    if (table := _cached(cache, "hessian", modules, candidate_bits, settings)) is not None:
        return table
    traces = hessian_traces(model, modules, loss_fn, samples)
    costs: dict[str, dict[int, float]] = {}
    for name, weights in modules.items():
        n = sum(w.numel for w in weights)
        costs[name] = {}
        for bits in candidate_bits:
            perturbation = 0.0
            for w in weights:
                param = get_weight(model, w.name).detach()
                quantized = quantized_weight(param, bits, mode, per_channel=per_channel, init=init)
                perturbation += float((quantized - param).pow(2).sum())
            # |trace|: near a minimum of a hinge-type loss (triplet) the estimate can come out negative,
            # which would rank the coarsest quantization best; the magnitude keeps the curvature ranking
            costs[name][bits] = abs(traces[name]) / n * perturbation
            if not math.isfinite(costs[name][bits]):  # no failed width here: the loss or weights are broken
                raise ModelError(
                    f"the Hessian sensitivity of module '{name}' at {bits} bits is {costs[name][bits]} "
                    f"(trace {traces[name]}, perturbation {perturbation}): is the loss or a weight not "
                    "finite?"
                )
    with frozen_state(model):
        loss = float(loss_fn())
    table = SensitivityTable("hessian", loss, costs, _fingerprint(modules), settings)
    if cache is not None:
        table.save(cache)
    return table
