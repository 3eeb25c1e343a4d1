"""Queue records (dicts) <-> Arrow batches, with the checks a record passes before it is stored.

The conversion rules are the engine's (:func:`persisting.engine.schema.records_to_batch`): this
module only adds fast paths for the common case (flat records of str, int, float, bool and bytes
values whose column types are new or equal to the stored ones), which build exactly the batch
the engine would and fall back to the engine on anything else, so errors and coercions are the
engine's. It also refuses records larger than the bucket's limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from persisting.engine.schema import records_to_batch
from persisting.errors import InvalidRecordError

__all__ = ["ScalarFields", "check_record", "check_records", "to_batch", "to_dicts"]
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)


def check_record(record: object) -> dict[str, Any]:
    """The record of a single ``put``: a non-empty dict, or InvalidRecordError."""
    if not isinstance(record, Mapping):
        hint = "; use put_batch for a list of records" if isinstance(record, (list, tuple)) else ""
        raise InvalidRecordError(
            f"a record must be a dict of field -> value, got {type(record).__name__}{hint}",
            value_type=type(record).__name__,
        )
    if not record:
        raise InvalidRecordError("a record must have at least one field, got an empty dict")
    return record  # type: ignore[return-value]


def check_records(records: object) -> list[dict[str, Any]]:
    """The records of a ``put_batch``: a list of non-empty dicts, or InvalidRecordError."""
    if not isinstance(records, (list, tuple)):
        raise InvalidRecordError(
            f"put_batch expects a list of dict records, got {type(records).__name__}",
            value_type=type(records).__name__,
        )
    if set(map(type, records)) <= {dict} and all(records):
        return records if isinstance(records, list) else list(records)
    for i, rec in enumerate(records):
        if type(rec) is not dict and not isinstance(rec, Mapping):
            raise InvalidRecordError(
                f"record {i} of the batch is a {type(rec).__name__}, not a dict; nothing was written",
                index=i,
            )
        if not rec:
            raise InvalidRecordError(f"record {i} of the batch is an empty dict; nothing was written", index=i)
    return list(records)


# Arrow type of a stored column -> the Python value types that convert to it exactly, as the
# engine's inference would (bool is not int; an int in a float column must be exact as a double).
_EXACT: dict[pa.DataType, tuple[type, ...]] = {
    pa.string(): (str,),
    pa.large_string(): (str,),
    pa.int64(): (int,),
    pa.float64(): (float, int),
    pa.bool_(): (bool,),
    pa.binary(): (bytes,),
    pa.large_binary(): (bytes,),
}

def _fast_batch(records: list[dict[str, Any]], schema: pa.Schema | None) -> pa.RecordBatch | None:
    """The engine's batch for uniform records of flat scalar columns whose types are new or equal
    to the stored ones, else None (and the engine converts)."""
    first = records[0]
    if type(first) is not dict:
        return None
    keys = first.keys()
    if any(type(k) is not str or not k for k in keys):
        return None
    if set(map(type, records)) != {dict} or sum(map(len, records)) != len(keys) * len(records):
        return None
    fields, arrays = [], []
    for name in keys:
        try:
            arr = pa.array([rec[name] for rec in records])  # KeyError: keys differ (same count)
        except (KeyError, pa.ArrowException, *_ARROW_ERRORS):
            return None
        if arr.type not in _EXACT:  # nested, temporal, null...: the engine's rules decide
            return None
        stored = schema.field(name) if schema is not None and name in schema.names else None
        if stored is not None and stored.type != arr.type:
            return None
        arrays.append(arr)
        fields.append(stored if stored is not None else pa.field(name, arr.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


_INT64 = (-(2**63), 2**63)
_EXACT_DOUBLE = 2**53


class ScalarFields:
    """The fast path for flat records: which Python value types each stored column takes.

    A record :meth:`matches` when every key is a stored scalar column and every value is None
    or of a type that column takes; such a record converts with the stored types to exactly
    the batch the engine would build (and raises no SchemaError), so it can skip inference.
    """

    def __init__(self, schema: pa.Schema | None) -> None:
        self.schema = schema
        self._accepts: dict[str, tuple[type, ...]] = {}
        self._fields: dict[str, pa.Field] = {}
        if schema is not None:
            for f in schema:
                types = _EXACT.get(f.type)
                if types is not None:
                    self._accepts[f.name] = types
                    self._fields[f.name] = f
        self._structs: dict[tuple[str, ...], pa.StructType] = {}

    def matches(self, record: dict[str, Any]) -> bool:
        accepts = self._accepts
        if type(record) is not dict or not record:
            return False
        for key, value in record.items():
            types = accepts.get(key)
            if types is None:
                return False
            if value is None:
                continue
            kind = type(value)
            if kind not in types:
                return False
            if kind is int:
                limit = _EXACT_DOUBLE if types[0] is float else None
                if limit is not None and not -limit <= value <= limit:
                    return False
                if not _INT64[0] <= value < _INT64[1]:
                    return False
        return True

    def batch(self, record: dict[str, Any]) -> pa.RecordBatch:
        """One matching record as a batch of its own columns, with their stored types."""
        keys = tuple(record)
        struct = self._structs.get(keys)
        if struct is None:
            struct = self._structs[keys] = pa.struct([self._fields[k] for k in keys])
        return pa.RecordBatch.from_struct_array(pa.array([record], type=struct))

    def run_batch(self, records: list[dict[str, Any]]) -> pa.RecordBatch:
        """Matching records as one batch with every stored column."""
        assert self.schema is not None
        return pa.RecordBatch.from_pylist(records, schema=self.schema)


def to_batch(
    records: list[dict[str, Any]],
    schema: pa.Schema | None,
    *,
    max_record_size: int | None = None,
) -> pa.RecordBatch:
    """Convert validated dict records to one Arrow batch against the table's ``schema``.

    Raises InvalidRecordError for a value Arrow cannot store, for records that hold nothing
    storable (only None in fields the bucket has never seen) and for a record over
    ``max_record_size`` bytes. Nothing is written by this function.
    """
    batch = _fast_batch(records, schema)
    if batch is None:
        try:
            batch = records_to_batch(records, schema)
        except pa.ArrowException as exc:  # e.g. a value too large for an Arrow array
            raise InvalidRecordError(f"the record(s) cannot be stored: {exc}") from exc
    if batch.num_columns == 0 or batch.num_rows != len(records):
        raise InvalidRecordError(
            "the record(s) hold only None values in fields this bucket has never stored, so their "
            "types cannot be known; give at least one field a value",
        )
    if max_record_size is not None and batch.get_total_buffer_size() > max_record_size:
        _check_sizes(batch, max_record_size)
    return batch


def _check_sizes(batch: pa.RecordBatch, limit: int) -> None:
    for i in range(batch.num_rows):
        size = batch.slice(i, 1).nbytes
        if size > limit:
            raise InvalidRecordError(
                f"record {i} takes {size} bytes, more than max_record_size={limit}; "
                "split it, store the payload elsewhere, or raise max_record_size",
                index=i,
                size=size,
            )


def to_dicts(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of ``table`` as dicts (fields a row never had read as None)."""
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows
