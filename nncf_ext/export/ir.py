"""Rewriting the weight constants of a converted OpenVINO model into compressed storage.

* codebook weights: ``Constant(u4 | u8 indices) -> Convert(u8) -> Gather(codebook, axis 0)``, the pattern
  NNCF's own CODEBOOK weight compression emits;
* integer weights: ``Constant(i8 | u8 | i4 | u4) -> Convert -> [Subtract(zero point)] -> Multiply(scale)``,
  OpenVINO's weight decompression pattern (int8 compute where activations carry FakeQuantize).
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as opset

from nncf_ext.errors import ExportError
from nncf_ext.storage import WeightStorage

TORCH_CONST_PREFIX = "self."


def _reshaped(array: np.ndarray, ndim: int) -> np.ndarray:
    """``array`` with leading unit axes up to ``ndim`` (how OpenVINO folds an unsqueezed parameter)."""
    return array.reshape((1,) * (ndim - array.ndim) + array.shape)


def _codebook_subgraph(
    name: str, storage: WeightStorage, fp16: bool, ndim: int = 0
) -> tuple[ov.Node, ov.Type]:
    assert storage.codebook is not None and storage.codes is not None
    k = storage.codebook.numel()
    values = storage.codebook.detach().float().numpy()
    codebook = opset.constant(values.astype(np.float16) if fp16 else values, name=f"{name}/codebook")
    if fp16:
        codebook = opset.convert(codebook, ov.Type.f32)
    index_type = ov.Type.u4 if k <= 16 else ov.Type.u8
    if k > 256:
        raise ExportError(f"'{name}': codebooks of more than 256 entries are not supported, got {k}")
    codes = _reshaped(storage.codes.numpy(), ndim).astype(np.uint8)
    index = opset.constant(codes, dtype=index_type, name=f"{name}/indices")
    if index_type == ov.Type.u4:
        index = opset.convert(index, ov.Type.u8)
    return opset.gather(codebook, index, 0, name=f"{name}/codebook_gather"), index_type


def _int_subgraph(
    name: str, storage: WeightStorage, widen: bool = False, ndim: int = 0
) -> tuple[ov.Node, ov.Type]:
    """Integer codes, converted and scaled. ``widen`` stores 4-bit codes but converts them to 8 bits first:
    OpenVINO folds that into int8 weights at compile time, so convolutions (which have no int4 kernels)
    still run in int8 while the ``.bin`` keeps 4 bits; matrix multiplications keep int4 for its kernels."""
    assert storage.codes is not None and storage.scale is not None
    small = storage.bits <= 4
    values = _reshaped(storage.codes.numpy(), ndim)
    if storage.signed:  # symmetric: store q - 2^(b-1), so that w = q * scale
        dtype = ov.Type.i4 if small else ov.Type.i8
        values = (values - (1 << (storage.bits - 1))).astype(np.int8)
    else:
        dtype = ov.Type.u4 if small else ov.Type.u8
        values = values.astype(np.uint8)
    codes: ov.Node = opset.constant(values, dtype=dtype, name=f"{name}/codes")
    if widen and small:
        codes = opset.convert(codes, ov.Type.i8 if storage.signed else ov.Type.u8)
    weights: ov.Node = opset.convert(codes, ov.Type.f32)
    if not storage.signed and storage.zero_point is not None:
        zero = _reshaped(storage.zero_point.detach().float().numpy(), ndim)
        weights = opset.subtract(weights, opset.constant(zero, name=f"{name}/zero_point"))
    scale = _reshaped(storage.scale.detach().float().numpy(), ndim)
    return opset.multiply(
        weights, opset.constant(scale, name=f"{name}/scale"), name=f"{name}/decompress"
    ), dtype


def _upstream_of_fake_quantize(model: ov.Model) -> set[str]:
    """Names of the nodes whose outputs reach a FakeQuantize (including its range inputs)."""
    seen: set[str] = set()
    frontier = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    while frontier:
        node = frontier.pop()
        for value in node.input_values():
            source = value.get_node()
            if source.get_friendly_name() not in seen:
                seen.add(source.get_friendly_name())
                frontier.append(source)
    return seen


def float_constants_to_fp16(model: ov.Model) -> int:
    """Store float32 constants (tensors, not scalars) as ``Constant(f16) -> Convert(f32)`` where no
    FakeQuantize follows them; returns the bytes saved.

    ``ov.save_model(compress_to_fp16=True)`` keeps decompression scales and constants on normalisation
    paths in f32; after the last FakeQuantize their fp16 rounding (2^-11 relative) stays below the parity
    tolerance. Before one, it can move a value across a rounding boundary of the quantizer, so those stay.
    """
    upstream = _upstream_of_fake_quantize(model)
    saved = 0
    for op in model.get_ops():
        if (
            op.get_type_name() != "Constant"
            or op.get_element_type() != ov.Type.f32
            or int(np.prod(list(op.get_output_shape(0)))) < 2
            or op.get_friendly_name() in upstream
        ):
            continue
        half = opset.constant(op.get_data().astype(np.float16), name=f"{op.get_friendly_name()}/fp16")
        widened = opset.convert(half, ov.Type.f32)
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(widened.output(0))
        saved += 2 * int(np.prod(list(op.get_output_shape(0))))
    model.validate_nodes_and_infer_types()
    return saved


WEIGHTED_OPS = {"Convolution": 1, "GroupConvolution": 1, "ConvolutionBackpropData": 1, "MatMul": 1}


def _weight_constants(model: ov.Model) -> list[ov.Node]:
    """Constants feeding the weight input of a convolution or matrix multiplication."""
    found: dict[int, ov.Node] = {}
    for op in model.get_ops():
        port = WEIGHTED_OPS.get(op.get_type_name())
        if port is None:
            continue
        source = op.input_value(port).get_node()
        if source.get_type_name() == "Constant":
            found[id(source)] = source
    return list(found.values())


def _feeds_convolution(node: ov.Node) -> bool:
    """Whether a weight constant ends up in a convolution (directly or through BatchNorm folding)."""
    frontier = [t.get_node() for t in node.output(0).get_target_inputs()]
    for _ in range(3):
        if any(
            n.get_type_name() in ("Convolution", "GroupConvolution", "ConvolutionBackpropData")
            for n in frontier
        ):
            return True
        frontier = [
            t.get_node() for n in frontier if n.get_output_size() for t in n.output(0).get_target_inputs()
        ]
    return False


def _unsqueezed_copy(model: ov.Model, weight: np.ndarray) -> ov.Node | None:
    """The one float constant holding ``weight`` with leading unit axes added (a parameter used elementwise,
    such as NetVLAD's centroids, is folded with its ``unsqueeze`` and renamed)."""
    fits = [
        op
        for op in model.get_ops()
        if op.get_type_name() == "Constant"
        and op.get_element_type() == ov.Type.f32
        and len(op.get_output_shape(0)) > weight.ndim
        and list(op.get_output_shape(0)) == list(_reshaped(weight, len(op.get_output_shape(0))).shape)
        and np.array_equal(op.get_data().reshape(weight.shape), weight)
    ]
    return fits[0] if len(fits) == 1 else None


def _folded_scale(folded: np.ndarray, weight: np.ndarray) -> np.ndarray | None:
    """Per-output-channel factor ``s`` with ``folded == weight * s`` (OpenVINO folds BatchNorm this way)."""
    if folded.shape != weight.shape:
        return None
    f = folded.reshape(folded.shape[0], -1).astype(np.float64)
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    energy = (w * w).sum(1)
    s = np.where(energy > 0, (f * w).sum(1) / np.maximum(energy, 1e-300), 1.0)
    if not np.allclose(w * s[:, None], f, rtol=1e-5, atol=1e-6 * float(np.abs(f).max() or 1.0)):
        return None
    return s.astype(np.float32).reshape(-1, *([1] * (weight.ndim - 1)))


def compress_weights(
    model: ov.Model,
    storages: dict[str, WeightStorage],
    weights: dict[str, np.ndarray],
    fp16_codebooks: bool = False,
) -> dict[str, str]:
    """Replace the constants of compressed weights; returns ``{weight: element type stored}``.

    ``weights`` are the effective float values the converted model was built from. A weight whose constant
    OpenVINO has renamed and multiplied by a per-channel factor (BatchNorm folding) is found by its values
    and stored compressed times that factor; one transformed otherwise stays float and is reported ``f32``.
    """
    by_name = {
        op.get_friendly_name()[len(TORCH_CONST_PREFIX) :]: op
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and op.get_friendly_name().startswith(TORCH_CONST_PREFIX)
    }
    folded = [c for c in _weight_constants(model) if not c.get_friendly_name().startswith(TORCH_CONST_PREFIX)]
    # as for other float constants (float_constants_to_fp16): none in fp16 before a FakeQuantize
    upstream = _upstream_of_fake_quantize(model) if fp16_codebooks else set()
    stored: dict[str, str] = {}
    for name, storage in storages.items():
        if storage.kind == "float":
            continue
        scale: np.ndarray | None = None
        ndim = weights[name].ndim
        if name in by_name:
            source = by_name[name]
        elif (copy := _unsqueezed_copy(model, weights[name])) is not None:
            source, ndim = copy, len(copy.get_output_shape(0))
        else:  # renamed by a transformation: find the one constant that is this weight times a channel factor
            fits = [
                (c, f)
                for c in folded
                if list(c.get_output_shape(0)) == list(weights[name].shape)
                and (f := _folded_scale(c.get_data(), weights[name])) is not None
            ]
            if len(fits) != 1:
                stored[name] = "f32"
                continue
            source, scale = fits[0]
            folded.remove(source)
        if storage.kind == "codebook":
            fp16 = fp16_codebooks and source.get_friendly_name() not in upstream
            node, element_type = _codebook_subgraph(name, storage, fp16, ndim)
        else:
            node, element_type = _int_subgraph(name, storage, _feeds_convolution(source), ndim)
        if scale is not None:
            node = opset.multiply(
                node, opset.constant(scale, name=f"{name}/folded_scale"), name=f"{name}/folded"
            )
        if node.get_output_element_type(0) != source.get_element_type():  # an f16 / f64 / bf16 model
            node = opset.convert(node, source.get_element_type(), name=f"{name}/to_model_type")
        for target in list(source.output(0).get_target_inputs()):
            target.replace_source_output(node.output(0))
        stored[name] = element_type.get_type_name()
    model.validate_nodes_and_infer_types()
    return stored
