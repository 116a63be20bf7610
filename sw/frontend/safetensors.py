"""A numpy-only reader and writer of the safetensors format.

Layout of a file: an unsigned 64-bit little-endian header length ``N``; ``N`` bytes of UTF-8
JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the start of the data section) plus an optional ``"__metadata__"`` dict of strings;
then the raw little-endian tensor data, row-major.

Reading returns numpy arrays: F64/F32/F16 and the integer/bool dtypes keep their type; BF16 is
widened to float32 exactly (the 16 bits become the top half of a float32). F8 types are
rejected. Every problem is a :class:`ModelFormatError` naming the file and the tensor.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from sw.frontend.errors import ModelFormatError

__all__ = ["DTYPES", "read_header", "read_safetensors", "write_safetensors",
           "bf16_bits_to_f32", "f32_to_bf16_bits"]

# safetensors dtype name -> numpy dtype of the stored bytes (little-endian)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),          # raw bits; widened to float32 on read
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_KNOWN_UNSUPPORTED = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"}
_NP_TO_ST = {(d.kind, d.itemsize): k for k, d in DTYPES.items() if k != "BF16"}

MAX_HEADER_BYTES = 100 * 1024 * 1024   # the reference implementation's limit


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out = rounded.astype(np.uint16)
    out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def _parse_header(path: Path, blob_len: int, read) -> tuple[dict, dict, int]:
    """Returns (tensors-entries, metadata, data_start). ``read(n)`` reads from the file start."""
    name = str(path)
    if blob_len < 8:
        raise ModelFormatError(f"{name}: truncated safetensors file ({blob_len} bytes, "
                               f"the 8-byte header length is missing)")
    (n,) = struct.unpack("<Q", read(8))
    if n > blob_len - 8:
        raise ModelFormatError(f"{name}: header length {n} runs past the end of the file "
                               f"({blob_len} bytes); the file is truncated or not safetensors")
    if n > MAX_HEADER_BYTES:
        raise ModelFormatError(f"{name}: header length {n} is larger than the {MAX_HEADER_BYTES} "
                               f"byte limit")
    raw = read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{name}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{name}: header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{name}: __metadata__ is not a JSON object")
    data_start = 8 + n
    data_len = blob_len - data_start
    entries = {}
    spans = []
    for tname, info in header.items():
        where = f"{name}: tensor {tname}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise ModelFormatError(f"{where}: header entry needs dtype, shape and data_offsets")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype in _KNOWN_UNSUPPORTED:
            raise ModelFormatError(f"{where}: unsupported dtype {dtype}")
        if dtype not in DTYPES:
            raise ModelFormatError(f"{where}: unknown dtype {dtype!r}")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ModelFormatError(f"{where}: bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise ModelFormatError(f"{where}: bad data_offsets {offs!r}")
        begin, end = offs
        if begin < 0 or end < begin or end > data_len:
            raise ModelFormatError(f"{where}: data_offsets [{begin}, {end}] are out of range "
                                   f"(the data section has {data_len} bytes)")
        nbytes = int(np.prod(shape, dtype=object)) * DTYPES[dtype].itemsize
        if nbytes != end - begin:
            raise ModelFormatError(f"{where}: {dtype} {tuple(shape)} needs {nbytes} bytes but "
                                   f"data_offsets [{begin}, {end}] hold {end - begin}")
        entries[tname] = (dtype, tuple(shape), begin, end)
        if end > begin:
            spans.append((begin, end, tname))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ModelFormatError(f"{name}: tensors {n0} [{b0}, {e0}] and {n1} [{b1}, {e1}] "
                                   f"overlap")
    return entries, meta, data_start


def read_header(path) -> tuple[dict, dict]:
    """Validated header: ({name: (dtype, shape, begin, end)}, metadata)."""
    path = Path(path)
    size = _file_size(path)
    with open(path, "rb") as f:
        entries, meta, _ = _parse_header(path, size, f.read)
    return entries, meta


def _file_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: file not found") from None
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read ({e.strerror})") from None


def read_safetensors(path, with_metadata: bool = False):
    """Read every tensor of a safetensors file -> ``{name: np.ndarray}`` (and metadata if asked).

    Arrays are fresh, writable, native-endian copies; BF16 comes back as float32.
    """
    path = Path(path)
    size = _file_size(path)
    if size == 0:
        blob = b""
    else:
        try:
            blob = np.memmap(path, dtype=np.uint8, mode="r")
        except OSError as e:
            raise ModelFormatError(f"{path}: cannot read ({e.strerror})") from None
    pos = [0]

    def read(n):
        out = bytes(blob[pos[0]:pos[0] + n])
        pos[0] += n
        return out
    entries, meta, start = _parse_header(path, size, read)
    tensors = {}
    for tname, (dtype, shape, begin, end) in entries.items():
        raw = np.asarray(blob[start + begin:start + end]).view(DTYPES[dtype])
        if dtype == "BF16":
            arr = bf16_bits_to_f32(raw)
        else:
            arr = raw.astype(DTYPES[dtype].newbyteorder("="), copy=True)
        tensors[tname] = arr.reshape(shape)
    return (tensors, meta) if with_metadata else tensors


def write_safetensors(path, tensors: dict, metadata: dict | None = None,
                      dtypes: dict | None = None) -> None:
    """Write ``{name: array}`` to ``path``.

    ``dtypes`` optionally maps a tensor name to a safetensors dtype to store it as (e.g.
    ``"BF16"`` or ``"F16"`` for a float32 array); otherwise the array's own dtype is used.
    Tensors are laid out in the given order; the header is padded with spaces to a multiple of 8.
    """
    dtypes = dtypes or {}
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    chunks = []
    off = 0
    for tname, arr in tensors.items():
        arr = np.asarray(arr)
        st = dtypes.get(tname)
        if st == "BF16":
            data = f32_to_bf16_bits(arr.astype(np.float32)).astype("<u2")
        elif st is not None:
            if st not in DTYPES:
                raise ValueError(f"unknown safetensors dtype {st!r} for {tname}")
            data = arr.astype(DTYPES[st])
        else:
            st = _NP_TO_ST.get((arr.dtype.kind, arr.dtype.itemsize))
            if st is None:
                raise ValueError(f"cannot store {tname} of dtype {arr.dtype} in safetensors")
            data = arr.astype(DTYPES[st])
        b = np.ascontiguousarray(data).tobytes()
        header[tname] = {"dtype": st, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in chunks:
            f.write(b)
