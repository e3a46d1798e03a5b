"""``nncf_ext.export_openvino``: a compressed torch model to an OpenVINO IR whose ``.bin`` really shrinks.

Hooks are folded (``strip.py``), the model is converted with ``ov.convert_model``, compressed weights are
rewritten into codebook / integer storage (``ir.py``), the IR is saved under a temporary name, compiled and
compared with the torch model (``parity.py``), and only then moved into place.
"""

from __future__ import annotations

import math
import numbers
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from nncf_ext.errors import ExportError
from nncf_ext.export.ir import compress_weights, float_constants_to_fp16
from nncf_ext.export.parity import ParityReport, check_parity, parity_inputs, to_numpy
from nncf_ext.export.strip import strip_for_export
from nncf_ext.model import check_example_input, get_weight


@dataclass
class ExportResult:
    xml_path: Path
    bin_path: Path
    bin_bytes: int
    weights: dict[str, str] = field(default_factory=dict)  # weight -> stored element type (u4, u8, i8, ...)
    parity: ParityReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "xml_path": str(self.xml_path),
            "bin_path": str(self.bin_path),
            "bin_bytes": self.bin_bytes,
            "weights": self.weights,
            "parity": self.parity.to_dict() if self.parity else None,
        }


def exact_config(precision: str | ov.Type = "f32") -> dict[str, Any]:
    """Compile options for an exact run on CPU: no bf16, no dynamic quantization of activations."""
    return {"INFERENCE_PRECISION_HINT": precision, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}


PRECISIONS = ("f32", "f16", "bf16")


def _target(path: str | Path) -> Path:
    """The .xml path for ``path``, checked; nothing is created."""
    xml = Path(path)
    if not xml.name or xml.name in (".", ".."):
        raise ExportError(f"give the path of the .xml file to write, not {str(path)!r}")
    if xml.suffix != ".xml":  # "resnet50.int8" -> "resnet50.int8.xml", not "resnet50.xml"
        xml = xml.with_name(xml.name + ".xml")
    if xml.is_dir():
        raise ExportError(f"{xml} is a directory; give the path of the .xml file to write")
    if xml.with_suffix(".bin").is_dir():
        raise ExportError(f"{xml.with_suffix('.bin')} is a directory; the weights of {xml.name} go there")
    return xml


VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")  # "AUTO:GPU,CPU", "BATCH:CPU(2)", ...


def _check_options(tolerance: float, inputs: Any, device: str, precision: Any, check: bool) -> None:
    number = isinstance(tolerance, numbers.Real) and not isinstance(tolerance, bool)
    if not number or not math.isfinite(tolerance) or tolerance < 0:
        raise ExportError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if inputs is not None and (not isinstance(inputs, (list, tuple)) or not inputs):
        raise ExportError(f"inputs must be a non-empty list of model inputs, got {type(inputs).__name__}")
    if precision is not None and not isinstance(precision, ov.Type) and precision not in PRECISIONS:
        raise ExportError(
            f"precision must be one of {list(PRECISIONS)}, an ov.Type or None, got {precision!r}"
        )
    if check:  # plain device names are checked here; OpenVINO parses the virtual devices' options
        available = ov.Core().available_devices
        name = str(device).split(":")[0].split(".")[0]
        if name not in VIRTUAL_DEVICES and name not in {d.split(".")[0] for d in available}:
            raise ExportError(
                f"device {device!r} is not available for the parity check; available: {available}"
            )


def _make_directory(xml: Path) -> list[Path]:
    """Create the directory of ``xml`` and check it is writable; returns the directories it created, deepest
    first (on an error, those are removed again)."""
    created = [d for d in [xml.parent, *xml.parent.parents] if not d.exists()]
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(created)
        raise ExportError(f"cannot create the directory {xml.parent}: {e.strerror}") from None
    try:  # permissions alone do not tell (root, read-only file systems): try it
        with tempfile.TemporaryFile(dir=xml.parent):
            pass
    except OSError as e:
        _remove_empty(created)
        raise ExportError(f"the directory {xml.parent} is not writable: {e.strerror}") from None
    return created


def _remove_empty(directories: list[Path]) -> None:
    """Remove ``directories`` (deepest first) up to the first that holds something; one never made (a failed
    ``mkdir`` makes only the upper ones) is skipped."""
    for directory in directories:
        if not os.path.isdir(directory):  # never made (os.path.isdir is False on any error, a long name too)
            continue
        try:
            directory.rmdir()
        except OSError:
            break


