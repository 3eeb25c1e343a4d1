"""Step values -> Arrow columns and back.

Every step field has a :class:`FieldSpec`, fixed the first time the field is seen and kept in
the column's metadata so a reopened store knows it again:

- ``scalar``: Python or numpy scalars (bool, int, float, str, bytes) -> a primitive column;
  int and float mix (the column widens to float).
- ``fixed``: numpy arrays / torch tensors of one shape -> a ``fixed_size_list`` column of the
  flattened values; dtype and shape live in the field metadata.
- ``ragged``: Python lists (token ids, logprobs) or 1-D arrays of fields declared ragged ->
  a ``list`` column.
- ``blob``: arrays of at least ``blob_threshold`` bytes (images) or of dtypes Arrow lacks
  (bfloat16) -> a blob column of :func:`~persisting.engine.codec.encode_tensor` payloads with
  a checksum column ``<name>__xxh3`` verified on read.

Values are checked against the spec when the step is added, so a bad step raises at once and
never poisons the steps buffered before it.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from persisting.engine.codec import decode_tensor, encode_tensor
from persisting.engine.names import field_name_problem
from persisting.engine.schema import check_field_names
from persisting.errors import InvalidRecordError, SchemaError

__all__ = ["ARROW_DTYPES", "CHECKSUM_SUFFIX", "column_to_arrow", "dtype_name", "FieldSpec", "check_column", "Signature", "merge", "normalize", "specs_from_schema", "stacked_signature", "stacked_to_columns", "to_columns", "to_numpy"]

KIND_KEY = b"persisting.kind"
DTYPE_KEY = b"persisting.dtype"
SHAPE_KEY = b"persisting.shape"
BLOB_KEY = b"lance-encoding:blob"
CHECKSUM_SUFFIX = "__xxh3"

_SCALAR_TYPES = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bytes": pa.binary()}
ARROW_DTYPES = _ARROW_DTYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64",
})


@dataclass(frozen=True)
class FieldSpec:
    """How one step field is stored. ``dtype`` is a scalar category (``"int"``, ``"str"``...)
    for scalar and ragged fields, a dtype name for fixed and blob fields."""

    name: str
    kind: str
    dtype: str
    shape: tuple[int, ...] = ()

    @property
    def signature(self) -> Signature:
        return (self.kind, self.dtype, self.shape)

    def metadata(self, *, blob: bool = True) -> dict[bytes, bytes]:
        meta = {KIND_KEY: self.kind.encode(), DTYPE_KEY: self.dtype.encode(), SHAPE_KEY: json.dumps(list(self.shape)).encode()}
        if self.kind == "blob" and blob:
            meta[BLOB_KEY] = b"true"
        return meta


def check_column(name: object, value: Any = None, *, what: str) -> None:
    """Refuse a step field or episode metadata name (and the struct field names inside a list
    value) that the engine would refuse when the row reaches its table: steps and metadata
    wait in an episode first, so checking only then would leave the episode unable to flush."""
    problem = field_name_problem(name, top_level=True)
    if problem is not None:
        raise InvalidRecordError(f"{what} {name!r} {problem}; nothing was written", field=name, reason=problem)
    if isinstance(value, (list, tuple)) and value:
        try:
            t = pa.array([list(value)]).type
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return  # the value itself is refused where it is converted
        try:
            check_field_names(pa.schema([pa.field(str(name), t)]))
        except InvalidRecordError as exc:
            raise InvalidRecordError(f"{what} {exc.message}", **exc.details) from None


def _category(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    return "other"


def value_category(value: Any) -> str | None:
    """The kind of a plain Python value, as :func:`arrow_category` names column types."""
    if isinstance(value, (list, tuple)):
        return "list"
    return _category(value)


def _is_torch(x: object) -> bool:
    return type(x).__module__.startswith("torch") and "torch" in sys.modules


Signature = tuple[str, str, tuple[int, ...]]
_SCALAR_SIGS: dict[type, tuple[str, Signature]] = {
    float: ("float", ("scalar", "float", ())), int: ("int", ("scalar", "int", ())),
    bool: ("bool", ("scalar", "bool", ())), str: ("str", ("scalar", "str", ())),
}


def normalize(name: str, value: Any, *, ragged: bool, blob_threshold: int) -> tuple[Any, Signature | None]:
    """A private copy of ``value`` ready to buffer, and the ``(kind, dtype, shape)`` it implies
    (None for None). Raises InvalidRecordError for values that cannot be stored."""
    hit = _SCALAR_SIGS.get(type(value))
    if hit is not None:
        return value, hit[1]
    if type(value) is np.ndarray and value.ndim and not ragged:  # the hot path: observations
        dtype = dtype_name(value.dtype)
        if dtype is not None:
            big = value.nbytes >= blob_threshold or dtype not in _ARROW_DTYPES
            return value.copy(), ("blob" if big else "fixed", dtype, value.shape)
    if value is None:
        return None, None
    if _is_torch(value):
        t = value.detach().cpu()
        try:
            value = t.numpy().copy()
        except TypeError:  # bfloat16 and friends have no numpy dtype: keep the tensor, store a blob
            t = t.clone().contiguous()
            return t, ("blob", str(t.dtype).removeprefix("torch."), tuple(t.shape))
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    cat = _category(value)
    if cat in _SCALAR_TYPES:
        return (bytes(value) if cat == "bytes" else value), ("scalar", cat, ())
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise InvalidRecordError(
                f"field {name!r}: arrays of dtype {value.dtype} cannot be stored; use numeric or bool arrays",
                field=name,
            )
        arr = np.array(value, copy=True, order="C")
        if ragged:
            if arr.ndim != 1:
                raise InvalidRecordError(f"field {name!r} is ragged, so each value must be 1-D; got shape {arr.shape}", field=name)
            return arr, ("ragged", _category(arr.dtype.type(0)) or "other", ())
        big = arr.nbytes >= blob_threshold or arr.dtype.name not in _ARROW_DTYPES
        return arr, ("blob" if big else "fixed", arr.dtype.name, arr.shape)
    if isinstance(value, (list, tuple)):
        first = next((_category(v) for v in value if v is not None), "")
        return list(value), ("ragged", first or "", ())
    raise InvalidRecordError(
        f"field {name!r}: a {type(value).__name__} cannot be stored; use scalars, strings, lists, "
        "numpy arrays or torch tensors",
        field=name,
        value_type=type(value).__name__,
    )


_DTYPE_NAMES: dict[np.dtype, str] = {}


def dtype_name(dtype: np.dtype) -> str | None:
    """``dtype.name`` for numeric dtypes (cached: numpy computes it in Python); None otherwise."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None and dtype.kind in "biufc" and dtype.isnative:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


