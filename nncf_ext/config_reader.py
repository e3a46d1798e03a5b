"""A small typed reader over JSON dictionaries that names the config path in every error.

Algorithms declare their options by reading them::

    r = ConfigReader(raw, "compression[0]")
    bits = r.integer("bits", default=8, minimum=1, maximum=8)
    r.finish()  # unknown keys -> error with the closest valid key suggested
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nncf_ext.errors import ConfigError

_MISSING = object()


def suggest(name: str, valid: Sequence[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest valid name, or an empty string."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class ConfigReader:
    """Reads typed values from a mapping and remembers which keys were consumed."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"expected an object, got {type_name(data)}")
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(path, f"keys must be strings, got {key!r}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self._read: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._read.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:  # a misspelt key is the likely cause: name it
            present = [k for k in self.data if isinstance(k, str) and k not in self._read]
            close = difflib.get_close_matches(key, present, n=1, cutoff=0.5)
            found = f" ('{close[0]}' is there: misspelt?)" if close else ""
            raise ConfigError(self.sub(key), f"required key is missing{found}")
        return default

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
    ) -> float:
        value = self.raw(key, default)
        return check_float(value, self.sub(key), minimum, maximum, exclusive_minimum)

    def integer(
        self, key: str, default: Any = _MISSING, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        return check_int(self.raw(key, default), self.sub(key), minimum, maximum)

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.sub(key), f"expected true or false, got {type_name(value)}")
        return value

    def string(self, key: str, default: Any = _MISSING, *, choices: Sequence[str] | None = None) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise ConfigError(self.sub(key), f"expected a string, got {type_name(value)}")
        if choices is not None and value not in choices:
            raise ConfigError(
                self.sub(key), f"'{value}' is not one of {sorted(choices)}{suggest(value, choices)}"
            )
        return value

    def strings(self, key: str, default: Any = _MISSING) -> list[str]:
        value = self.raw(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.sub(key), f"expected a list of strings, got {value!r}")
        return list(value)

    def integers(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> list[int]:
        value = self.raw(key, default)
        if not isinstance(value, list):
            raise ConfigError(self.sub(key), f"expected a list of integers, got {type_name(value)}")
        return [check_int(v, f"{self.sub(key)}[{i}]", minimum, None) for i, v in enumerate(value)]

    def reader(self, key: str, default: Any = _MISSING) -> ConfigReader:
        return ConfigReader(self.raw(key, default), self.sub(key))

    def finish(self) -> None:
        """Raise on keys that were never read (typos), suggesting the closest valid key."""
        for key in self.data:
            if key not in self._read:
                raise ConfigError(self.sub(key), f"unknown key{suggest(key, sorted(self._read))}")


def check_float(
    value: Any,
    path: str,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"expected a number, got {type_name(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise ConfigError(path, "expected a finite number, got an integer too large for a float") from None
    if not math.isfinite(value):
        raise ConfigError(path, f"expected a finite number, got {value}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        bound = ">" if exclusive_minimum else ">="
        raise ConfigError(path, f"must be {bound} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(path, f"must be <= {maximum}, got {value}")
    return value


def is_integer(value: Any) -> bool:
    """A Python or numpy integer; a bool is not one here."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, path: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if not is_integer(value):
        raise ConfigError(path, f"expected an integer, got {type_name(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(path, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(path, f"must be <= {maximum}, got {value}")
    return value
