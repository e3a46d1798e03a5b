"""Which weights an algorithm touches: weight constants found through NNCF's graph, filtered by scopes.

A :class:`Scope` has the shape of :class:`nncf.IgnoredScope` (``names``, ``patterns``, ``types``) but matches
weight constants, so a user may name a weight, its module or its NNCF operation:

* ``names``: exact const name (``features.0.weight``), module name (``features.0``; a module name covers
  the weights of its submodules too, so ``features`` selects every ``features.*`` weight) or op node
  (``features/0/conv2d/0``);
* ``patterns``: regular expressions matched at the start of those names (``re.match``, as NNCF does);
* ``types``: NNCF op type (``conv2d``, ``linear``) or module class name (``Conv2d``, ``Linear``).

A parameter that no weighted operation consumes (NetVLAD's centroids, a learned scale) is compressed only
when a ``names`` rule of the target scope gives its exact name (``netvlad.centroids``).

Every rule must match at least one weight, so a typo is an error instead of a silent no-op.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nncf_ext.config_reader import ConfigReader
from nncf_ext.errors import ConfigError


@dataclass(frozen=True)
class WeightInfo:
    """A weight constant of a wrapped model and the operations that consume it."""

    name: str
    module_name: str
    module_type: str
    op_names: tuple[str, ...]
    op_types: tuple[str, ...]
    shape: tuple[int, ...]
    weighted: bool = True  # consumed by a weighted operation (conv, linear, matmul, embedding)
    # per op: the input port of its floating-point activation (None: it has none, e.g. an embedding)
    activation_ports: tuple[int | None, ...] = ()
    # per op: its multiply-accumulates at the graph's example input (None: an op :mod:`nncf_ext.macs`
    # cannot count)
    op_macs: tuple[int | None, ...] = ()

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def match_names(self) -> tuple[str, ...]:
        return (self.name, self.module_name, *self.op_names)

    def in_module(self, name: str) -> bool:
        """True for an exact name of this weight, or a module that contains it."""
        return name in self.match_names or self.module_name.startswith(name + ".")

    @property
    def match_types(self) -> tuple[str, ...]:
        return (self.module_type, *self.op_types)


@dataclass(frozen=True)
class Scope:
    """A set of weights given by names, patterns and types (a weight matches if any rule matches)."""

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple(re.compile(p) for p in self.patterns))

    @classmethod
    def single(cls, kind: str, rule: str) -> Scope:
        """A scope of one rule: ``Scope.single("types", "linear")``."""
        return cls(**{kind: (rule,)})  # type: ignore[arg-type]

    @property
    def is_empty(self) -> bool:
        return not (self.names or self.patterns or self.types)

    def rule_matches(self, weights: Sequence[WeightInfo]) -> dict[str, list[str]]:
        """Map each rule (``names[0]``, ``patterns[1]``, ...) to the weights it matches."""
        out: dict[str, list[str]] = {}
        for i, name in enumerate(self.names):
            out[f"names[{i}]"] = [w.name for w in weights if w.in_module(name)]
        for i, pattern in enumerate(self._compiled):
            out[f"patterns[{i}]"] = [w.name for w in weights if any(pattern.match(n) for n in w.match_names)]
        for i, type_ in enumerate(self.types):
            out[f"types[{i}]"] = [w.name for w in weights if type_ in w.match_types]
        return out

    def matches(self, weight: WeightInfo) -> bool:
        return (
            any(weight.in_module(n) for n in self.names)
            or any(p.match(n) for p in self._compiled for n in weight.match_names)
            or any(t in weight.match_types for t in self.types)
        )

    def to_config(self) -> dict[str, list[str]]:
        return {"names": list(self.names), "patterns": list(self.patterns), "types": list(self.types)}

    @classmethod
    def from_config(cls, raw: Any, path: str) -> Scope:
        r = ConfigReader(raw, path)
        names = r.strings("names", [])
        patterns = r.strings("patterns", [])
        for i, p in enumerate(patterns):
            try:
                re.compile(p)
            except re.error as e:
                raise ConfigError(f"{path}.patterns[{i}]", f"invalid regular expression {p!r}: {e}") from None
        types = r.strings("types", [])
        r.finish()
        return cls(tuple(names), tuple(patterns), tuple(types))


def select_weights(
    weights: Sequence[WeightInfo],
    target: Scope,
    ignored: Scope,
    path: str,
    others: Sequence[WeightInfo] = (),
) -> list[WeightInfo]:
    """Weights in ``target`` (all when empty) and not in ``ignored``; every rule must match something.

    ``others`` are parameters no weighted operation consumes: one is selected only when ``target.names``
    gives its exact name.
    """
    named = [w for w in others if w.name in target.names]
    for scope, key in ((target, "target_scope"), (ignored, "ignored_scope")):
        for rule, matched in scope.rule_matches([*weights, *named]).items():
            if not matched:
                available = ", ".join(w.name for w in weights[:12])
                raise ConfigError(
                    f"{path}.{key}.{rule}",
                    f"matches no weight of the model (weights: {available}"
                    f"{', ...' if len(weights) > 12 else ''})",
                )
    selected = [
        w
        for w in weights
        if (target.is_empty or target.matches(w))
        and not (ignored.matches(w) if not ignored.is_empty else False)
    ]
    selected += [w for w in named if ignored.is_empty or not ignored.matches(w)]
    if not selected:
        raise ConfigError(path, "the scopes leave no weight to compress")
    return selected


def names_of(weights: Iterable[WeightInfo]) -> list[str]:
    return [w.name for w in weights]
