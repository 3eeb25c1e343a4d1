"""StepBuffer: an open episode's steps not yet handed to the steps table, held column by column.

Logging one step is the hot path of an RL loop, so a step whose values all match fields the
store already knows (Python or numpy scalars, numpy arrays of the stored dtype and shape) is
copied straight into preallocated numpy columns: one type check and one array store per
field, no per-step dict of normalized values, no stacking at hand-off. Once a step passed
those checks, the buffer remembers its layout (per field: the value's type, and an array's
dtype and shape), so the next step of that layout -- nearly every step of an RL loop -- goes to
a function compiled for exactly that layout and bound to this buffer (:attr:`StepBuffer.store`,
see :mod:`~persisting.trajectory.layout`): it appends the values to per-field lists (arrays as
their bytes), which :meth:`StepBuffer._seal` moves into the numpy columns, marked valid, in one
slice store per field before anything reads or changes the columns. A step of another known
layout takes one dict lookup, an identity test and two stores per field
(:meth:`StepBuffer.add_fast`); layouts are forgotten at every hand-off and whenever the store's
field specs change. Anything else (a new field, a widened type, strings, lists, tensors, blobs)
goes through the store's checks first (:func:`~persisting.trajectory.fields.normalize`, spec
merging) and is then stored the same way, in an object column where no numpy column fits.
Order is kept: there is one buffer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from persisting.trajectory.layout import StoreFn, ValuesFn, compiled
from persisting.trajectory.fields import ARROW_DTYPES, FieldSpec, Signature, column_to_arrow, dtype_name

__all__ = ["StepBuffer"]

_FLOAT: Signature = ("scalar", "float", ())
_INT: Signature = ("scalar", "int", ())
_BOOL: Signature = ("scalar", "bool", ())
_FAST_SCALARS: dict[type, Signature] = {
    float: _FLOAT, int: _INT, bool: _BOOL, np.float64: _FLOAT, np.float32: _FLOAT, np.float16: _FLOAT,
    np.int64: _INT, np.int32: _INT, np.int16: _INT, np.int8: _INT, np.uint8: _INT, np.uint16: _INT,
    np.uint32: _INT, np.bool_: _BOOL,
}
_NUMPY_SCALAR = {"float": np.float64, "int": np.int64, "bool": np.bool_}
_ACCEPTS = {"float": (float, int, bool), "int": (int,), "bool": (bool,)}
_INT64 = (-(1 << 63), 1 << 63)
# scalar types an int64 / bool numpy column takes as they are (all of them fit exactly)
_DIRECT = {"int": frozenset({int, np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint32}),
           "bool": frozenset({bool, np.bool_})}


class _Column:
    """Values of one field for buffered rows ``0..n``; ``valid[i]`` says row i has one."""

    def __init__(self, spec: FieldSpec, capacity: int) -> None:
        self.valid = np.zeros(capacity, np.bool_)
        self.category = spec.dtype if spec.kind == "scalar" and spec.dtype in _NUMPY_SCALAR else None
        if self.category is not None:
            self.values: Any = np.empty(capacity, _NUMPY_SCALAR[self.category])
        elif spec.kind == "fixed":
            self.values = np.empty((capacity, *spec.shape), np.dtype(spec.dtype))
        else:
            self.values = [None] * capacity

    def grow(self, capacity: int) -> None:
        n = len(self.valid)
        valid = np.zeros(capacity, np.bool_)
        valid[:n] = self.valid
        self.valid = valid
        if isinstance(self.values, list):
            self.values.extend([None] * (capacity - n))
        else:
            values = np.empty((capacity, *self.values.shape[1:]), self.values.dtype)
            values[:n] = self.values
            self.values = values

    def put(self, i: int, value: Any) -> None:
        """Store a checked (normalized) value; a numeric column that cannot hold it exactly
        widens (int -> float) or becomes an object column."""
        if self.category is not None and type(value) not in _ACCEPTS[self.category]:
            if self.category == "int" and type(value) is float:
                self.values, self.category = self.values.astype(np.float64), "float"
            else:
                self.values, self.category = [v.item() if ok else None for v, ok in zip(self.values, self.valid)], None
        if self.category == "int" and not _INT64[0] <= value < _INT64[1]:
            self.values, self.category = [v.item() if ok else None for v, ok in zip(self.values, self.valid)], None
        self.values[i] = value
        self.valid[i] = True


def _refuse(step: Any, version: int) -> bool:
    """The store function of a buffer with no compiled layout: every step takes the checks."""
    return False


class StepBuffer:
    """Columns of buffered steps (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.columns: dict[str, _Column] = {}
        self.n = 0
        # field -> (value type, array dtype or None, array shape or "is an int", the column's
        # values and valid arrays): the layouts add_known accepted, valid for the registry
        # version ``layout_version`` and until the columns grow
        self._layout: dict[str, tuple[type, np.dtype | None, Any, Any, np.ndarray]] = {}
        self.layout_version = -1
        # store(step, version): the last fully accepted step's exact layout compiled and bound
        # to this buffer (see layout.py), else a function that refuses. It appends the newest
        # ``unsealed`` rows' values to ``_pending`` lists (per field: values array, valid array,
        # list, array dtype or None for scalars); :meth:`_seal` moves them into the columns
        # before anything reads or changes the columns.
        self.store: StoreFn = _refuse
        # the same for a step's values in the order of ``names`` (the compiled layout's fields)
        self.store_values: ValuesFn = _refuse
        self.names: tuple[str, ...] | None = None
        self._pending: tuple[tuple[np.ndarray, np.ndarray, list[Any], np.dtype | None], ...] = ()
        self.unsealed = 0

    def __len__(self) -> int:
        return self.n

    def _seal(self) -> None:
        """Move the rows the compiled store function added into the columns, valid."""
        k = self.unsealed
        if k:
            n = self.n
            for values, valid, pending, dtype in self._pending:
                if dtype is not None:
                    values[n - k:n] = np.frombuffer(b"".join(pending), dtype).reshape(k, *values.shape[1:])
                else:
                    values[n - k:n] = np.fromiter(pending, values.dtype, k)
                pending.clear()
                valid[n - k:n] = True
            self.unsealed = 0

    def _forget(self) -> None:
        """Drop the remembered layouts (after sealing the rows stored through them)."""
        self._seal()
        self._layout, self.layout_version, self.store, self._pending = {}, -1, _refuse, ()
        self.store_values, self.names = _refuse, None

    def _reserve(self, rows: int) -> None:
        if rows > self.capacity:
            self.capacity = max(rows, 2 * self.capacity)
            self._forget()  # it holds the columns' old arrays
            for col in self.columns.values():
                col.grow(self.capacity)

    def add_fast(self, step: Mapping[str, Any], version: int) -> bool:
        """Store ``step`` if every value has the layout of a step :meth:`add_known` accepted
        since the last hand-off, under registry ``version``; False, storing nothing, if not.
        (Try :attr:`store` first: it takes a step of the last accepted layout in one call.)"""
        i = self.n
        if version != self.layout_version or i >= self.capacity:
            return False
        self._seal()
        layout = self._layout
        for name, value in step.items():
            entry = layout.get(name)
            if entry is None:
                return self._undo(step, i)
            t, dt, shape, values, valid = entry
            if type(value) is not t:
                return self._undo(step, i)
            if dt is not None:
                if value.dtype is not dt or value.shape != shape:
                    return self._undo(step, i)
            elif shape and not _INT64[0] <= value < _INT64[1]:  # shape: "is a Python int" here
                return self._undo(step, i)
            values[i] = value
            valid[i] = True
        self.n = i + 1
        return True

    def _undo(self, step: Mapping[str, Any], i: int) -> bool:
        """Clear row ``i`` of the columns :meth:`add_fast` already stored into; False."""
        for name in step:
            entry = self._layout.get(name)
            if entry is not None:
                entry[4][i] = False
        return False

    def add_known(self, step: Mapping[str, Any], sigs: Mapping[str, Signature], specs: Mapping[str, FieldSpec],
                  *, blob_threshold: int, ragged: frozenset[str], version: int = -1) -> bool:
        """Store ``step`` if every value matches its field's stored signature exactly (then
        no check can fail); False, storing nothing, when it needs the full checks."""
        for name, value in step.items():
            t = type(value)
            sig = _FAST_SCALARS.get(t)
            if sig is None:
                if t is not np.ndarray or not value.ndim or name in ragged:
                    return False
                dt = dtype_name(value.dtype)
                if dt is None or dt not in ARROW_DTYPES or value.nbytes >= blob_threshold:
                    return False
                sig = ("fixed", dt, value.shape)
            elif sig is _INT and t is int and not _INT64[0] <= value < _INT64[1]:
                return False
            if sigs.get(name) != sig:
                return False
        self._seal()
        i = self.n
        self._reserve(i + 1)
        columns = self.columns
        if version != self.layout_version:
            self._forget()
            self.layout_version = version
        layout = self._layout
        for name, value in step.items():
            col = columns.get(name)
            if col is None:
                col = columns[name] = _Column(specs[name], self.capacity)
            cat = col.category
            t = type(value)
            if cat is None or cat == "float" or t in _DIRECT[cat]:
                col.values[i] = value
                col.valid[i] = True
                if not isinstance(col.values, list):  # the next value of this type is stored the same way
                    layout[name] = (t, value.dtype if t is np.ndarray else None,
                                    value.shape if t is np.ndarray else t is int, col.values, col.valid)
            else:  # a column buffered before its field widened
                col.put(i, value.item() if isinstance(value, np.generic) else value)
                layout.pop(name, None)
        self.n = i + 1
        entries = [(name, layout.get(name)) for name in step]
        if all(e is not None for _, e in entries):
            key = tuple((name, e[0], e[1], e[2]) for name, e in entries)  # type: ignore[index]
            self._pending = tuple((e[3], e[4], [], e[1]) for _, e in entries)  # type: ignore[index]
            self.store, self.store_values = compiled(key)(self, version, self.capacity, tuple(p[2].append for p in self._pending))
            self.names = tuple(step)
        return True

    def add_rows(self, rows: Sequence[Mapping[str, Any]], specs: Mapping[str, FieldSpec]) -> None:
        """Store rows that passed the store's checks (values normalized, specs registered)."""
        self._reserve(self.n + len(rows))
        self._forget()  # columns may widen: check the next step in full
        for row in rows:
            i = self.n
            for name, value in row.items():
                col = self.columns.get(name)
                if col is None:
                    col = self.columns[name] = _Column(specs[name], self.capacity)
                col.put(i, value)
            self.n = i + 1

    def last(self, name: str) -> Any:
        """The newest buffered row's value of field ``name`` (None if it has none)."""
        self._seal()
        col, i = self.columns.get(name), self.n - 1
        if col is None or i < 0 or not col.valid[i]:
            return None
        return col.values[i]

    def running_sum(self, name: str, start: float | None) -> float | None:
        """``start`` plus every buffered scalar value of field ``name``, added in row order as
        ``float`` (as a per-step ``total += float(value)`` would); ``start`` if there is none.
        Logging keeps an episode's return this way, once per hand-off instead of per step."""
        self._seal()
        col, n = self.columns.get(name), self.n
        if col is None or n == 0:
            return start
        values, valid = col.values, col.valid[:n]
        if isinstance(values, list):
            total = start
            for v, ok in zip(values[:n], valid):
                if ok and type(v) in (float, int, bool):
                    total = (total or 0.0) + float(v)
            return total
        if values.ndim != 1 or not valid.any():
            return start  # array-valued fields are not summed
        x = values[:n][valid].astype(np.float64)
        # cumsum adds left to right (np.sum is pairwise): the same float as the per-step loop
        return float(np.cumsum(np.concatenate(([0.0 if start is None else start], x)))[-1])

    def take(self, specs: Mapping[str, FieldSpec]) -> tuple[list[pa.Field], list[pa.Array]]:
        """Arrow fields and arrays of every buffered row (fields no row holds are left out),
        and empty the buffer."""
        self._seal()
        n = self.n
        fields: list[pa.Field] = []
        arrays: list[pa.Array] = []
        for name, col in self.columns.items():
            valid = col.valid[:n]
            k = np.count_nonzero(valid)
            if not k:
                continue
            f, a = column_to_arrow(specs[name], col.values[:n], None if k == n else valid)
            fields += f
            arrays += a
        self.columns = {}
        self.n = 0
        self._layout, self.layout_version, self.store, self._pending = {}, -1, _refuse, ()
        self.store_values, self.names = _refuse, None
        return fields, arrays