_NUMERIC = {"int", "float"}


def merge(stored: FieldSpec, offered: FieldSpec) -> FieldSpec:
    """The spec both fit in, or SchemaError naming the field and both types."""
    def refuse(hint: str = "") -> SchemaError:
        return SchemaError(
            f"field {stored.name!r} is stored as {stored.kind} {stored.dtype}{list(stored.shape) if stored.shape else ''} "
            f"but a step offers {offered.kind} {offered.dtype}{list(offered.shape) if offered.shape else ''}{hint}",
            field=stored.name, stored_type=f"{stored.kind}:{stored.dtype}", offered_type=f"{offered.kind}:{offered.dtype}",
        )

    if stored.kind != offered.kind:
        hint = "; for values whose length varies pass lists or declare the field in ragged=" if offered.kind in ("fixed", "ragged", "blob") else ""
        raise refuse(hint)
    if stored.kind in ("scalar", "ragged"):
        a, b = stored.dtype, offered.dtype
        if a == b or not b or b == "other" and stored.kind == "ragged":
            return stored
        if not a:
            return offered
        if {a, b} <= _NUMERIC:
            return FieldSpec(stored.name, stored.kind, "float")
        raise refuse()
    if stored.shape != offered.shape:
        raise refuse("; a field's shape is fixed by its first value: for varying lengths pass lists or declare it ragged=")
    if stored.dtype != offered.dtype:
        try:
            ok = np.can_cast(np.dtype(offered.dtype), np.dtype(stored.dtype), casting="safe")
        except TypeError:
            ok = False
        if not ok:
            raise refuse("; cast it to the stored dtype first")
    return stored


