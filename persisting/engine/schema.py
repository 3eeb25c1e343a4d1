"""Python records -> Arrow batches, and the rules by which a table's schema may evolve.

Evolution rules (DESIGN.md): a new field becomes a nullable column; compatible widening
(int32 -> int64, int -> float, float32 -> float64, string -> large_string, binary ->
large_binary, and the same inside list types) is applied; anything else raises SchemaError
naming the field, the stored type and the offered type, and changes nothing.

Field names are checked here too, whatever the records came as (dicts or Arrow): a name Lance
cannot commit or query (see :func:`persisting.engine.names.field_name_problem`) raises
InvalidRecordError naming the field before anything is logged or buffered, so an acknowledged
row can never make the table uncommittable.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from persisting.engine.names import field_name_problem
from persisting.engine.wal import LostRange, ReplayReport
from persisting.errors import InvalidRecordError, SchemaError

__all__ = [
    "Evolution",
    "check_field_names",
    "conform",
    "conform_many",
    "evolve",
    "fit_vectors",
    "records_to_batch",
    "screen_replayed",
]


@dataclass(frozen=True)
class Evolution:
    """The outcome of offering a batch schema to a stored schema."""

    schema: pa.Schema
    added: tuple[str, ...]
    widened: tuple[str, ...]


def records_to_batch(records: Sequence[Mapping[str, object]], schema: pa.Schema | None = None) -> pa.RecordBatch:
    """Convert a list of dict records into one Arrow batch, validating every record first.

    Fields already in ``schema`` are converted to their stored type when the values fit;
    other fields are inferred. A value Arrow cannot store raises InvalidRecordError naming the
    field and the record's index; nothing is half-converted.
    """
    if isinstance(records, Mapping) or not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise InvalidRecordError(
            f"expected a list of dict records, got {type(records).__name__}", value_type=type(records).__name__
        )
    names: dict[str, None] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise InvalidRecordError(
                f"record {i} is a {type(rec).__name__}, not a dict; records must be dicts of field -> value",
                index=i,
            )
        for key in rec:
            if not isinstance(key, str) or not key:
                raise InvalidRecordError(
                    f"record {i} has field name {key!r}; field names must be non-empty str", index=i, field=key
                )
            names[key] = None
    arrays, fields = [], []
    for name in names:
        values = [rec.get(name) for rec in records]
        at = schema.get_field_index(name) if schema is not None else -1  # O(1): tables can be wide
        stored = schema.field(at) if at >= 0 else None
        arr = _to_array(name, values, stored.type if stored is not None else None)
        if pa.types.is_null(arr.type) and stored is None:
            continue  # an all-null field with no known type reads as null anyway
        arrays.append(arr)
        fields.append(stored if stored is not None and stored.type == arr.type else pa.field(name, arr.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _to_array(name: str, values: list[object], known: pa.DataType | None) -> pa.Array:
    """Infer the values' type; use the stored type only where converting to it loses nothing
    the caller did not ask for (pa.array would silently truncate 4.5 into an int64 4)."""
    for i, v in enumerate(values):
        if isinstance(v, (set, frozenset)):
            raise InvalidRecordError(
                f"field {name!r}: record {i} holds a {type(v).__name__}, which has no order; "
                "store a sorted list instead",
                field=name,
                index=i,
            )
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        arr, error = None, exc
    if known is not None and (arr is None or pa.types.is_null(arr.type) or
                              (_widen(known, arr.type) != known and _float_like(known)) or
                              (pa.types.is_integer(known) and pa.types.is_integer(arr.type))):
        try:
            return pa.array(values, type=known)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass
    if arr is not None:
        return arr
    bad = _first_bad(values)
    raise InvalidRecordError(
        f"field {name!r}: record {bad} holds a value of type {type(values[bad]).__name__} "
        f"that cannot be stored ({error})",
        field=name,
        index=bad,
    ) from None


def _float_like(t: pa.DataType) -> bool:
    """Floating types and lists of them: declared precision (e.g. float32 vectors) wins."""
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return pa.types.is_floating(t)


def _first_bad(values: list[object]) -> int:
    """Index of the first value that cannot be converted, or that clashes with the first
    non-null value's type (what made inference of the whole column fail)."""
    first: pa.DataType | None = None
    for i, v in enumerate(values):
        try:
            t = pa.array([v]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return i
        if pa.types.is_null(t):
            continue
        if first is None:
            first = t
        elif _widen(first, t) is None:
            return i
    return 0


def _widen(stored: pa.DataType, offered: pa.DataType) -> pa.DataType | None:
    """The type both fit in, or None when they are incompatible."""
    if stored == offered or pa.types.is_null(offered):
        return stored
    if pa.types.is_null(stored):
        return offered
    ints = pa.types.is_integer
    floats = pa.types.is_floating
    if ints(stored) and ints(offered):
        if pa.types.is_signed_integer(stored) == pa.types.is_signed_integer(offered):
            return stored if stored.bit_width >= offered.bit_width else offered
        signed, unsigned = (stored, offered) if pa.types.is_signed_integer(stored) else (offered, stored)
        if signed.bit_width > unsigned.bit_width:
            return signed
        return pa.int64() if unsigned.bit_width < 64 else None
    if (ints(stored) or floats(stored)) and (ints(offered) or floats(offered)):
        if floats(stored) and floats(offered):
            return stored if stored.bit_width >= offered.bit_width else offered
        return stored if floats(stored) else pa.float64()
    pairs = {
        (pa.string(), pa.large_string()),
        (pa.binary(), pa.large_binary()),
    }
    for small, large in pairs:
        if {stored, offered} <= {small, large}:
            return large
    list_like = (pa.types.is_list, pa.types.is_large_list)
    if any(f(stored) for f in list_like) and any(f(offered) for f in list_like):
        inner = _widen(stored.value_type, offered.value_type)
        if inner is None:
            return None
        large = pa.types.is_large_list(stored) or pa.types.is_large_list(offered)
        return pa.large_list(inner) if large else pa.list_(inner)
    if pa.types.is_fixed_size_list(stored) and (
        pa.types.is_list(offered) or pa.types.is_large_list(offered) or pa.types.is_fixed_size_list(offered)
    ):
        if pa.types.is_fixed_size_list(offered) and offered.list_size != stored.list_size:
            return None
        if pa.types.is_floating(stored.value_type) and _numeric(offered.value_type):
            return stored  # a declared float vector keeps its precision (fit_vectors casts and checks lengths)
        inner = _widen(stored.value_type, offered.value_type)
        return stored if inner == stored.value_type else None
    return None


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def fit_vectors(batch: pa.RecordBatch, stored: pa.Schema | None) -> pa.RecordBatch:
    """Cast list columns offered for fixed-size list columns (declared vectors) to the stored
    type now, so a row of the wrong length raises InvalidRecordError naming the field and the
    row before it is logged, instead of an acknowledged row that can never be committed."""
    if stored is None:
        return batch
    out = batch
    for i, f in enumerate(batch.schema):
        t = f.type
        if not isinstance(t, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
            continue
        j = stored.get_field_index(f.name)
        if j < 0 or not pa.types.is_fixed_size_list(stored.field(j).type) or t == stored.field(j).type:
            continue
        want = stored.field(j).type
        if pa.types.is_fixed_size_list(t) or not _numeric(t.value_type) or not _numeric(want.value_type):
            continue  # evolve() decides: same length or a SchemaError naming the field
        col = batch.column(i)
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        bad = [r for r, n in enumerate(lengths) if n == n and n is not None and int(n) != want.list_size]
        if bad:
            raise InvalidRecordError(
                f"field {f.name!r} holds vectors of {want.list_size} values, but record {bad[0]} offers "
                f"{int(lengths[bad[0]])}; nothing was written",
                field=f.name, index=bad[0], dimension=want.list_size, offered=int(lengths[bad[0]]),
            )
        out = out.set_column(i, pa.field(f.name, want, nullable=True, metadata=f.metadata), col.cast(want))
    return out


def check_field_names(schema: pa.Schema, known: pa.Schema | Collection[str] | None = None) -> None:
    """Raise InvalidRecordError for the first field of ``schema`` (not in ``known``, the names
    already stored) whose name, or whose nested struct field's name, Lance cannot store."""
    names = schema.names
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InvalidRecordError(
            f"field {dup!r} appears twice in the offered columns; give each column its own name",
            field=dup, reason="duplicate",
        )
    for f in schema:
        if known is None:
            stored = False
        elif isinstance(known, pa.Schema):
            stored = known.get_field_index(f.name) >= 0
        else:
            stored = f.name in known
        if not stored:
            _check_field(f.name, f.type, (), top_level=True)


def _check_field(name: object, t: pa.DataType, parents: tuple[str, ...], *, top_level: bool) -> None:
    problem = field_name_problem(name, top_level=top_level)
    path = (*parents, str(name))
    if problem is not None:
        where = f" (inside {' -> '.join(map(repr, parents))})" if parents else ""
        raise InvalidRecordError(
            f"field name {name!r}{where} {problem}; nothing was written",
            field=" -> ".join(path), reason=problem,
        )
    _check_type(t, path)


def _check_type(t: pa.DataType, path: tuple[str, ...]) -> None:
    """The struct fields inside ``t`` (also inside lists and maps, whose own element field
    names are Arrow's, not the caller's)."""
    if pa.types.is_struct(t):
        children = [t.field(i).name for i in range(t.num_fields)]
        if len(set(children)) != len(children):
            dup = next(n for n in children if children.count(n) > 1)
            raise InvalidRecordError(
                f"field {dup!r} appears twice inside {' -> '.join(map(repr, path))}; nothing was written",
                field=" -> ".join((*path, dup)), reason="duplicate",
            )
        for i in range(t.num_fields):
            _check_field(t.field(i).name, t.field(i).type, path, top_level=False)
    elif pa.types.is_map(t):
        _check_type(t.key_type, path)
        _check_type(t.item_type, path)
    elif isinstance(t, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
        _check_type(t.value_type, path)


def evolve(stored: pa.Schema | None, offered: pa.Schema) -> Evolution:
    """Merge ``offered`` into ``stored`` by the evolution rules, or raise SchemaError
    (InvalidRecordError for a new field whose name Lance cannot store). Costs O(offered)
    lookups, so appending a few columns at a time to a wide table stays cheap."""
    check_field_names(offered, stored)
    if stored is None:
        return Evolution(offered, tuple(offered.names), ())
    schema = stored
    added, widened = [], []
    for f in offered:
        i = stored.get_field_index(f.name)
        if i < 0:
            schema = schema.append(pa.field(f.name, f.type, nullable=True, metadata=f.metadata))
            added.append(f.name)
            continue
        old = stored.field(i)
        merged = _widen(old.type, f.type)
        if merged is None:
            raise SchemaError(
                f"field {f.name!r} is stored as {old.type} but a record offers {f.type}; "
                "only new fields and widening (int32->int64, int->float, float32->float64) are allowed",
                field=f.name,
                stored_type=str(old.type),
                offered_type=str(f.type),
            )
        if merged != old.type:
            schema = schema.set(i, old.with_type(merged))
            widened.append(f.name)
    return Evolution(schema, tuple(added), tuple(widened))


def conform(batch: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast ``batch`` to ``schema``: missing fields become nulls, narrower types are widened."""
    have = {name: i for i, name in enumerate(batch.schema.names)}
    columns = []
    for f in schema:
        i = have.get(f.name)
        columns.append(pa.nulls(batch.num_rows, type=f.type) if i is None else _cast(batch.column(i), f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def conform_many(batches: Sequence[pa.RecordBatch], schema: pa.Schema, *, copy: bool = True) -> pa.Table:
    """:func:`conform` of every batch, concatenated into one chunk per column.

    Works per column rather than per batch: the batches missing a column in a row become one
    run of nulls, so many narrow batches of a wide table (each adding a field) cost what their
    values cost, not batches x columns small arrays (2,000 x 2,000 took minutes to commit).
    With ``copy=False`` a column whose pieces are large (on average >= 64Ki rows, or MiB-sized
    binary payloads) stays a chunked array of them: a writer gains nothing from one chunk.
    """
    if len(batches) == 1 or not all(isinstance(b, pa.RecordBatch) for b in batches):
        return pa.concat_tables([conform(b, schema) for b in batches])
    starts = [0]
    for b in batches:
        starts.append(starts[-1] + b.num_rows)
    present: dict[str, list[tuple[int, pa.Array]]] = {}
    for k, b in enumerate(batches):
        for name, col in zip(b.schema.names, b.columns):
            present.setdefault(name, []).append((k, col))
    columns = []
    for f in schema:
        pieces, row = [], 0
        for k, col in present.get(f.name, ()):
            if starts[k] > row:
                pieces.append(pa.nulls(starts[k] - row, type=f.type))
            pieces.append(_cast(col, f.type))
            row = starts[k + 1]
        if starts[-1] > row:
            pieces.append(pa.nulls(starts[-1] - row, type=f.type))
        if len(pieces) == 1:
            columns.append(pieces[0])
        elif _payload_sized(pieces) or not copy and starts[-1] >= _LARGE_PIECE_ROWS * len(pieces):
            columns.append(pa.chunked_array(pieces, type=f.type))  # no copy: Lance writes each piece as is
        else:
            columns.append(pa.concat_arrays(pieces))
    return pa.Table.from_arrays(columns, schema=schema)


_PAYLOAD_PIECE = 1 << 20
_LARGE_PIECE_ROWS = 1 << 16


def _payload_sized(pieces: Sequence[pa.Array]) -> bool:
    """Binary pieces of a MiB or more on average (tensor payloads over the caller's memory):
    concatenating them would copy every byte once more before Lance writes it."""
    t = pieces[0].type
    if not (pa.types.is_large_binary(t) or pa.types.is_binary(t)):
        return False
    return sum(p.nbytes for p in pieces) >= _PAYLOAD_PIECE * len(pieces)


def _cast(col: pa.Array, t: pa.DataType) -> pa.Array:
    if col.type == t:
        return col
    try:
        return col.cast(t)
    except pa.ArrowInvalid:
        if not (pa.types.is_integer(col.type) and pa.types.is_floating(t)):
            raise
        return col.cast(t, safe=False)  # int -> float widening: |x| > 2**53 rounds


def screen_replayed(
    batch: pa.RecordBatch, stored: pa.Schema | None, *, mode: str, wal_dir: str, lsn: int, report: ReplayReport
) -> pa.RecordBatch | None:
    """A WAL batch being replayed, checked by the same field-name rules as an append.

    Frames logged by a version that did not check names can hold a field Lance refuses: with
    recovery ``point_in_time`` that raises InvalidRecordError saying to salvage; with
    ``salvage`` the frame's rows are given up and listed in ``report.lost``, and a zero-row
    batch of its acceptable columns stands in for it, so the next commit records the frame's
    LSN as applied and the log is dropped (None when no column is acceptable).
    """
    known = stored
    try:
        check_field_names(batch.schema, known)
        return batch
    except InvalidRecordError as exc:
        if mode != "salvage":
            raise InvalidRecordError(
                f"{wal_dir}: WAL frame lsn {lsn} holds {batch.num_rows} row(s) that cannot be committed: "
                f"{exc.message.removesuffix('; nothing was written')} (logged by a version that did not check "
                "field names). Open with recovery='salvage' to skip the frame; its rows are lost and "
                "listed in recovery_report.lost",
                path=wal_dir, lsn=lsn, field=exc.details.get("field"),
            ) from None
        report.lost.append(LostRange(wal_dir, 0, 0, f"frame lsn {lsn}: {batch.num_rows} row(s) refused, "
                                                     f"field {exc.details.get('field')!r} {exc.details.get('reason')}"))
    keep = []
    for f in batch.schema:
        try:
            check_field_names(pa.schema([f]), known)
        except InvalidRecordError:
            continue
        keep.append(f.name)
    if keep:
        return batch.select(keep).slice(0, 0)
    return None if stored is None else pa.RecordBatch.from_pylist([], schema=stored)
