"""The Deep Compression archive: the smallest stored form of a compressed model, and its exact reader.

Every compressed weight is written as its symbol streams (relative indices of the non-zeros, value codes),
each Huffman coded where that is smaller than fixed width, plus its codebook or quantizer ranges; all other
parameters and buffers are written raw. ``load_archive`` returns the state dict of the uncompressed
architecture, with every weight equal to what the compressed model computes with (bit for bit, but for the
sign of zero: a quantizer's ``-0.0`` comes back as ``0.0``)::

    nncf_ext.save_archive(compressed_model, "model.dca")
    plain_model.load_state_dict(nncf_ext.load_archive("model.dca"))

File: ``MAGIC``, an 8-byte header length, a zlib-compressed JSON header (its ``format``: ``FORMAT``; formats 1
to 4 are read too), then the blobs it points to. The header holds the CRC-32 of the blobs, so a damaged
payload is refused rather than loaded as other weights (zlib checks the header itself). A float32 / float64
tensor whose every value is a float16 value is stored in 2 bytes per value and read back bit for bit; a model
passed through :func:`~nncf_ext.export.rounding.round_to_float16` keeps all its uncompressed floats so.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nncf.torch.function_hook.serialization import restore_module
from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE
from nncf.torch.quantization.layers import BaseQuantizer
from torch import nn

from nncf_ext.errors import CheckpointError, ExportError, ModelError
from nncf_ext.files import atomic_file
from nncf_ext.hooks import weight_hooks
from nncf_ext.huffman import BLOCK, MAX_LENGTH, Encoded, decode, encode
from nncf_ext.model import get_weight
from nncf_ext.serialization import ALLOWED_MODULES, _plain, _tuples
from nncf_ext.storage import (
    WeightStorage,
    as_float16,
    int_values,
    layer_streams,
    positions_from_codes,
    raw_array,
    storage_layout,
    weight_storage,
)

MAGIC = b"NNCFEXT-DC\x00\x01"
# 2: raw weight streams in the weight's dtype (1 wrote them as float32 whatever the dtype);
# 3: tied tensors as {"name", "alias_of"} entries, codebooks in the weight's dtype;
# 4: the CRC-32 of the payload in the header ("crc32");
# 5: float tensors that float16 holds exactly stored as float16 ("stored": "float16"). All five are read.
FORMAT = 5


# -- bit packing -----------------------------------------------------------------------------------------
def pack_fixed(symbols: np.ndarray, bits: int) -> bytes:
    """Non-negative integers in ``bits`` bits each, MSB first."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    planes = (symbols.astype(np.int64)[:, None] >> shifts) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1)).tobytes()


def unpack_fixed(data: bytes, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * bits].reshape(count, bits)
    return planes.astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


class _Blobs:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> dict[str, int]:
        ref = {"offset": self.size, "nbytes": len(data)}
        self.parts.append(data)
        self.size += len(data)
        return ref


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _tensor_blob(blobs: _Blobs, tensor: torch.Tensor, name: str) -> dict[str, Any]:
    half = as_float16(tensor)
    try:
        array = raw_array(tensor if half is None else half)
    except TypeError:
        raise ExportError(f"cannot store the tensor '{name}' of dtype {tensor.dtype}") from None
    ref = {**blobs.add(array.tobytes()), "dtype": _dtype_name(tensor.dtype), "shape": list(array.shape)}
    if half is not None:
        ref["stored"] = "float16"
    return ref


def _numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype a stored dtype's bytes are read as (bfloat16: its int16 bits)."""
    if name == "bfloat16":
        return np.dtype(np.int16)
    try:
        return np.dtype(name)
    except TypeError:
        raise CheckpointError(f"unknown dtype {name!r}") from None


