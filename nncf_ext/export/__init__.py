"""Export of compressed models: OpenVINO IR with compressed weights, parity check, compressed archive."""

from nncf_ext.export.archive import ArchiveInfo, load_archive, save_archive
from nncf_ext.export.benchmark import Timing, benchmark_model
from nncf_ext.export.openvino import ExportResult, export_openvino
from nncf_ext.export.parity import ParityReport, check_parity
from nncf_ext.export.rounding import round_to_float16
from nncf_ext.export.runtime import OpenVINOModel

__all__ = [
    "ArchiveInfo",
    "ExportResult",
    "OpenVINOModel",
    "ParityReport",
    "Timing",
    "benchmark_model",
    "check_parity",
    "export_openvino",
    "load_archive",
    "round_to_float16",
    "save_archive",
]
