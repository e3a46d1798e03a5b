"""``{"algorithm": "mqat", ...}``: modular gradated quantization-aware training (Javed et al., TMLR 2024).

Each module (backbone, FPN, head, ...) gets one bit-width, given explicitly or chosen by the ILP from a
sensitivity table under a target compression. Modules are quantized one per stage, in a gradated order
(least sensitive first by default), each stage fine-tuning for ``epochs_per_stage`` epochs (or
``steps_per_stage`` training steps, for fine-tunes of a few epochs) while the modules quantized earlier stay
quantized (trainable or frozen). The last stage lasts until training ends. ``"order": "simultaneous"``
quantizes all modules at once, which with an ILP allocation from Hessian sensitivities is the HAWQ-V3
baseline.

::

    {"algorithm": "mqat",
     "modules": {"backbone": {"patterns": ["backbone\\\\."]}, "fpn": {"patterns": ["fpn\\\\."]},
                 "head": {"patterns": ["head\\\\."]}},
     "allocation": {"sensitivity": "sensitivity.json", "target_compression": 8},
     "activations": {"bits": 8}, "epochs_per_stage": 2}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from nncf_ext.algorithms.base import AlgorithmConfig, CompressionAlgorithm, register_algorithm
from nncf_ext.algorithms.uniform_quantization.algo import (
    ActivationQuantizationConfig,
    UniformQuantization,
    UniformQuantizationConfig,
    WeightQuantizationConfig,
)
from nncf_ext.config_reader import ConfigReader, check_int
from nncf_ext.errors import CheckpointError, ConfigError
from nncf_ext.model import get_weight
from nncf_ext.mqat.budgets import TableBudget, bops_budget, table_budget
from nncf_ext.mqat.ilp import ExtraBudget, allocate_bits
from nncf_ext.mqat.sensitivity import SensitivityTable, weight_format
from nncf_ext.mqat.spec import ModuleSpec, module_sizes, resolve_modules
from nncf_ext.quantizers import MODES
from nncf_ext.scopes import Scope, WeightInfo


@dataclass(frozen=True)
class Allocation:
    sensitivity: str
    target_compression: float | None = None  # None: no size budget (another budget is given)
    candidate_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    ties: tuple[tuple[str, ...], ...] = ()
    # what target_compression divides: "model", every parameter at its own precision (fp32, fp16, ...), or
    # "weights", only the weights the modules quantize (the accounting of uniform n-bit quantization)
    size: str = "model"
    bops_compression: float | None = None  # BOPs <= FP32 BOPs / this
    budgets: tuple[TableBudget, ...] = ()  # tables of measured costs (latency), each with its limit


@dataclass(frozen=True)
class MQATConfig(AlgorithmConfig):
    modules: ModuleSpec = field(default_factory=ModuleSpec)
    keep_apart: Scope = field(default_factory=Scope)
    bits: tuple[tuple[str, int], ...] = ()
    allocation: Allocation | None = None
    order: str | tuple[str, ...] = "sensitivity"
    start_epoch: int = 0
    epochs_per_stage: int = 1
    # stages after the first begin every N ``step()`` calls (one per training batch under the Lightning
    # callback), counted from the start of ``start_epoch``; None: stages follow epochs
    steps_per_stage: int | None = None
    freeze_quantized: bool = False
    weights: WeightQuantizationConfig = field(default_factory=WeightQuantizationConfig)
    activation_bits: int | str | None = None  # an int, "module" (the module's bits) or None (weights only)
    lsq_gradient_scale: bool = True


def _read_allocation(r: ConfigReader) -> Allocation | None:
    if r.raw("allocation", None) is None:
        return None
    a = r.reader("allocation")
    bits = tuple(a.integers("candidate_bits", [2, 3, 4, 5, 6, 8], minimum=2))
    if not bits:
        raise ConfigError(a.sub("candidate_bits"), "needs at least one bit-width")
    for i, b in enumerate(bits):
        check_int(b, f"{a.sub('candidate_bits')}[{i}]", 2, 8)
    if len(set(bits)) != len(bits):
        raise ConfigError(a.sub("candidate_bits"), f"bit-widths repeat: {list(bits)}")
    ties_raw = a.raw("ties", [])
    if not isinstance(ties_raw, list) or not all(
        isinstance(t, list) and all(isinstance(m, str) for m in t) for t in ties_raw
    ):
        raise ConfigError(a.sub("ties"), "expected a list of lists of module names")
    budgets_raw = a.raw("budgets", [])
    if not isinstance(budgets_raw, list):
        raise ConfigError(a.sub("budgets"), 'expected a list of {"table": path, "limit": number}')
    ratios = {
        key: None if a.raw(key, None) is None else a.number(key, minimum=1.0, exclusive_minimum=True)
        for key in ("target_compression", "bops_compression")
    }
    allocation = Allocation(
        sensitivity=a.string("sensitivity"),
        target_compression=ratios["target_compression"],
        candidate_bits=bits,
        ties=tuple(tuple(t) for t in ties_raw),
        size=a.string("size", "model", choices=("model", "weights")),
        bops_compression=ratios["bops_compression"],
        budgets=tuple(
            TableBudget.from_config(ConfigReader(b, f"{a.sub('budgets')}[{i}]"))
            for i, b in enumerate(budgets_raw)
        ),
    )
    a.finish()  # first: a misspelt budget is named as such
    if (
        allocation.target_compression is None
        and allocation.bops_compression is None
        and not allocation.budgets
    ):
        raise ConfigError(
            a.sub("target_compression"),
            'required key is missing: the allocation needs it, "bops_compression" or "budgets"',
        )
    return allocation


@register_algorithm
class MQAT(CompressionAlgorithm):
    name: ClassVar[str] = "mqat"
    role: ClassVar[str | None] = "grid"
    config: MQATConfig

    def __init__(self, config: MQATConfig, path: str) -> None:
        super().__init__(config, path)
        self.modules: dict[str, list[WeightInfo]] = {}
        self.bits: dict[str, int] = {}
        self.order: list[str] = []
        self.stages: dict[str, UniformQuantization] = {}
        self.table: SensitivityTable | None = None
        self.steps = 0  # step() calls since ``start_epoch`` began (``steps_per_stage``)

    # -- config ------------------------------------------------------------------------------------------
    @classmethod
    def parse_config(cls, r: ConfigReader) -> MQATConfig:
        bits_raw = r.raw("bits", {})
        if not isinstance(bits_raw, dict):
            raise ConfigError(r.sub("bits"), "expected an object {module: bits}")
        bits = tuple((m, check_int(b, f"{r.sub('bits')}.{m}", 2, 8)) for m, b in bits_raw.items())
        allocation = _read_allocation(r)
        if not bits and allocation is None:
            raise ConfigError(
                r.path, 'give "bits" per module or an "allocation" (sensitivity + target_compression)'
            )
        if bits and allocation is not None:
            raise ConfigError(r.sub("allocation"), 'give either "bits" or "allocation", not both')
        order_raw = r.raw("order", "sensitivity" if allocation is not None else "configured")
        if isinstance(order_raw, list) and all(isinstance(m, str) for m in order_raw):
            order: str | tuple[str, ...] = tuple(order_raw)
        elif order_raw in ("sensitivity", "configured", "simultaneous"):
            order = order_raw
        else:
            raise ConfigError(
                r.sub("order"), 'expected "sensitivity", "configured", "simultaneous" or a list of modules'
            )
        steps_per_stage = None
        if r.raw("steps_per_stage", None) is not None:
            if r.raw("epochs_per_stage", None) is not None:
                raise ConfigError(r.sub("steps_per_stage"), 'give "epochs_per_stage" or "steps_per_stage"')
            steps_per_stage = r.integer("steps_per_stage", 1, minimum=1)
        w = r.reader("weights", {})
        weights = WeightQuantizationConfig(
            mode=w.string("mode", "symmetric", choices=MODES),
            per_channel=w.boolean("per_channel", True),
            init=w.string("init", "mse", choices=("minmax", "mse")),
        )
        w.finish()
        act_raw = r.raw("activations", None)
        activation_bits: int | str | None = None
        if act_raw is not None:
            a = r.reader("activations")
            value = a.raw("bits", 8)
            activation_bits = "module" if value == "module" else check_int(value, a.sub("bits"), 2, 8)
            a.finish()
        config = MQATConfig(
            modules=ModuleSpec.from_config(r.raw("modules", {}), r.sub("modules")),
            keep_apart=Scope.from_config(r.raw("keep_apart", {}), r.sub("keep_apart")),
            bits=bits,
            allocation=allocation,
            order=order,
            start_epoch=r.integer("start_epoch", 0, minimum=0),
            epochs_per_stage=r.integer("epochs_per_stage", 1, minimum=1),
            steps_per_stage=steps_per_stage,
            freeze_quantized=r.boolean("freeze_quantized", False),
            weights=weights,
            activation_bits=activation_bits,
            lsq_gradient_scale=r.boolean("lsq_gradient_scale", True),
            **AlgorithmConfig.read_scopes(r),
        )
        if config.order == "sensitivity" and allocation is None:
            raise ConfigError(
                r.sub("order"), '"sensitivity" order needs an "allocation" with a sensitivity table'
            )
        return config

    @classmethod
    def config_to_dict(cls, config: AlgorithmConfig) -> dict[str, Any]:
        assert isinstance(config, MQATConfig)
        out: dict[str, Any] = {
            "order": list(config.order) if isinstance(config.order, tuple) else config.order,
            "start_epoch": config.start_epoch,
            "freeze_quantized": config.freeze_quantized,
            "weights": {
                "mode": config.weights.mode,
                "per_channel": config.weights.per_channel,
                "init": config.weights.init,
            },
            "lsq_gradient_scale": config.lsq_gradient_scale,
            **config.scopes_to_config(),
        }
        if config.steps_per_stage is None:
            out["epochs_per_stage"] = config.epochs_per_stage
        else:
            out["steps_per_stage"] = config.steps_per_stage
        if config.modules.scopes:
            out["modules"] = config.modules.to_config()
        if not config.keep_apart.is_empty:
            out["keep_apart"] = config.keep_apart.to_config()
        if config.bits:
            out["bits"] = dict(config.bits)
        if config.allocation is not None:
            a = config.allocation
            out["allocation"] = {
                "sensitivity": a.sensitivity,
                "candidate_bits": list(a.candidate_bits),
                "ties": [list(t) for t in a.ties],
                "size": a.size,
            }
            for key in ("target_compression", "bops_compression"):
                if getattr(a, key) is not None:
                    out["allocation"][key] = getattr(a, key)
            if a.budgets:
                out["allocation"]["budgets"] = [{"table": b.table, "limit": b.limit} for b in a.budgets]
        if config.activation_bits is not None:
            out["activations"] = {"bits": config.activation_bits}
        return out

    # -- resolution --------------------------------------------------------------------------------------
    def validate(self, model: nn.Module, weights: list[WeightInfo]) -> None:
        self.modules = resolve_modules(self.config.modules, weights, self.config.keep_apart, self.path)
        if self.config.bits:
            for m, _ in self.config.bits:
                if m not in self.modules:
                    raise ConfigError(
                        f"{self.path}.bits.{m}", f"unknown module; modules are {list(self.modules)}"
                    )
            missing = [m for m in self.modules if m not in dict(self.config.bits)]
            if missing:
                raise ConfigError(f"{self.path}.bits", f"no bit-width for modules {missing}")
            self.bits = dict(self.config.bits)
        else:
            self.bits = self._allocate(model)
        self.order = self._order()

    def _allocate(self, model: nn.Module) -> dict[str, int]:
        allocation = self.config.allocation
        assert allocation is not None
        path = f"{self.path}.allocation"
        try:
            self.table = SensitivityTable.load(allocation.sensitivity)
        except CheckpointError as e:
            raise ConfigError(f"{path}.sensitivity", str(e)) from None
        if set(self.table.costs) != set(self.modules):
            raise ConfigError(
                f"{path}.sensitivity",
                f"table has modules {sorted(self.table.costs)}, the model {sorted(self.modules)}",
            )
        w = self.config.weights
        for key, value in weight_format(w.mode, w.per_channel, w.init).items():
            if key in self.table.settings and self.table.settings[key] != value:
                raise ConfigError(
                    f"{path}.sensitivity",
                    f"the table was measured with weights {key}={self.table.settings[key]!r}, "
                    f"this algorithm quantizes them with {key}={value!r}",
                )
        costs = {}
        for m in self.modules:
            missing = [b for b in allocation.candidate_bits if b not in self.table.costs[m]]
            if missing:
                raise ConfigError(f"{path}.sensitivity", f"module '{m}' was not measured at {missing} bits")
            costs[m] = allocation_costs({b: self.table.costs[m][b] for b in allocation.candidate_bits})
        for group in allocation.ties:
            for m in group:
                if m not in self.modules:
                    raise ConfigError(f"{path}.ties", f"unknown module '{m}'")
        sizes = module_sizes(self.modules)
        extra = self._extra_budgets(allocation)
        if allocation.target_compression is None:
            budget = math.inf
        elif allocation.size == "weights":
            budget = 32 * sum(sizes.values()) / allocation.target_compression
        else:
            total_bits = sum(p.numel() * p.element_size() * 8 for p in model.parameters())
            quantizable = [w for members in self.modules.values() for w in members]
            weight_bits = sum(8 * w.numel * get_weight(model, w.name).element_size() for w in quantizable)
            other_bits = total_bits - weight_bits  # the rest stays at its own precision
            budget = total_bits / allocation.target_compression - other_bits
        try:
            return allocate_bits(costs, sizes, budget, ties=allocation.ties, extra=extra)
        except ConfigError as e:
            where = "target_compression" if allocation.target_compression is not None else ""
            if e.path.startswith("extra["):  # "extra[i] (name)": the budget's own config key
                where = extra[int(e.path[len("extra[") : e.path.index("]")])].name
            elif e.path == "extra":  # the extra budgets together: the allocation's
                where = ""
            raise ConfigError(f"{path}.{where}" if where else path, e.message) from None

    def _extra_budgets(self, allocation: Allocation) -> list[ExtraBudget]:
        """The allocation's BOPs budget and its tables of measured costs, named by their config keys."""
        path = f"{self.path}.allocation"
        extra = []
        if allocation.bops_compression is not None:
            bops, _ = bops_budget(
                self.modules, allocation.candidate_bits, self.config.activation_bits,
                allocation.bops_compression, f"{path}.bops_compression",
            )  # fmt: skip
            extra.append(bops)
        for i, budget in enumerate(allocation.budgets):
            name = f"budgets[{i}]"
            extra.append(
                table_budget(budget, list(self.modules), allocation.candidate_bits, name, f"{path}.{name}")
            )
        return extra

    def _order(self) -> list[str]:
        order = self.config.order
        if isinstance(order, tuple):
            if sorted(order) != sorted(self.modules):
                raise ConfigError(
                    f"{self.path}.order", f"must list the modules {list(self.modules)} once each"
                )
            return list(order)
        if order == "sensitivity":
            assert self.table is not None
            return self.table.order(self.bits)
        return list(self.modules)

    # -- stages ------------------------------------------------------------------------------------------
    @property
    def by_steps(self) -> bool:
        return self.config.steps_per_stage is not None and self.config.order != "simultaneous"

    def stage_epoch(self, module: str) -> int:
        """First epoch of the stage that quantizes ``module`` (the first stage's, for stages by steps)."""
        if self.config.order == "simultaneous" or self.by_steps:
            return self.config.start_epoch
        return self.config.start_epoch + self.order.index(module) * self.config.epochs_per_stage

    def stage_step(self, module: str) -> int:
        """``step()`` calls after ``start_epoch`` began at which ``module``'s stage begins (0 by epochs)."""
        if not self.by_steps:
            return 0
        assert self.config.steps_per_stage is not None
        return self.order.index(module) * self.config.steps_per_stage

    def apply(self, model: nn.Module, weights: list[WeightInfo], example_input: Any) -> None:
        self.model, self.weights, self.example_input = model, weights, example_input
        # what the user left trainable: freezing a finished stage never unfreezes what they froze
        self.trainable = {w.name: get_weight(model, w.name).requires_grad for w in weights}
        for module in self.order:
            bits = self.bits[module]
            act = self.config.activation_bits
            activations = None
            if act is not None:
                activations = ActivationQuantizationConfig(bits=bits if act == "module" else int(act))
            config = UniformQuantizationConfig(
                weights=WeightQuantizationConfig(
                    bits=bits, mode=self.config.weights.mode, per_channel=self.config.weights.per_channel,
                    init=self.config.weights.init,
                ),
                activations=activations,
                lsq_gradient_scale=self.config.lsq_gradient_scale,
                start_epoch=self.stage_epoch(module),
                target_scope=Scope(names=tuple(w.name for w in self.modules[module])),
            )  # fmt: skip
            stage = UniformQuantization(config, f"{self.path}[{module}]")
            stage.apply(model, self.modules[module], example_input)
            self.stages[module] = stage

    def epoch_step(self, epoch: int) -> None:
        super().epoch_step(epoch)
        for module, stage in self.stages.items():
            if self.stage_step(module) == 0:
                stage.epoch_step(epoch)
        if self.config.freeze_quantized:
            self._freeze()

    def step(self) -> None:
        if not self.by_steps or self.epoch < self.config.start_epoch:
            return
        self.steps += 1
        due = [m for m in self.order if self.stage_step(m) <= self.steps]
        started = [m for m in due if not self.stages[m].initialized]
        for module in started:
            self.stages[module].initialize()
        if started and self.config.freeze_quantized:
            self._freeze()

    def _freeze(self) -> None:
        """Stop training the modules whose stage is over (all but the one quantized in the latest stage):
        their weights, and the ranges of their weight and activation quantizers."""
        assert self.model is not None
        done = self.quantized_modules()  # in stage order: the last one is the latest stage's
        over = set() if self.config.order == "simultaneous" else set(done[:-1])
        for module, stage in self.stages.items():
            frozen = module in over
            for w in self.modules[module]:
                get_weight(self.model, w.name).requires_grad_(self.trainable[w.name] and not frozen)
            for quantizer in (*stage.weight_quantizers.values(), *stage.activation_quantizers.values()):
                for p in quantizer.parameters():
                    if p.dtype.is_floating_point:
                        p.requires_grad_(not frozen)

    def quantized_modules(self) -> list[str]:
        return [m for m in self.order if self.stages[m].initialized]

    def summary(self) -> dict[str, float]:
        done = self.quantized_modules()
        return {
            "quantized_modules": float(len(done)),
            **{f"bits/{m}": float(self.bits[m]) for m in self.order},
        }

    def state_dict(self) -> dict[str, Any]:
        stages = {m: s.state_dict() for m, s in self.stages.items()}
        allocation = {"bits": dict(self.bits), "order": list(self.order)}
        return {**super().state_dict(), "steps": self.steps, "stages": stages, **allocation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the config names the sensitivity table's path only: a table measured again there since the
        # checkpoint gives other bits or another order, which the checkpoint's quantizers do not have
        for key, mine in (("bits", dict(self.bits)), ("order", list(self.order))):
            if key in state and state[key] != mine:
                raise CheckpointError(
                    f"{self.path}: the checkpoint's MQAT {key} {state[key]} differ from this run's {mine} "
                    "(was the sensitivity table measured again?)"
                )
        super().load_state_dict(state)
        self.steps = int(state.get("steps", 0))
        for module, stage in self.stages.items():
            stage.load_state_dict(state["stages"][module])
        if self.config.freeze_quantized and self.epoch >= 0:
            self._freeze()


def allocation_costs(measured: dict[int, float]) -> dict[int, float]:
    """ILP costs from one module's measured sensitivities: measurement noise removed, ties to more bits.

    A measured drop below zero is evaluation noise, and more bits never cost more than fewer (the cost at
    ``b`` is at most the cost at any smaller width); among equal costs the ILP then takes the wider format
    (a tie-break far below any measured difference), so spare budget is spent, not left unused. A width
    whose evaluation failed (NaN or infinite, e.g. a loss that overflowed at 2 bits) costs +inf: the ILP
    never takes it.
    """
    bits = sorted(measured)
    costs: dict[int, float] = {}
    running = math.inf
    for b in bits:
        if not math.isfinite(measured[b]):  # failed: never taken, and no bound for the wider widths
            costs[b] = math.inf
            continue
        running = min(running, max(measured[b], 0.0))
        costs[b] = running
    finite = [c for c in costs.values() if math.isfinite(c)]
    scale = 1e-6 * max(max(finite, default=0.0), 1e-3)  # below any real gap; ties are settled after HiGHS
    return {b: c + scale * (bits[-1] - b) for b, c in costs.items()}


def module_bits(algorithm: MQAT) -> dict[str, int]:
    """The bit-width of every module, in quantization order."""
    return {m: algorithm.bits[m] for m in algorithm.order}


__all__ = ["MQAT", "MQATConfig", "module_bits"]
