"""NNCF-style JSON compression configs parsed into validated objects.

::

    {
      "input_info": {"sample_size": [1, 3, 224, 224]},
      "compression": [
        {"algorithm": "threshold_pruning", "criterion": "absolute",
         "threshold": {"type": "multistep", "steps": {"0": 0.001, "2": 0.005}}},
        {"algorithm": "l1_sparsity", "lambda": 1e-5}
      ]
    }

Errors name the config path (``compression[0].threshold.steps``) and are raised before any model is touched.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nncf_ext.algorithms import ALGORITHMS, AlgorithmConfig, algorithm_class
from nncf_ext.config_reader import ConfigReader, type_name
from nncf_ext.errors import ConfigError

INPUT_TYPES = {"float": torch.float32, "long": torch.long}
MAX_INPUT_ELEMENTS = 2**31  # elements of one example input built from input_info


@dataclass(frozen=True)
class InputInfo:
    """Shape and type of one model input, used to build an example input when none is given."""

    sample_size: tuple[int, ...]
    type: str = "float"

    @classmethod
    def from_config(cls, raw: Any, path: str) -> InputInfo:
        r = ConfigReader(raw, path)
        sizes = r.integers("sample_size", minimum=1)
        if not sizes:
            raise ConfigError(r.sub("sample_size"), "must not be empty")
        if math.prod(sizes) > MAX_INPUT_ELEMENTS:
            raise ConfigError(
                r.sub("sample_size"), f"more than {MAX_INPUT_ELEMENTS} elements in one example input"
            )
        info = cls(tuple(sizes), r.string("type", "float", choices=tuple(INPUT_TYPES)))
        r.finish()
        return info

    def to_config(self) -> dict[str, Any]:
        return {"sample_size": list(self.sample_size), "type": self.type}

    def make_example(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        if self.type == "long":
            return torch.randint(0, 2, self.sample_size, generator=generator)
        return torch.randn(self.sample_size, generator=generator)


@dataclass(frozen=True)
class CompressionConfig:
    """A parsed compression config: the inputs and the algorithms, applied in order."""

    algorithms: tuple[tuple[str, AlgorithmConfig], ...]
    input_info: tuple[InputInfo, ...] = ()

    @classmethod
    def from_dict(cls, raw: Any) -> CompressionConfig:
        r = ConfigReader(raw, "")
        infos: tuple[InputInfo, ...] = ()
        if r.has("input_info"):
            value = r.raw("input_info")
            if value == []:
                raise ConfigError("input_info", "an empty list; give one {'sample_size': [...]} per input")
            items = value if isinstance(value, list) else [value]
            infos = tuple(
                InputInfo.from_config(v, f"input_info[{i}]" if isinstance(value, list) else "input_info")
                for i, v in enumerate(items)
            )
        entries = r.raw("compression")
        is_list = isinstance(entries, list)
        entries = entries if is_list else [entries]
        if not entries:
            raise ConfigError("compression", "expected at least one algorithm")
        algorithms: list[tuple[str, AlgorithmConfig]] = []
        for i, entry in enumerate(entries):
            path = f"compression[{i}]" if is_list else "compression"
            er = ConfigReader(entry, path)
            name = er.raw("algorithm")
            cls_ = algorithm_class(name, er.sub("algorithm"))
            config = cls_.parse_config(er)
            er.finish()
            cls_.check_composition(config, list(algorithms), path)
            algorithms.append((name, config))
        r.raw("description", None)
        r.finish()
        return cls(tuple(algorithms), infos)

    @classmethod
    def from_json(cls, path: str | Path) -> CompressionConfig:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
        try:
            raw = json.loads(data)  # detects UTF-8 (with or without a BOM), UTF-16 and UTF-32
        except UnicodeDecodeError as e:
            raise ConfigError(
                "", f"{path} is not UTF-8, UTF-16 or UTF-32 text: {e.reason} at byte {e.start}"
            ) from None
        except json.JSONDecodeError as e:
            raise ConfigError("", f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.input_info:
            infos = [i.to_config() for i in self.input_info]
            out["input_info"] = infos[0] if len(infos) == 1 else infos
        out["compression"] = [
            {"algorithm": name, **ALGORITHMS[name].config_to_dict(config)} for name, config in self.algorithms
        ]
        return out

    def example_input(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not self.input_info:
            raise ConfigError("input_info", "no example input was given and the config has no input_info")
        examples = tuple(i.make_example() for i in self.input_info)
        return examples[0] if len(examples) == 1 else examples


def load_config(source: str | Path | dict[str, Any] | CompressionConfig) -> CompressionConfig:
    """A config from a JSON path, a dict or an already parsed config."""
    if isinstance(source, CompressionConfig):
        return source
    if isinstance(source, dict):
        return CompressionConfig.from_dict(source)
    if isinstance(source, (str, Path)):
        return CompressionConfig.from_json(source)
    raise ConfigError("", f"expected a config path, dict or CompressionConfig, got {type_name(source)}")
