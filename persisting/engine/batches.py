"""Arrow record batches <-> WAL frame payloads (Arrow IPC; never pickle).

Payload = ``[u32 schema length][IPC schema message][IPC record batch message]``. Each frame
carries its own schema, so a frame can be read on its own even after the schema evolved.
"""

from __future__ import annotations

import struct

import pyarrow as pa

from persisting.errors import CorruptionError

__all__ = ["decode_batch", "encode_batch"]

_LEN = struct.Struct("<I")


class _SchemaCache:
    """Serialised schema of the last batch schema seen (schemas rarely change)."""

    def __init__(self) -> None:
        self.schema: pa.Schema | None = None
        self.data = b""

    def get(self, schema: pa.Schema) -> bytes:
        if self.schema is None or not schema.equals(self.schema, check_metadata=True):
            self.schema = schema
            self.data = schema.serialize().to_pybytes()
        return self.data


_cache = _SchemaCache()


def encode_batch(batch: pa.RecordBatch) -> list[bytes | pa.Buffer]:
    """The payload of one batch, as pieces for a vectored write."""
    schema = _cache.get(batch.schema)
    return [_LEN.pack(len(schema)), schema, batch.serialize()]


def _aligned_copy(buf: pa.Buffer) -> pa.Buffer:
    """Arrow (and Lance, over FFI) need aligned buffers; a frame inside a WAL segment is not."""
    out = pa.allocate_buffer(buf.size)
    memoryview(out).cast("B")[:] = memoryview(buf).cast("B")
    return out


def decode_batch(payload: memoryview | bytes, *, where: str = "WAL frame") -> pa.RecordBatch:
    """Inverse of :func:`encode_batch`; zero-copy over ``payload``."""
    try:
        (n,) = _LEN.unpack_from(payload, 0)
        buf = pa.py_buffer(payload)
        schema = pa.ipc.read_schema(buf.slice(_LEN.size, n))
        body = buf.slice(_LEN.size + n)
        if body.address % 64:
            body = _aligned_copy(body)
        return pa.ipc.read_record_batch(body, schema)
    except (pa.ArrowInvalid, struct.error, ValueError) as exc:
        raise CorruptionError(f"{where}: payload is not a valid Arrow batch: {exc}", where=where) from exc
