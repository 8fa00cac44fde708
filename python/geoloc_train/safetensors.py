"""Reader and writer of the safetensors file format, written for geoloc.

Layout of a file (all integers little-endian):

    bytes 0..8        u64 N: size of the JSON header in bytes
    bytes 8..8+N      JSON object, UTF-8; padded with spaces (0x20) so that
                      8+N is a multiple of 8 (the data section starts aligned)
    bytes 8+N..       data section: the tensors' bytes, row-major (C order)

The JSON header maps each tensor name to
    {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
with offsets relative to the start of the data section, and may hold a
"__metadata__" entry: an object whose values are all strings.

geoloc's writer starts every tensor at an offset that is a multiple of 8
(ALIGN), so that a reader that maps the file can point typed pointers at
tensors directly; the bytes skipped for that (at most 7 between two tensors)
are zero.  NOTE: the upstream Rust/Python `safetensors` library insists on a
data section without any gap, so it rejects our files whenever a tensor's
byte size is not a multiple of 8 (e.g. a 1001-element bias).  Our reader
accepts both: gap-free files and files with alignment gaps of < 8 bytes.

We wrote our own instead of depending on the `safetensors` package because
Debian 12 does not ship it, and because the C engine's reader must follow the
same rules; this module is their executable specification.

geoloc model files carry in "__metadata__":
    "format": "geoloc-model", "format_version": "1",
    "config": the model's architecture config as a JSON string
(see model.py).  This module does not interpret them.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from typing import Dict, Mapping, Optional, Tuple

import torch

ALIGN = 8
# A header larger than this is certainly not one of ours; refusing it early
# keeps a corrupt size field from making us allocate gigabytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype name -> (torch dtype, bytes per element)
DTYPES: Dict[str, Tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
_DTYPE_NAMES = {t: name for name, (t, _) in DTYPES.items()}


class SafetensorsError(ValueError):
    """A file that is not valid safetensors; the message says what is wrong."""


def _align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the same 2-byte patterns.
        t = t.view(torch.int16)
    data = t.numpy().tobytes()
    if sys.byteorder != "little" and t.element_size() > 1:
        raise SafetensorsError("writing on a big-endian host is not supported")
    return data


def dumps(tensors: Mapping[str, torch.Tensor],
          metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """Serialise tensors (name -> tensor) and string metadata to bytes.

    Tensors are written in name order so that the same inputs always give
    the same bytes (the test vectors and the determinism test rely on it).
    """
    header: Dict[str, object] = {}
    if metadata is not None:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise SafetensorsError(
                    f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise SafetensorsError("'__metadata__' is reserved and cannot name a tensor")
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise SafetensorsError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.dtype not in _DTYPE_NAMES:
            raise SafetensorsError(f"tensor {name!r} has unsupported dtype {t.dtype}")
        data = _tensor_bytes(t)
        begin = _align_up(offset)
        if begin > offset:
            chunks.append(b"\0" * (begin - offset))
        chunks.append(data)
        offset = begin + len(data)
        header[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [begin, offset],
        }
    hjson = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    hlen = _align_up(8 + len(hjson)) - 8
    hjson += b" " * (hlen - len(hjson))
    return struct.pack("<Q", hlen) + hjson + b"".join(chunks)


def save(path: str, tensors: Mapping[str, torch.Tensor],
         metadata: Optional[Mapping[str, str]] = None) -> None:
    data = dumps(tensors, metadata)
    with open(path, "wb") as f:
        f.write(data)


def _no_duplicate_keys(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise SafetensorsError(f"header: duplicate key {k!r}")
        d[k] = v
    return d


def _is_int(x) -> bool:
    # JSON true/false parse as bool, which is a subclass of int in Python.
    return isinstance(x, int) and not isinstance(x, bool)


def loads(data: bytes) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Parse and validate a safetensors file image; return (tensors, metadata).

    Every rule a C reader must also enforce is checked here, each with its
    own message: header size, JSON syntax, entry fields, dtype, byte size
    against shape, offsets in range, overlaps and gaps.
    """
    data = memoryview(data)
    if len(data) < 8:
        raise SafetensorsError(f"file is {len(data)} bytes, shorter than the 8-byte header size field")
    (hlen,) = struct.unpack_from("<Q", data, 0)
    if hlen < 2:
        raise SafetensorsError(f"header size {hlen} is too small for a JSON object")
    if hlen > MAX_HEADER_BYTES:
        raise SafetensorsError(f"header size {hlen} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if 8 + hlen > len(data):
        raise SafetensorsError(
            f"header size {hlen} runs past the end of the file ({len(data)} bytes)")
    raw = bytes(data[8:8 + hlen])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"header is not UTF-8: {e}") from None
    if not text.startswith("{"):
        raise SafetensorsError("header does not start with '{'")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise SafetensorsError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError("__metadata__ must be an object mapping strings to strings")

    buf = data[8 + hlen:]
    entries = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise SafetensorsError(f"tensor {name!r}: entry is not an object")
        if set(entry) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(
                f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets; "
                f"has {sorted(entry)}")
        dtype = entry["dtype"]
        if dtype not in DTYPES:
            raise SafetensorsError(
                f"tensor {name!r}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise SafetensorsError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        offs = entry["data_offsets"]
        if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs)):
            raise SafetensorsError(f"tensor {name!r}: data_offsets {offs!r} is not [begin, end]")
        begin, end = offs
        if not (0 <= begin <= end <= len(buf)):
            raise SafetensorsError(
                f"tensor {name!r}: data_offsets [{begin}, {end}] out of range of the "
                f"{len(buf)}-byte data section")
        tdtype, size = DTYPES[dtype]
        nbytes = math.prod(shape) * size
        if end - begin != nbytes:
            raise SafetensorsError(
                f"tensor {name!r}: {end - begin} bytes at data_offsets but dtype {dtype} "
                f"and shape {shape} need {nbytes}")
        if begin % size != 0:
            raise SafetensorsError(
                f"tensor {name!r}: offset {begin} is not aligned to its {size}-byte elements")
        entries.append((begin, end, name, tdtype, shape))

    # Tensors must tile the data section in offset order: no overlap, and no
    # gap other than zero padding up to the next 8-byte boundary.
    entries.sort(key=lambda e: (e[0], e[1]))
    prev_end, prev_name = 0, None
    for begin, end, name, _, _ in entries:
        if begin < prev_end:
            raise SafetensorsError(f"tensor {name!r} overlaps tensor {prev_name!r}")
        if begin != prev_end and begin != _align_up(prev_end):
            raise SafetensorsError(
                f"tensor {name!r} starts at {begin}, leaving a gap after byte {prev_end} "
                f"that is not alignment padding")
        if any(buf[prev_end:begin]):
            raise SafetensorsError(f"non-zero padding bytes before tensor {name!r}")
        prev_end, prev_name = end, name
    if len(buf) != prev_end and len(buf) != _align_up(prev_end):
        raise SafetensorsError(
            f"data section is {len(buf)} bytes but the tensors end at {prev_end}: trailing bytes")
    if any(buf[prev_end:]):
        raise SafetensorsError("non-zero padding bytes after the last tensor")

    tensors: Dict[str, torch.Tensor] = {}
    for begin, end, name, tdtype, shape in entries:
        chunk = bytearray(buf[begin:end])  # a private, writable copy
        if tdtype == torch.bfloat16:
            t = torch.frombuffer(chunk, dtype=torch.int16).view(torch.bfloat16) if chunk else \
                torch.empty(0, dtype=tdtype)
        else:
            t = torch.frombuffer(chunk, dtype=tdtype) if chunk else torch.empty(0, dtype=tdtype)
        tensors[name] = t.reshape(shape)
    return tensors, metadata


def load(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return loads(data)
    except SafetensorsError as e:
        raise SafetensorsError(f"{path}: {e}") from None