def specs_from_schema(schema: pa.Schema | None, skip: Sequence[str]) -> dict[str, FieldSpec]:
    """Specs of the step fields a stored schema holds."""
    out: dict[str, FieldSpec] = {}
    if schema is None:
        return out
    for f in schema:
        if f.name in skip or f.name.endswith(CHECKSUM_SUFFIX):
            continue
        meta = f.metadata or {}
        if KIND_KEY not in meta and f.name + CHECKSUM_SUFFIX in schema.names:
            meta = schema.field(f.name + CHECKSUM_SUFFIX).metadata or {}
        if KIND_KEY in meta:
            out[f.name] = FieldSpec(f.name, meta[KIND_KEY].decode(), meta[DTYPE_KEY].decode(), tuple(json.loads(meta[SHAPE_KEY])))
        elif pa.types.is_fixed_size_list(f.type):
            out[f.name] = FieldSpec(f.name, "fixed", f.type.value_type.to_pandas_dtype().__name__, (f.type.list_size,))
        elif pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            out[f.name] = FieldSpec(f.name, "ragged", arrow_category(f.type.value_type))
        else:
            out[f.name] = FieldSpec(f.name, "scalar", arrow_category(f.type))
    return out


def arrow_category(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "list"
    return "other"


_KIND_CATEGORY = {"b": "bool", "i": "int", "u": "int", "f": "float"}
_CATEGORY_DTYPE = {"bool": np.bool_, "int": np.int64, "float": np.float64}


def stacked_signature(value: Any, n: int, *, ragged: bool, blob_threshold: int) -> Signature | None:
    """The per-step signature of a column with the steps along axis 0 (vectorised
    ``add_steps``), or None when the column must go through the per-step path."""
    if _is_torch(value):
        try:
            value = value.detach().cpu().numpy()
        except TypeError:
            return None
    if type(value) is not np.ndarray or value.ndim == 0 or len(value) != n or ragged:
        return None
    dtype = dtype_name(value.dtype)
    if dtype is None:
        return None
    if value.ndim == 1:
        cat = _KIND_CATEGORY.get(value.dtype.kind)
        return None if cat is None else ("scalar", cat, ())
    big = value[0].nbytes >= blob_threshold or dtype not in _ARROW_DTYPES
    return ("blob" if big else "fixed", dtype, tuple(value.shape[1:]))


def stacked_to_columns(batch: Mapping[str, Any], specs: Mapping[str, FieldSpec]) -> tuple[list[pa.Field], list[pa.Array]]:
    """Arrow fields and (copied) arrays for columns accepted by :func:`stacked_signature`."""
    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []
    for name, value in batch.items():
        spec = specs[name]
        if _is_torch(value):
            value = value.detach().cpu().numpy()
        if spec.kind == "scalar":
            arr = pa.array(value.astype(_CATEGORY_DTYPE[spec.dtype], copy=True), type=_SCALAR_TYPES[spec.dtype])
        elif spec.kind == "fixed":
            flat = value.astype(np.dtype(spec.dtype), copy=True).reshape(-1)
            arr = pa.FixedSizeListArray.from_arrays(pa.array(flat), int(np.prod(spec.shape, dtype=np.int64)))
        else:
            f, a = to_columns([{name: v} for v in value], {name: spec})
            fields += f
            arrays += a
            continue
        fields.append(pa.field(name, arr.type, metadata=spec.metadata()))
        arrays.append(arr)
    return fields, arrays


def to_columns(rows: Sequence[Mapping[str, Any]], specs: Mapping[str, FieldSpec]) -> tuple[list[pa.Field], list[pa.Array]]:
    """Arrow fields and arrays for the step fields of ``rows`` (already normalized)."""
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []
    for name in names:
        f, a = column_to_arrow(specs[name], [r.get(name) for r in rows])
        fields += f
        arrays += a
    return fields, arrays


def column_to_arrow(spec: FieldSpec, values: Sequence[Any] | np.ndarray,
                    valid: np.ndarray | None = None) -> tuple[list[pa.Field], list[pa.Array]]:
    """Arrow field(s) and array(s) for one step field's values (a list with None for missing
    values, or a numpy column with a validity mask); blob fields add their checksum column."""
    name = spec.name
    if valid is None and isinstance(values, np.ndarray) and spec.kind in ("scalar", "fixed"):
        plan = _numpy_plan(spec)  # every row holds a value: the common hand-off, kept short
        if plan is not None:
            dtype, width, field = plan
            flat = pa.array(values.astype(dtype, copy=False).reshape(-1))
            arr = flat if width is None else pa.FixedSizeListArray.from_arrays(flat, width)
            if arr.type is field.type or arr.type == field.type:
                return [field], [arr]
    if isinstance(values, np.ndarray) and spec.kind in ("scalar", "fixed"):
        if spec.kind == "scalar":
            arr = pa.array(values.astype(_CATEGORY_DTYPE[spec.dtype], copy=False), type=_SCALAR_TYPES[spec.dtype],
                           mask=None if valid is None else ~valid)
        else:
            values = values.astype(np.dtype(spec.dtype), copy=valid is not None)
            if valid is not None:
                values[~valid] = 0  # missing rows read 0 (NaN for floats, by their null mask)
            arr = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), math.prod(spec.shape),
                                                    mask=None if valid is None else pa.array(~valid))
        return [_arrow_field(spec, arr.type)], [arr]
    if isinstance(values, np.ndarray) or valid is not None:
        values = [v if ok else None for v, ok in zip(values, valid)] if valid is not None else list(values)
    if spec.kind == "scalar":
        arr = pa.array(values, type=_SCALAR_TYPES[spec.dtype])
    elif spec.kind == "fixed":
        arr = _fixed(values, spec)
    elif spec.kind == "ragged":
        arr = _ragged(values)
    else:
        encoded = [None if v is None else encode_tensor(v) for v in values]
        data = pa.array([None if e is None else bytes(e.data) for e in encoded], pa.large_binary())
        sums = pa.array([None if e is None else e.checksum for e in encoded], pa.binary(16))
        # the engine reports blob columns without their metadata: the spec rides here too
        return ([pa.field(name, pa.large_binary(), metadata=spec.metadata()),
                 pa.field(name + CHECKSUM_SUFFIX, pa.binary(16), metadata=spec.metadata(blob=False))], [data, sums])
    return [pa.field(name, arr.type, metadata=spec.metadata())], [arr]


@functools.lru_cache(maxsize=4096)
def _numpy_plan(spec: FieldSpec) -> tuple[np.dtype, int | None, pa.Field] | None:
    """How a full numpy column of a numeric scalar or fixed field becomes Arrow: the numpy
    dtype, the list width (None for scalars) and the field, whose type is found by converting
    a one-row column the same way (so the two cannot disagree)."""
    if spec.kind == "scalar":
        if spec.dtype not in _CATEGORY_DTYPE:
            return None
        dtype, width = np.dtype(_CATEGORY_DTYPE[spec.dtype]), None
    else:
        dtype, width = np.dtype(spec.dtype), math.prod(spec.shape)
    one = pa.array(np.zeros(width or 1, dtype))
    type_ = (one if width is None else pa.FixedSizeListArray.from_arrays(one, width)).type
    if width is None and type_ != _SCALAR_TYPES[spec.dtype]:
        return None
    return dtype, width, _arrow_field(spec, type_)


@functools.lru_cache(maxsize=4096)
def _arrow_field(spec: FieldSpec, type_: pa.DataType) -> pa.Field:
    """The Arrow field of ``spec``'s column (cached: every hand-off of an episode's steps
    builds one per column, and the spec metadata is JSON)."""
    return pa.field(spec.name, type_, metadata=spec.metadata())


