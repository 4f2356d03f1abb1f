"""Writing saved arrays to files other tools read: safetensors and NumPy `.npz`.

Both writers stream: the caller hands arrays over in chunks, so a checkpoint larger than host
memory can be exported. The safetensors file is written directly in its documented format
(an 8-byte little-endian header size, a JSON header, then the raw bytes of each tensor in
order), which also covers bfloat16, which `safetensors.numpy` cannot save. Names are the leaf
paths (`model/linear/kernel`). Files are written beside the target and renamed into place,
so an interrupted export never leaves a truncated file under the requested name.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

Format = Literal["safetensors", "npz"]

# safetensors dtype codes (https://github.com/huggingface/safetensors, "Format").
_SAFETENSORS_DTYPES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "uint16": "U16",
    "int16": "I16",
    "float16": "F16",
    "bfloat16": "BF16",
    "uint32": "U32",
    "int32": "I32",
    "float32": "F32",
    "uint64": "U64",
    "int64": "I64",
    "float64": "F64",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}
SAFETENSORS_NAMES = {code: name for name, code in _SAFETENSORS_DTYPES.items()}
"""The dtype name of each safetensors code written here; `_weights` reads the same ones."""


class UnsupportedDtypeError(ValueError):
    """A leaf whose dtype the chosen format cannot hold."""


def safetensors_dtype(dtype: str, path: str) -> str:
    """The safetensors code of a NumPy dtype name; raises for dtypes it has none for."""
    try:
        return _SAFETENSORS_DTYPES[dtype]
    except KeyError:
        raise UnsupportedDtypeError(
            f"leaf {path} has dtype {dtype}, which safetensors cannot store (it stores "
            f"{', '.join(sorted(_SAFETENSORS_DTYPES))}). Export to npz instead, or leave "
            "this leaf out."
        ) from None


def write(
    target: str,
    fmt: Format,
    shapes: Mapping[str, tuple[tuple[int, ...], str, int]],
    chunks: Iterable[Mapping[str, np.ndarray[Any, Any]]],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write the arrays yielded by `chunks` to `target` in format `fmt`.

    `shapes` maps every path to `(shape, dtype name, itemsize)` in the order the chunks yield
    them; the safetensors header is written from it before any array arrives.
    """
    partial = f"{target}.roxxel-partial"
    try:
        if fmt == "safetensors":
            _write_safetensors(partial, shapes, chunks, metadata or {})
        else:
            _write_npz(partial, chunks)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _write_safetensors(
    target: str,
    shapes: Mapping[str, tuple[tuple[int, ...], str, int]],
    chunks: Iterable[Mapping[str, np.ndarray[Any, Any]]],
    metadata: Mapping[str, str],
) -> None:
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for path, (shape, dtype, itemsize) in shapes.items():
        size = math.prod(shape) * itemsize
        header[path] = {
            "dtype": safetensors_dtype(dtype, path),
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    expected = iter(shapes)
    with open(target, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for chunk in chunks:
            for path, array in chunk.items():
                if next(expected, None) != path:
                    raise AssertionError(f"export: {path} arrived out of order")
                f.write(np.ascontiguousarray(array).tobytes())


def _write_npz(target: str, chunks: Iterable[Mapping[str, np.ndarray[Any, Any]]]) -> None:
    # What numpy.savez does, one array at a time, so that nothing else is held in memory.
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for chunk in chunks:
            for path, array in chunk.items():
                with zf.open(f"{path}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
