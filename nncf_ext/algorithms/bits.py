"""Per-scope bit-widths, e.g. ``{"names": {"fc.weight": 8}, "types": {"linear": 5}}``.

Precedence: names over patterns over types over the default. Every rule must match a targeted weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nncf_ext.config_reader import ConfigReader, check_int
from nncf_ext.errors import ConfigError
from nncf_ext.scopes import Scope, WeightInfo

RULE_KINDS = ("names", "patterns", "types")


@dataclass(frozen=True)
class BitsPerScope:
    rules: tuple[tuple[str, str, int], ...] = ()  # (kind, rule, bits)

    @classmethod
    def read(cls, r: ConfigReader, key: str, minimum: int, maximum: int) -> BitsPerScope:
        sub = r.reader(key, {})
        rules = []
        for kind in RULE_KINDS:
            table = sub.raw(kind, {})
            path = sub.sub(kind)
            if not isinstance(table, dict):
                raise ConfigError(path, f"expected an object {{rule: bits}}, got {type(table).__name__}")
            for rule, bits in table.items():
                if kind == "patterns":
                    Scope.from_config({"patterns": [rule]}, f"{path}.{rule}")
                rules.append((kind, rule, check_int(bits, f"{path}.{rule}", minimum, maximum)))
        sub.finish()
        return cls(tuple(rules))

    def to_config(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for kind, rule, bits in self.rules:
            out.setdefault(kind, {})[rule] = bits
        return out

    @property
    def values(self) -> list[int]:
        return [b for _, _, b in self.rules]

    def bits_for(self, weight: WeightInfo, default: int) -> int:
        bits = default
        for kind in ("types", "patterns", "names"):
            for k, rule, b in self.rules:
                if k == kind and Scope.single(kind, rule).matches(weight):
                    bits = b
        return bits

    def check_matches(self, weights: list[WeightInfo], path: str) -> None:
        for kind, rule, _ in self.rules:
            if not any(Scope.single(kind, rule).matches(w) for w in weights):
                raise ConfigError(f"{path}.{kind}.{rule}", "matches no weight this algorithm targets")

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __iter__(self) -> Any:
        return iter(self.rules)