def _from_numpy(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(array.copy())
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def _stored_dtype(ref: dict[str, Any], dtype: str) -> str:
    """The dtype a tensor of ``dtype`` was written in: its own, or float16 where that held it exactly."""
    stored = ref.get("stored", dtype)
    if stored != dtype and (stored != "float16" or dtype not in ("float32", "float64")):
        raise CheckpointError(f"a {dtype} tensor cannot be stored as {stored!r}")
    return str(stored)


class _Payload:
    """The blobs after the header; every read is checked to lie inside it and to have the expected size."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.end = 0  # end of the last blob read

    def blob(self, ref: dict[str, Any], nbytes: int) -> bytes:
        offset, size = int(ref["offset"]), int(ref["nbytes"])
        if size != nbytes:
            raise CheckpointError(f"a blob of {size} bytes where {nbytes} are expected")
        if offset < 0 or offset + size > len(self.data):
            raise CheckpointError(
                f"bytes {offset}..{offset + size} are outside the payload of {len(self.data)} bytes "
                "(truncated file?)"
            )
        self.end = max(self.end, offset + size)
        return bytes(self.data[offset : offset + size])

    def tensor(self, ref: dict[str, Any]) -> torch.Tensor:
        stored = _stored_dtype(ref, ref["dtype"])
        dtype = _numpy_dtype(stored)
        shape = [int(n) for n in ref["shape"]]
        data = self.blob(ref, int(np.prod(shape)) * dtype.itemsize)
        tensor = _from_numpy(np.frombuffer(data, dtype=dtype).reshape(shape), stored)
        return tensor if stored == ref["dtype"] else tensor.to(WEIGHT_DTYPES[ref["dtype"]])


# -- writer ----------------------------------------------------------------------------------------------
def _write_stream(blobs: _Blobs, stream: Any, dtype: str) -> dict[str, Any]:
    coding, _, _ = stream.stored_bits()
    entry: dict[str, Any] = {"name": stream.name, "count": int(stream.symbols.size), "coding": coding}
    if stream.is_raw:  # as stored: float16 where that holds every value, else the weight's dtype
        entry["data"] = blobs.add(stream.symbols.tobytes())
        if stream.symbols.dtype == np.float16 and dtype != "float16":
            entry["stored"] = "float16"
    elif coding == "fixed":
        entry.update(bits=stream.fixed_bits, data=blobs.add(pack_fixed(stream.symbols, stream.fixed_bits)))
    else:
        encoded = encode(stream.symbols, stream.alphabet)
        offsets = encoded.block_offsets.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :5]  # 40-bit offsets
        entry.update(
            alphabet=stream.alphabet,
            payload_bits=encoded.payload_bits,
            lengths=blobs.add(pack_fixed(encoded.lengths, 5)),
            offsets=blobs.add(offsets.tobytes()),
            data=blobs.add(encoded.data),
        )
    return entry


def _write_values(blobs: _Blobs, storage: WeightStorage, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": storage.kind, "bits": storage.bits, "alphabet": storage.alphabet}
    if storage.kind == "codebook":
        assert storage.codebook is not None
        entry["codebook"] = _tensor_blob(blobs, storage.codebook, f"{name} codebook")  # the weight's dtype
    elif storage.kind == "int":
        quantizer = storage.quantizer
        assert quantizer is not None
        entry["quantizer"] = {
            "module_path": type(quantizer).__module__,
            "module_cls_name": type(quantizer).__name__,
            "module_config": _plain(quantizer.get_config()),
            "state": {k: _tensor_blob(blobs, v, f"{name} {k}") for k, v in quantizer.state_dict().items()},
        }
    return entry


def _identity(tensor: torch.Tensor) -> tuple[Any, ...]:
    """Equal for two names of the same tensor (same memory, shape, strides and dtype)."""
    return (
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
    )


@dataclass
class ArchiveInfo:
    path: Path
    nbytes: int
    header_bytes: int
    layers: dict[str, dict[str, Any]]


def save_archive(model: nn.Module, path: str | Path) -> ArchiveInfo:
    """Write ``model`` (its compressed weights and everything else) as a Deep Compression archive."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"save_archive expects a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    blobs = _Blobs()
    tensors: list[dict[str, Any]] = []
    compressed = weight_hooks(model)
    for name, hooks in compressed.items():
        effective, storage = weight_storage(hooks, get_weight(model, name))
        layout = storage_layout(effective, storage)
        tensors.append(
            {
                "name": name,
                "shape": list(effective.shape),
                "dtype": _dtype_name(effective.dtype),
                "layout": {
                    "format": layout.format,
                    "index_bits": layout.index_bits,
                    "entries": layout.entries,
                },
                "values": _write_values(blobs, storage, name),
                "streams": [
                    _write_stream(blobs, s, _dtype_name(effective.dtype))
                    for s in layer_streams(effective, storage, layout)
                ],
            }
        )
    # a tensor the state dict lists under several names (tied weights) is stored once, the other names as
    # aliases, so a tied copy can neither cost its bytes again nor overwrite a compressed weight on loading
    stored = {_identity(get_weight(model, name)): name for name in compressed}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name in compressed or name.startswith(ATR_HOOK_STORAGE + ".") or f".{ATR_HOOK_STORAGE}." in name:
            continue
        key = _identity(tensor)
        if key in stored:
            tensors.append({"name": name, "alias_of": stored[key]})
            continue
        stored[key] = name
        tensors.append({"name": name, "raw": _tensor_blob(blobs, tensor.detach(), name)})
    crc = 0
    for part in blobs.parts:
        crc = zlib.crc32(part, crc)
    content = {"format": FORMAT, "block": BLOCK, "crc32": crc, "tensors": tensors}
    header = zlib.compress(json.dumps(content).encode(), 9)
    if path.is_dir():
        raise ExportError(f"cannot write the archive {path}: it is a directory")
    try:
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            for part in blobs.parts:
                f.write(part)
    except OSError as e:
        raise ExportError(f"cannot write the archive {path}: {e.strerror or e}") from None
    layers = {
        t["name"]: {"layout": t["layout"], "values": t["values"]["kind"]} for t in tensors if "layout" in t
    }
    return ArchiveInfo(path, path.stat().st_size, len(MAGIC) + 8 + len(header), layers)


# -- reader ----------------------------------------------------------------------------------------------
WEIGHT_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def _read_stream(payload: _Payload, entry: dict[str, Any], dtype: str) -> np.ndarray:
    """The symbols of a stream, or its raw values in the weight's ``dtype`` (bfloat16 as int16)."""
    count = int(entry["count"])
    if "bits" not in entry and "alphabet" not in entry:
        stored = _numpy_dtype(_stored_dtype(entry, dtype))
        values = np.frombuffer(payload.blob(entry["data"], count * stored.itemsize), dtype=stored)
        return values.astype(_numpy_dtype(dtype))  # a copy, in the weight's dtype
    if entry["coding"] == "fixed":
        bits = int(entry["bits"])
        return unpack_fixed(payload.blob(entry["data"], (count * bits + 7) // 8), bits, count)
    alphabet, payload_bits = int(entry["alphabet"]), int(entry["payload_bits"])
    lengths = unpack_fixed(payload.blob(entry["lengths"], (5 * alphabet + 7) // 8), 5, alphabet)
    if lengths.size and lengths.max() > MAX_LENGTH:
        raise CheckpointError(f"stream '{entry['name']}' has codes longer than {MAX_LENGTH} bits")
    blocks = -(-count // BLOCK)
    raw = np.frombuffer(payload.blob(entry["offsets"], 5 * blocks), dtype=np.uint8).reshape(-1, 5)
    offsets = np.concatenate([raw, np.zeros((raw.shape[0], 3), dtype=np.uint8)], axis=1).copy().view("<u8")
    data = payload.blob(entry["data"], (payload_bits + 7) // 8)
    encoded = Encoded(
        data, lengths.astype(np.uint8), offsets.reshape(-1).astype(np.int64), count, payload_bits
    )
    return decode(encoded)


def _decode_values(
    payload: _Payload,
    entry: dict[str, Any],
    codes: torch.Tensor,
    positions: torch.Tensor,
    shape: tuple[int, ...],
) -> torch.Tensor:
    """Values of the entries at ``positions`` from their codes."""
    if entry["kind"] == "codebook":
        return payload.tensor(entry["codebook"])[codes]
    q = entry["quantizer"]
    try:
        quantizer = restore_module(
            q["module_path"], q["module_cls_name"], _tuples(q["module_config"]), ALLOWED_MODULES
        )
    except Exception as e:
        raise CheckpointError(f"archive quantizer: {e}") from None
    if not isinstance(quantizer, BaseQuantizer):
        raise CheckpointError(f"archive quantizer: {q['module_cls_name']!r} is not a quantizer")
    quantizer.load_state_dict({k: payload.tensor(ref) for k, ref in q["state"].items()})
    return int_values(quantizer, codes, positions, shape)


def _read_weight(payload: _Payload, t: dict[str, Any], version: int) -> torch.Tensor:
    """A compressed weight, in the dtype it was saved with."""
    dtype = t["dtype"]
    if dtype not in WEIGHT_DTYPES:
        raise CheckpointError(f"unknown weight dtype {dtype!r}")
    shape = tuple(int(n) for n in t["shape"])
    numel = int(np.prod(shape))
    raw_dtype = "float32" if version == 1 else dtype
    streams = {s["name"]: _read_stream(payload, s, raw_dtype) for s in t["streams"]}
    values = streams["values"]
    if t["layout"]["format"] == "csr":
        positions = positions_from_codes(torch.from_numpy(streams["indices"]))
    else:
        positions = torch.arange(numel)
    if values.size != positions.numel() or (positions.numel() and int(positions[-1]) >= numel):
        raise CheckpointError(
            f"{values.size} values at {positions.numel()} positions do not fit {list(shape)}"
        )
    if t["values"]["kind"] == "float":
        decoded = _from_numpy(values, dtype)
    else:
        decoded = _decode_values(payload, t["values"], torch.from_numpy(values).long(), positions, shape)
    flat = torch.zeros(numel, dtype=WEIGHT_DTYPES[dtype])
    flat[positions] = decoded.to(flat.dtype)
    return flat.reshape(shape)


def load_archive(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in an archive, with compressed weights reconstructed exactly."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read the archive {path}: {e.strerror or e}") from None
    start = len(MAGIC) + 8
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an nncf-ext archive")
    if len(data) < start:
        raise CheckpointError(f"{path}: truncated archive header")
    (length,) = struct.unpack("<Q", data[len(MAGIC) : start])
    try:
        header = json.loads(zlib.decompress(data[start : start + length]))
        tensors, version = header["tensors"], header["format"]
    except (zlib.error, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt archive header ({e})") from None
    if version not in (1, 2, 3, 4, FORMAT):
        raise CheckpointError(
            f"{path}: archive format {version!r}; this nncf-ext reads formats 1 to {FORMAT} (a newer writer?)"
        )
    if not isinstance(tensors, list):
        raise CheckpointError(f"{path}: corrupt archive header ('tensors' is not a list)")
    payload = _Payload(memoryview(data)[start + length :])
    state: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for t in tensors:
        name = str(t.get("name")) if isinstance(t, dict) else "?"
        try:
            if "alias_of" in t:
                aliases[name] = str(t["alias_of"])
                continue
            state[name] = payload.tensor(t["raw"]) if "raw" in t else _read_weight(payload, t, version)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: tensor '{name}': {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise CheckpointError(
                f"{path}: tensor '{name}': malformed entry ({type(e).__name__}: {e})"
            ) from None
    for name, target in aliases.items():
        if target not in state:
            raise CheckpointError(f"{path}: tensor '{name}' is an alias of '{target}', which is not stored")
        state[name] = state[target]
    if payload.end != len(payload.data):
        raise CheckpointError(f"{path}: {len(payload.data) - payload.end} bytes after the last tensor's data")
    if version >= 4 and header.get("crc32") != zlib.crc32(payload.data):
        raise CheckpointError(f"{path}: the payload does not match its checksum (a damaged file)")
    return state
