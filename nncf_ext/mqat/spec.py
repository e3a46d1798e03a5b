"""Modules of a modular network (backbone, FPN, head, ...) as sets of weights.

``{"backbone": {"patterns": ["backbone\\\\."]}, "fpn": {"names": ["fpn"]}}`` maps module names to scopes;
without a spec, the modules are the model's top-level submodules. Layers kept apart (for example the first
and the last layer) belong to no module and stay in full precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nncf_ext.config_reader import ConfigReader
from nncf_ext.errors import ConfigError
from nncf_ext.scopes import Scope, WeightInfo


@dataclass(frozen=True)
class ModuleSpec:
    """Named scopes; an empty spec means "one module per top-level submodule"."""

    scopes: tuple[tuple[str, Scope], ...] = ()

    @classmethod
    def from_config(cls, raw: Any, path: str) -> ModuleSpec:
        r = ConfigReader(raw, path)
        scopes = []
        for name in r.data:
            scope = Scope.from_config(r.raw(name), r.sub(name))
            if scope.is_empty:
                raise ConfigError(r.sub(name), "a module needs names, patterns or types")
            scopes.append((name, scope))
        r.finish()
        return cls(tuple(scopes))

    def to_config(self) -> dict[str, Any]:
        return {name: scope.to_config() for name, scope in self.scopes}


def resolve_modules(
    spec: ModuleSpec, weights: list[WeightInfo], keep_apart: Scope, path: str
) -> dict[str, list[WeightInfo]]:
    """Weights of each module, in spec order; every rule must match, modules must not overlap or be empty."""
    for rule, matched in keep_apart.rule_matches(weights).items():
        if not matched:
            raise ConfigError(f"{path}.keep_apart.{rule}", "matches no weight of the model")
    candidates = [w for w in weights if keep_apart.is_empty or not keep_apart.matches(w)]
    modules: dict[str, list[WeightInfo]] = {}
    if not spec.scopes:
        for w in candidates:
            modules.setdefault(w.module_name.split(".")[0], []).append(w)
        return modules
    owner: dict[str, str] = {}
    for name, scope in spec.scopes:
        for rule, matched in scope.rule_matches(weights).items():
            if not matched:
                raise ConfigError(f"{path}.modules.{name}.{rule}", "matches no weight of the model")
        members = [w for w in candidates if scope.matches(w)]
        if not members:
            raise ConfigError(f"{path}.modules.{name}", "is empty: all its weights are kept apart")
        for w in members:
            if w.name in owner:
                raise ConfigError(
                    f"{path}.modules.{name}", f"overlaps module '{owner[w.name]}' on weight '{w.name}'"
                )
            owner[w.name] = name
        modules[name] = members
    return modules


def module_sizes(modules: Mapping[str, list[WeightInfo]]) -> dict[str, int]:
    return {name: sum(w.numel for w in ws) for name, ws in modules.items()}
