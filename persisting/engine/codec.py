"""Tensors <-> bytes: dtype and shape kept apart, optional compression, a checksum per payload.

Payloads are the raw little-endian bytes of a C-contiguous tensor. dtype is a portable name
(``"bfloat16"``, ``"float32"``...) that both numpy and torch can be rebuilt from; shape is a
tuple. The checksum (xxh3-128, a fast library hash) covers the bytes as stored, so corruption
on disk is caught before decompression. Nothing here ever unpickles.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xxhash

from persisting.errors import ConfigError, CorruptionError, InvalidRecordError, SchemaError

__all__ = [
    "COMPRESSIONS",
    "FRAMEWORKS",
    "EncodedTensor",
    "check_framework",
    "checksum",
    "compress",
    "decode_tensor",
    "decompress",
    "dtype_name",
    "encode_tensor",
    "raw_view",
]

COMPRESSIONS = (None, "zstd", "lz4", "snappy")
Framework = Literal["numpy", "torch"]
FRAMEWORKS = ("numpy", "torch")

# portable name -> numpy dtype string (None: numpy has no native type for it)
_NUMPY_DTYPES: dict[str, str | None] = {
    "bool": "bool",
    "uint8": "uint8",
    "int8": "int8",
    "uint16": "uint16",
    "int16": "int16",
    "uint32": "uint32",
    "int32": "int32",
    "uint64": "uint64",
    "int64": "int64",
    "float16": "float16",
    "float32": "float32",
    "float64": "float64",
    "complex64": "complex64",
    "complex128": "complex128",
    "bfloat16": None,
    "float8_e4m3fn": None,
    "float8_e5m2": None,
}
_ITEMSIZE = {
    "bool": 1, "uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4,
    "uint64": 8, "int64": 8, "float16": 2, "float32": 4, "float64": 8, "complex64": 8,
    "complex128": 16, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
}


@dataclass(frozen=True)
class EncodedTensor:
    """A tensor ready to store: payload bytes plus what is needed to rebuild and verify it."""

    data: bytes | memoryview
    dtype: str
    shape: tuple[int, ...]
    checksum: bytes
    compression: str | None
    raw_nbytes: int


def checksum(data: bytes | memoryview) -> bytes:
    """The 16-byte xxh3-128 digest used for every payload checksum and content hash."""
    return xxhash.xxh3_128_digest(data)


def _check_compression(name: str | None) -> None:
    if name not in COMPRESSIONS:
        raise SchemaError(
            f"compression {name!r} is not supported; choose one of "
            f"{', '.join(repr(c) for c in COMPRESSIONS)}",
            compression=name,
        )


def compress(data: bytes | memoryview, name: str | None, *, level: int | None = None) -> bytes | memoryview:
    """Compress ``data`` with zstd, lz4 or snappy; ``None`` returns it unchanged (no copy)."""
    _check_compression(name)
    if name is None:
        return data
    if name == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3 if level is None else level).compress(data)
    if name == "lz4":
        import lz4.frame

        return lz4.frame.compress(data, compression_level=0 if level is None else level)
    import snappy

    return snappy.compress(bytes(data))


def decompress(data: bytes | memoryview, name: str | None, *, raw_nbytes: int | None = None) -> bytes | memoryview:
    """Inverse of :func:`compress`."""
    _check_compression(name)
    if name is None:
        return data
    if name == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(
            data, max_output_size=raw_nbytes or 0
        )
    if name == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    import snappy

    return snappy.decompress(bytes(data))


def check_framework(framework: object, *, allow_none: bool = False, what: str = "framework") -> None:
    """Raise ConfigError unless ``framework`` is one a tensor can be returned as."""
    if (framework is None and allow_none) or (isinstance(framework, str) and framework in FRAMEWORKS):
        return
    allowed = ", ".join(map(repr, FRAMEWORKS)) + (" or None (as stored)" if allow_none else "")
    raise ConfigError(f"{what}={framework!r} is not supported; use {allowed}", option=what)


def _is_torch(x: object) -> bool:
    return type(x).__module__.startswith("torch") and "torch" in sys.modules


def dtype_name(x: Any) -> str:
    """Portable dtype name of a numpy array or torch tensor (``"bfloat16"``, ``"int64"``...)."""
    if _is_torch(x):
        name = str(x.dtype).removeprefix("torch.")
    else:
        name = np.asarray(x).dtype.name if not isinstance(x, np.ndarray) else x.dtype.name
    if name not in _ITEMSIZE:
        raise InvalidRecordError(
            f"dtype {name!r} cannot be stored; supported: {', '.join(sorted(_ITEMSIZE))}",
            dtype=name,
        )
    return name


def raw_view(x: Any) -> tuple[memoryview, str, tuple[int, ...]]:
    """(bytes, dtype name, shape) of a numpy array or torch tensor: a zero-copy view of its
    memory (one copy only if it is not contiguous, little-endian and on the CPU). For callers
    that hash or chunk the bytes themselves; :func:`encode_tensor` adds compression and a checksum."""
    if _is_torch(x):
        import torch

        t = x.detach()
        _check_torch_storable(t)
        if t.device.type != "cpu":
            t = t.cpu()
        name = dtype_name(t)
        t = t.resolve_conj().resolve_neg()  # lazy conjugate/negative views: store their values
        shape = tuple(int(s) for s in t.shape)
        flat = t.contiguous().reshape(-1)
        if flat.numel() == 1 and flat.stride(0) != 1:  # torch calls a 1-element view contiguous
            flat = torch.empty(1, dtype=flat.dtype).copy_(flat)
        raw = flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)
        return memoryview(raw).cast("B"), name, shape  # type: ignore[arg-type]
    if not isinstance(x, np.ndarray):
        raise InvalidRecordError(
            f"expected a numpy array or torch tensor, got {type(x).__name__}", value_type=type(x).__name__
        )
    name = dtype_name(x)
    arr = np.ascontiguousarray(x)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return memoryview(arr.reshape(-1).view(np.uint8)), name, tuple(int(s) for s in x.shape)  # type: ignore[arg-type]


def _check_torch_storable(t: Any) -> None:
    """Refuse tensors without plain dense memory to copy out, naming what to do instead."""
    import torch

    problem = None
    if t.device.type == "meta":
        problem = "is on the 'meta' device and holds no data; materialise it first (e.g. to_empty + init)"
    elif getattr(t, "is_nested", False):
        problem = "is a nested tensor; store its components (unbind()) instead"
    elif t.layout != torch.strided:
        problem = f"has layout {t.layout}; store it dense (to_dense()) or store its indices and values"
    if problem is not None:
        raise InvalidRecordError(f"cannot store this tensor: it {problem}", value_type=type(t).__name__)


def encode_tensor(x: Any, *, compression: str | None = None, level: int | None = None) -> EncodedTensor:
    """Turn a numpy array or torch tensor (any dtype, bfloat16 included) into an EncodedTensor.

    Without compression the payload is a view of the tensor's memory, not a copy: store it
    before the caller mutates the tensor.
    """
    raw, name, shape = raw_view(x)
    data = compress(raw, compression, level=level)
    return EncodedTensor(
        data=data,
        dtype=name,
        shape=shape,
        checksum=checksum(data),
        compression=compression,
        raw_nbytes=raw.nbytes,
    )


def _numpy_dtype(name: str) -> np.dtype:
    np_name = _NUMPY_DTYPES.get(name)
    if np_name is not None:
        return np.dtype(np_name)
    try:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    except (ImportError, AttributeError):
        raise SchemaError(
            f"dtype {name!r} has no numpy equivalent; load it as torch "
            "(framework='torch') or install ml_dtypes",
            dtype=name,
        ) from None


def decode_tensor(
    data: bytes | memoryview,
    *,
    dtype: str,
    shape: tuple[int, ...] | list[int],
    checksum_: bytes | None = None,
    compression: str | None = None,
    framework: Framework = "numpy",
    where: str = "payload",
    copy: bool = True,
) -> Any:
    """Rebuild a tensor from stored bytes, verifying the checksum first.

    A payload whose checksum does not match raises :class:`CorruptionError` naming ``where``;
    it is never returned as data. ``copy=False`` returns a read-only numpy view when possible.
    """
    check_framework(framework)
    if dtype not in _ITEMSIZE:
        raise SchemaError(f"{where}: unknown stored dtype {dtype!r}", dtype=dtype)
    if checksum_ is not None and checksum(data) != bytes(checksum_):
        raise CorruptionError(f"{where}: checksum mismatch; the stored bytes are corrupt", where=where)
    _check_compression(compression)
    shape = tuple(int(s) for s in shape)
    expected = _ITEMSIZE[dtype] * int(np.prod(shape, dtype=np.int64))
    try:
        raw = decompress(data, compression, raw_nbytes=expected)
    except Exception as exc:
        raise CorruptionError(f"{where}: cannot decompress ({compression}): {exc}", where=where) from exc
    if len(raw) != expected:
        raise CorruptionError(
            f"{where}: holds {len(raw)} bytes but dtype {dtype} and shape {shape} need {expected}",
            where=where,
        )
    flat = np.frombuffer(raw, dtype=np.uint8)
    if framework == "torch":
        import torch

        flat = flat.copy() if (copy or not flat.flags.writeable) else flat
        t = torch.from_numpy(flat)
        return t.view(getattr(torch, dtype)).reshape(shape) if expected else torch.empty(shape, dtype=getattr(torch, dtype))
    arr = flat.view(_numpy_dtype(dtype)).reshape(shape)
    return arr.copy() if copy else arr
