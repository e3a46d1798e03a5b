"""Schedules shared by all algorithms: pure functions of the epoch, and their parsed config objects.

A schedule maps an epoch to a value (a pruning threshold, an L1 strength, a bit-width stage). Config forms::

    0.005                                                        constant
    {"type": "multistep", "steps": {"0": 0.001, "3": 0.005}}     value of the last step reached
    {"type": "polynomial", "initial": 0, "target": 0.01, "start_epoch": 0, "end_epoch": 6, "power": 3}
    {"type": "exponential", "initial": 0.001, "target": 0.01, "start_epoch": 0, "end_epoch": 6}
    {"type": "iterative", "initial": 0.001, "target": 0.01, "cycles": 4, "fine_tune_epochs": 2}
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from nncf_ext.config_reader import ConfigReader, check_float, check_int, type_name
from nncf_ext.errors import ConfigError


def _progress(epoch: int, start_epoch: int, end_epoch: int) -> float:
    if end_epoch <= start_epoch:
        return 1.0 if epoch >= start_epoch else 0.0
    return min(max((epoch - start_epoch) / (end_epoch - start_epoch), 0.0), 1.0)


def _ramp(initial: float, target: float, p: float, *, geometric: bool) -> float:
    """From ``initial`` (p = 0) to ``target`` (p >= 1), linearly or geometrically; the ends are exact
    (the formulas round off by an ulp: 0.001 + (0.01 - 0.001) * 1.0 is 0.010000000000000002)."""
    if p >= 1.0:
        return target
    if p <= 0.0:
        return initial
    return initial * (target / initial) ** p if geometric else initial + (target - initial) * p


def multistep_value(epoch: int, steps: Sequence[tuple[int, float]], initial: float = 0.0) -> float:
    """Value of the last step whose epoch is <= ``epoch``; ``initial`` before the first step."""
    epochs = [e for e, _ in steps]
    i = bisect.bisect_right(epochs, epoch)
    return initial if i == 0 else steps[i - 1][1]


def polynomial_value(
    epoch: int, *, initial: float, target: float, start_epoch: int, end_epoch: int, power: float
) -> float:
    """AGP-like ramp (Zhu & Gupta 2017): ``target + (initial - target) * (1 - p) ** power``."""
    p = _progress(epoch, start_epoch, end_epoch)
    if p >= 1.0:
        return target
    if p <= 0.0:
        return initial  # exact: target + (initial - target) * 1.0 rounds off
    return target + (initial - target) * (1.0 - p) ** power


def exponential_value(
    epoch: int, *, initial: float, target: float, start_epoch: int, end_epoch: int
) -> float:
    """Geometric ramp from ``initial`` to ``target`` (both > 0): ``initial * (target / initial) ** p``."""
    return _ramp(initial, target, _progress(epoch, start_epoch, end_epoch), geometric=True)


def iterative_value(
    epoch: int,
    *,
    initial: float,
    target: float,
    cycles: int,
    fine_tune_epochs: int,
    start_epoch: int,
    ramp: str,
) -> float:
    """Prune / fine-tune cycles: the value rises at the start of each cycle and holds while fine-tuning."""
    if epoch < start_epoch:
        return 0.0
    cycle = min((epoch - start_epoch) // fine_tune_epochs, cycles - 1)
    p = 1.0 if cycles == 1 else cycle / (cycles - 1)
    return _ramp(initial, target, p, geometric=ramp == "geometric")


class Schedule(ABC):
    """A value as a function of the epoch, parsed from a config entry."""

    kind: ClassVar[str]

    @abstractmethod
    def __call__(self, epoch: int) -> float: ...

    def to_config(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}  # type: ignore[call-overload]

    @property
    @abstractmethod
    def final_epoch(self) -> int:
        """First epoch from which the value no longer changes."""

    def first_nonzero_from(self, start: int) -> int | None:
        """The first epoch ``>= start`` with a non-zero value, or None if it is zero from ``start`` on."""
        return next((e for e in range(start, max(start, self.final_epoch) + 1) if self(e) != 0), None)


@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    kind: ClassVar[str] = "constant"
    value: float

    def __call__(self, epoch: int) -> float:
        return self.value

    @property
    def final_epoch(self) -> int:
        return 0


@dataclass(frozen=True)
class MultiStepSchedule(Schedule):
    kind: ClassVar[str] = "multistep"
    steps: tuple[tuple[int, float], ...]
    initial: float = 0.0

    def __call__(self, epoch: int) -> float:
        return multistep_value(epoch, self.steps, self.initial)

    def to_config(self) -> dict[str, Any]:
        return {"type": self.kind, "steps": {str(e): v for e, v in self.steps}, "initial": self.initial}

    @property
    def final_epoch(self) -> int:
        return self.steps[-1][0]


@dataclass(frozen=True)
class PolynomialSchedule(Schedule):
    kind: ClassVar[str] = "polynomial"
    initial: float
    target: float
    start_epoch: int
    end_epoch: int
    power: float

    def __call__(self, epoch: int) -> float:
        return polynomial_value(
            epoch,
            initial=self.initial,
            target=self.target,
            start_epoch=self.start_epoch,
            end_epoch=self.end_epoch,
            power=self.power,
        )

    @property
    def final_epoch(self) -> int:
        return self.end_epoch


@dataclass(frozen=True)
class ExponentialSchedule(Schedule):
    kind: ClassVar[str] = "exponential"
    initial: float
    target: float
    start_epoch: int
    end_epoch: int

    def __call__(self, epoch: int) -> float:
        return exponential_value(
            epoch,
            initial=self.initial,
            target=self.target,
            start_epoch=self.start_epoch,
            end_epoch=self.end_epoch,
        )

    @property
    def final_epoch(self) -> int:
        return self.end_epoch


@dataclass(frozen=True)
class IterativeSchedule(Schedule):
    kind: ClassVar[str] = "iterative"
    initial: float
    target: float
    cycles: int
    fine_tune_epochs: int
    start_epoch: int = 0
    ramp: str = "linear"

    def __call__(self, epoch: int) -> float:
        return iterative_value(
            epoch,
            initial=self.initial,
            target=self.target,
            cycles=self.cycles,
            fine_tune_epochs=self.fine_tune_epochs,
            start_epoch=self.start_epoch,
            ramp=self.ramp,
        )

    @property
    def final_epoch(self) -> int:
        return self.start_epoch + (self.cycles - 1) * self.fine_tune_epochs


SCHEDULE_TYPES = ("constant", "multistep", "polynomial", "exponential", "iterative")


def parse_schedule(raw: Any, path: str, *, minimum: float = 0.0, maximum: float | None = None) -> Schedule:
    """Parse a schedule config; every value must lie in ``[minimum, maximum]``."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return ConstantSchedule(check_float(raw, path, minimum, maximum))
    r = ConfigReader(raw, path)
    kind = r.string("type", choices=SCHEDULE_TYPES)

    def value(key: str, default: Any = ..., *, positive: bool = False) -> float:
        args = (key,) if default is ... else (key, default)
        return r.number(
            *args, minimum=minimum if not positive else 0.0, maximum=maximum, exclusive_minimum=positive
        )

    schedule: Schedule
    if kind == "constant":
        schedule = ConstantSchedule(value("value"))
    elif kind == "multistep":
        schedule = MultiStepSchedule(_parse_steps(r, minimum, maximum), value("initial", 0.0))
    elif kind in ("polynomial", "exponential"):
        geometric = kind == "exponential"
        start = r.integer("start_epoch", 0, minimum=0)
        end = r.integer("end_epoch", minimum=0)
        if end <= start:
            raise ConfigError(r.sub("end_epoch"), f"must be greater than start_epoch ({start}), got {end}")
        initial = value("initial", ... if geometric else 0.0, positive=geometric)
        target = value("target", positive=geometric)
        if geometric:
            schedule = ExponentialSchedule(initial, target, start, end)
        else:
            power = r.number("power", 3.0, minimum=0.0, exclusive_minimum=True)
            schedule = PolynomialSchedule(initial, target, start, end, power)
    else:
        ramp = r.string("ramp", "linear", choices=("linear", "geometric"))
        positive = ramp == "geometric"
        schedule = IterativeSchedule(
            initial=value("initial", positive=positive),
            target=value("target", positive=positive),
            cycles=r.integer("cycles", minimum=1),
            fine_tune_epochs=r.integer("fine_tune_epochs", minimum=1),
            start_epoch=r.integer("start_epoch", 0, minimum=0),
            ramp=ramp,
        )
    r.finish()
    return schedule


def _parse_steps(r: ConfigReader, minimum: float, maximum: float | None) -> tuple[tuple[int, float], ...]:
    raw = r.raw("steps")
    path = r.sub("steps")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(path, f"expected a non-empty object {{epoch: value}}, got {type_name(raw)}")
    steps: list[tuple[int, float]] = []
    for key, v in raw.items():
        # JSON keys are strings of digits; int() would also take "1_0" (10), " 3" or a float key 1.7 (1)
        plain = isinstance(key, str) and key.isascii() and key.isdigit()
        if isinstance(key, bool) or not (isinstance(key, int) or plain):
            raise ConfigError(path, f"epoch keys must be non-negative integers, got {key!r}")
        epoch = int(key)
        check_int(epoch, f"{path}[{key!r}]", minimum=0)
        if steps and epoch <= steps[-1][0]:
            raise ConfigError(path, f"epochs must be strictly increasing, got {epoch} after {steps[-1][0]}")
        steps.append((epoch, check_float(v, f"{path}[{key!r}]", minimum, maximum)))
    return tuple(steps)
