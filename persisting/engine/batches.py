"""Arrow record batches <-> WAL frame payloads (Arrow IPC; never pickle).

Payload = ``[u32 schema length][IPC schema message][IPC record batch message]``. Each frame
carries its own schema, so a frame can be read on its own even after the schema evolved.
"""

from __future__ import annotations

import struct
from typing import Any

import pyarrow as pa

from persisting.errors import CorruptionError

__all__ = ["KnownSchemas", "decode_batch", "encode_batch", "serialized_schema"]

_LEN = struct.Struct("<I")


class KnownSchemas:
    """Batch schemas that were merged into a table's schema, each with its IPC serialisation.

    Evolution only grows and widens, so a batch schema that merged once merges again and changes
    nothing: appends of a known layout skip the vector fitting, the evolution checks and the
    schema serialisation of their WAL frame (together about half an append of a few hundred
    rows). A table sees a few layouts in turn (steps with and without a final observation,
    episode rows with more metadata at the end), so it keeps several, most recent first.
    """

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._entries: list[list[Any]] = []  # [schema, serialised schema or None]

    def find(self, schema: pa.Schema) -> list[Any] | None:
        """The entry of ``schema`` (metadata compared too), moved to the front; or None."""
        entries = self._entries
        for i, entry in enumerate(entries):
            if schema.equals(entry[0], check_metadata=True):
                if i:
                    entries.insert(0, entries.pop(i))
                return entry
        return None

    def add(self, schema: pa.Schema) -> list[Any]:
        entry = [schema, None]
        self._entries.insert(0, entry)
        del self._entries[self._size:]
        return entry

    def clear(self) -> None:
        """Forget every layout (the table's schema was reloaded and may be narrower)."""
        self._entries.clear()


def serialized_schema(entry: list[Any]) -> bytes:
    """The IPC schema message of a :class:`KnownSchemas` entry, made once."""
    if entry[1] is None:
        entry[1] = entry[0].serialize().to_pybytes()
    return entry[1]  # type: ignore[no-any-return]


def encode_batch(batch: pa.RecordBatch, schema: bytes | None = None) -> list[bytes | pa.Buffer]:
    """The payload of one batch, as pieces for a vectored write (``schema``: the batch schema's
    IPC message when the caller has it, see :class:`KnownSchemas`)."""
    if schema is None:
        schema = batch.schema.serialize().to_pybytes()
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
