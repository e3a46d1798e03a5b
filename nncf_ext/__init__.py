"""nncf-ext: training-time compression for NNCF 3.x (torch backend) and OpenVINO.

The public API, named the way NNCF names its own::

    pipeline = nncf_ext.create_compression(model, "config.json", example_input)
    stats = nncf_ext.compression_statistic(model)
    state = nncf_ext.get_config(model); nncf_ext.load_from_config(fresh_model, state)
"""

import os
import sys

# NNCF compiles its quantization kernels on first use and gives up after 60 s; on a busy 2-core machine the
# compile can take longer. The kernels are built per environment (torch's default cache is shared by every
# checkout, whose different include paths then rebuild each other's). A user's own settings win.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "300")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))

from nncf_ext.config import CompressionConfig, InputInfo, load_config
from nncf_ext.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    ModelError,
    NNCFExtError,
    ParityError,
)
from nncf_ext.export import (
    ExportResult,
    ParityReport,
    export_openvino,
    load_archive,
    round_to_float16,
    save_archive,
)
from nncf_ext.pipeline import CompressionPipeline, create_compression
from nncf_ext.scopes import Scope, WeightInfo
from nncf_ext.serialization import get_config, load_from_config
from nncf_ext.statistics import CompressionStatistic, LayerStatistic, compression_statistic

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CompressionConfig",
    "CompressionPipeline",
    "CompressionStatistic",
    "ConfigError",
    "DataError",
    "ExportError",
    "ExportResult",
    "InputInfo",
    "LayerStatistic",
    "ModelError",
    "NNCFExtError",
    "ParityError",
    "ParityReport",
    "Scope",
    "WeightInfo",
    "compression_statistic",
    "create_compression",
    "export_openvino",
    "get_config",
    "load_archive",
    "load_config",
    "load_from_config",
    "round_to_float16",
    "save_archive",
]
