"""Chunk rows of a KV cache namespace: the table schema, the layout every chunk shares, and the
copies of payload bytes into and out of Lance (any dtype, bfloat16 too, moved as bits).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from persisting.engine.payloads import PayloadColumn

__all__ = ["PAYLOADS", "SCHEMA", "META_COLUMNS", "Layout", "copy_chunk", "is_torch", "itemsize", "proxy"]

_BLOB = {"lance-encoding:blob": "true"}
SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("parent", pa.string(), nullable=False),
    pa.field("depth", pa.int32(), nullable=False),
    pa.field("dtype", pa.string(), nullable=False),
    pa.field("shape", pa.list_(pa.int64()), nullable=False),
    pa.field("token_axis", pa.int32(), nullable=False),
    pa.field("framework", pa.string(), nullable=False),
    pa.field("compression", pa.string()),
    pa.field("checksum", pa.binary(), nullable=False),
    pa.field("raw_nbytes", pa.int64(), nullable=False),
    pa.field("nbytes", pa.int64(), nullable=False),
    pa.field("payload", pa.large_binary(), metadata=_BLOB),
])
META_COLUMNS = ["key", "dtype", "shape", "token_axis", "compression", "checksum", "raw_nbytes"]
PAYLOADS = (PayloadColumn("payload", "checksum"),)  # what verify checks, by the engine's one rule

@dataclass(frozen=True)
class Layout:
    """What every chunk of a namespace shares: dtype, token axis and the other dimensions."""

    dtype: str
    token_axis: int
    other_dims: tuple[int, ...]

    def shape(self, n_tokens: int) -> tuple[int, ...]:
        dims = list(self.other_dims)
        dims.insert(self.token_axis, n_tokens)
        return tuple(dims)

    def describe(self) -> str:
        return f"dtype {self.dtype}, shape {self.shape(-1)} with tokens on axis {self.token_axis}".replace("-1", "seq")


def is_torch(x: object) -> bool:
    return type(x).__module__.startswith("torch") and "torch" in sys.modules


_ITEMSIZE = {"bool": 1, "uint8": 1, "int8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "uint16": 2, "int16": 2,
             "float16": 2, "bfloat16": 2, "uint32": 4, "int32": 4, "float32": 4, "uint64": 8, "int64": 8,
             "float64": 8, "complex64": 8, "complex128": 16}
_PROXY: dict[int, np.dtype[Any]] = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8"), 16: np.dtype("<c16")}


def itemsize(dtype: str) -> int:
    """Bytes per element of a stored dtype name."""
    return _ITEMSIZE[dtype]


def proxy(dtype: str) -> np.dtype:
    """An integer dtype of the same item size, to move elements of any dtype (bfloat16 too) as bits."""
    return _PROXY[_ITEMSIZE[dtype]]


def copy_chunk(kv: Any, axis: int, start: int, length: int, dest: np.ndarray, chunk_shape: tuple[int, ...]) -> None:
    """Copy kv[start:start+length] on ``axis`` into the byte buffer ``dest`` (C order), in one pass."""
    if is_torch(kv):
        import torch

        target = torch.from_numpy(dest).view(kv.dtype).view(chunk_shape)
        target.copy_(kv.detach().narrow(axis, start, length))
        return
    index = [slice(None)] * kv.ndim
    index[axis] = slice(start, start + length)
    np.copyto(dest.view(kv.dtype).reshape(chunk_shape), kv[tuple(index)], casting="no")