def _fixed(values: list[Any], spec: FieldSpec) -> pa.Array:
    dtype = np.dtype(spec.dtype)
    size = int(np.prod(spec.shape, dtype=np.int64))
    missing = [v is None for v in values]
    zero = np.zeros(spec.shape, dtype)
    stacked = np.stack([zero if v is None else v for v in values]).astype(dtype, copy=False)
    mask = pa.array(missing) if any(missing) else None
    return pa.FixedSizeListArray.from_arrays(pa.array(stacked.reshape(-1)), size, mask=mask)


def _ragged(values: list[Any]) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, np.ndarray) for v in present):
        dtype = np.result_type(*[v.dtype for v in present])
        lengths = np.array([0 if v is None else len(v) for v in values], np.int32)
        offsets = np.zeros(len(values) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate([v.astype(dtype, copy=False) for v in present])
        mask = pa.array([v is None for v in values]) if len(present) < len(values) else None
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat), mask=mask)
    try:
        return pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in values])
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidRecordError(f"list values cannot be stored as one list column: {exc}") from None


def to_numpy(table: pa.Table, spec: FieldSpec) -> np.ndarray:
    """One column of ``table`` as a numpy array with the steps along axis 0.

    fixed and blob fields come back as ``(n, *shape)`` arrays (missing values: NaN for floats,
    0 otherwise), ragged fields as an object array of 1-D arrays, scalars as 1-D arrays.
    """
    col = table.column(spec.name)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if spec.kind == "fixed":
        size = int(np.prod(spec.shape, dtype=np.int64))
        flat = arr.values.slice(arr.offset * size, n * size).to_numpy(zero_copy_only=False)
        out = np.asarray(flat, dtype=np.dtype(spec.dtype)).reshape((n, *spec.shape))
        if arr.null_count:
            out = out.copy() if not out.flags.writeable else out
            if out.dtype.kind == "f":
                out[np.asarray(arr.is_null())] = np.nan
        return out
    if spec.kind == "blob":
        sums = table.column(spec.name + CHECKSUM_SUFFIX).to_pylist() if spec.name + CHECKSUM_SUFFIX in table.column_names else [None] * n
        items: list[Any] = []
        for i, (data, digest) in enumerate(zip(arr.to_pylist(), sums)):
            if data is None:
                items.append(None)
                continue
            items.append(decode_tensor(data, dtype=spec.dtype, shape=spec.shape, checksum_=digest,
                                       framework="numpy" if spec.dtype in _ARROW_DTYPES or spec.dtype.startswith("complex") else "torch",
                                       where=f"step field {spec.name!r} row {i}"))
        if items and all(isinstance(x, np.ndarray) for x in items):
            return np.stack(items)
        if items and all(x is not None for x in items):
            import torch

            return torch.stack(items)  # type: ignore[return-value]  # bfloat16 has no numpy dtype
        out = np.empty(n, dtype=object)
        for i, x in enumerate(items):  # element by element: numpy would try to convert a tensor
            out[i] = x
        return out
    if spec.kind == "ragged":
        offsets = arr.offsets.to_numpy()
        values = arr.values.to_numpy(zero_copy_only=False)
        # views into one flat array; np.fromiter fills the object array without a Python loop
        out = np.fromiter(np.split(values[offsets[0]:offsets[-1]], offsets[1:-1] - offsets[0]), dtype=object, count=n)
        if arr.null_count:
            out[~np.asarray(arr.is_valid())] = None
        return out
    return arr.to_numpy(zero_copy_only=False)