def _move_into_place(tmp_xml: Path, xml: Path) -> None:
    """Move the saved IR to ``xml``: the .bin first, so that no new .xml ever points to a missing or old .bin;
    if the .xml cannot be moved, the previous .bin (if any) is put back."""
    bin_path, backup = xml.with_suffix(".bin"), tmp_xml.with_suffix(".bin.old")
    try:
        if bin_path.exists():
            os.replace(bin_path, backup)
        try:
            os.replace(tmp_xml.with_suffix(".bin"), bin_path)
            os.replace(tmp_xml, xml)
        except OSError:
            if backup.exists():
                os.replace(backup, bin_path)
            else:
                bin_path.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ExportError(f"cannot write {e.filename2 or e.filename or xml}: {e.strerror}") from None


def convert(model: nn.Module, example_input: Any, fp16: bool = False) -> tuple[ov.Model, dict[str, str]]:
    """Strip, convert and compress the weights, without writing anything.

    ``fp16``: codebooks and float constants in fp16 (see ``export_openvino``). Returns the OpenVINO model
    and the element type each compressed weight is stored in.
    """
    check_example_input(model, example_input)
    tensors = [*model.parameters(), *model.buffers(), *tree_leaves(example_input)]
    if any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 for t in tensors):
        raise ExportError(
            "a bfloat16 model or input cannot be exported (OpenVINO's numpy interface has no bfloat16): "
            "export model.float() with float32 inputs; the IR runs in bf16 where the CPU has it "
            "(INFERENCE_PRECISION_HINT)"
        )
    stripped, storages = strip_for_export(model, example_input)
    try:
        ov_model = ov.convert_model(stripped, example_input=example_input)
    except Exception as e:
        raise ExportError(f"ov.convert_model failed: {type(e).__name__}: {e}") from e
    effective = {name: to_numpy(get_weight(stripped, name)) for name in storages}
    stored = compress_weights(ov_model, storages, effective, fp16_codebooks=fp16)
    if fp16:
        float_constants_to_fp16(ov_model)
    return ov_model, stored


def export_openvino(
    model: nn.Module,
    example_input: Any,
    path: str | Path,
    *,
    compress_to_fp16: bool = False,
    check: bool = True,
    tolerance: float = 1e-3,
    inputs: list[Any] | None = None,
    device: str = "CPU",
    precision: str | ov.Type | None = "f32",
) -> ExportResult:
    """Export ``model`` (compressed or not) to ``path`` (.xml + .bin) with real compressed weight storage.

    :param compress_to_fp16: store the remaining float weights (and codebooks) in fp16: OpenVINO's own
        compression, then the constants it keeps in f32 (scales, normalisation paths) where no FakeQuantize
        follows them (:func:`~nncf_ext.export.ir.float_constants_to_fp16`).
    :param check: compile the IR on ``device`` and compare it with the torch model; a relative error above
        ``tolerance`` raises :class:`~nncf_ext.ParityError` and nothing is written.
    :param inputs: parity inputs (default: the example input and three random inputs of its shape).
    :param precision: ``INFERENCE_PRECISION_HINT`` for the parity run, ``"f32"`` by default: OpenVINO runs
        bf16 on CPUs with bf16 support and quantizes activations on the fly for integer weights, either of
        which alone differs from torch by about 1%. The exact run checks the IR itself; task metrics on the
        IR (``nncf_ext.export.evaluate``) measure the deployed numerics. None keeps the device defaults.
    """
    xml = _target(path)
    _check_options(tolerance, inputs, device, precision, check)
    ov_model, weights = convert(model, example_input, fp16=compress_to_fp16)  # checks the model and input
    created = _make_directory(xml)
    tmp = Path(tempfile.mkdtemp(dir=xml.parent, prefix=f".{xml.stem}.export-"))
    written = False
    try:
        tmp_xml = tmp / xml.name
        ov.save_model(ov_model, tmp_xml, compress_to_fp16=compress_to_fp16)
        report = None
        if check:
            config = exact_config(precision) if precision else {}
            try:
                compiled = ov.Core().compile_model(str(tmp_xml), device, config)
            except RuntimeError as e:
                raise ExportError(f"OpenVINO cannot compile the IR on {device!r}: {e}") from e
            report = check_parity(model, compiled, inputs or parity_inputs(example_input), tolerance)
        _move_into_place(tmp_xml, xml)
        written = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not written:
            _remove_empty(created)
    bin_path = xml.with_suffix(".bin")
    return ExportResult(xml, bin_path, bin_path.stat().st_size, weights, report)
