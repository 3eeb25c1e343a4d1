"""Type widening without rewriting a bucket: the widened values go to a new column.

When a record widens a stored column (``int64`` -> ``double``), the engine would rewrite every
stored row with the new type at the next commit (Lance cannot cast a column in place), and the
writer waits for it: 1.0 s for one ``put`` on a 2M-row bucket. A queue bucket instead keeps the
stored column as it is and writes the widened values, from then on, to a *shadow* column
``<name>__as_<type>`` (a new nullable column: Lance adds it without touching stored rows).
Reads put the two back together: the newest non-null of the shadows, else the stored column
cast to the widened type. Readers, offsets and exports see one column of the widened type.

The physical schema is the whole record of the layout, so a restart finds it again: a column
``X__as_T`` is a shadow of ``X`` when ``X`` is stored before it.
"""

from __future__ import annotations

import re
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from persisting.engine.schema import evolve

__all__ = ["Layout"]

_SHADOW = "__as_"
Data = TypeVar("Data", pa.RecordBatch, pa.Table)


def _token(t: pa.DataType) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(t).lower()).strip("_")


def shadow_name(name: str, t: pa.DataType) -> str:
    return f"{name}{_SHADOW}{_token(t)}"


class Layout:
    """The logical schema of a bucket (what readers see) and the physical columns behind it."""

    def __init__(self, physical: pa.Schema | None) -> None:
        self.shadows: dict[str, list[str]] = {}  # name -> its shadow columns, oldest first
        self.logical: pa.Schema | None = None
        if physical is None:
            return
        fields: list[pa.Field] = []
        index: dict[str, int] = {}
        for f in physical:
            base, sep, _ = f.name.rpartition(_SHADOW)
            if sep and base in index and f.name == shadow_name(base, f.type):
                self.shadows.setdefault(base, []).append(f.name)
                fields[index[base]] = fields[index[base]].with_type(f.type)
            else:
                index[f.name] = len(fields)
                fields.append(f)
        self.logical = pa.schema(fields, metadata=physical.metadata)

    def physical_name(self, name: str) -> str:
        """The column that takes new values of logical column ``name``."""
        shadows = self.shadows.get(name)
        return shadows[-1] if shadows else name

    def to_physical(self, data: Data, stored: pa.Schema | None) -> tuple[Data, bool]:
        """``data`` (logical columns) as the table should store it: a value of a stored column's
        type, or narrower, goes to that column (cast); a wider one to a new shadow column.
        Returns the data and whether it starts a shadow column (call :meth:`learn` once stored)."""
        if stored is None:
            return data, False
        arrays, names, changed, new = [], [], False, False
        for i, f in enumerate(data.schema):
            target = self.physical_name(f.name)
            j = stored.get_field_index(target)
            column = data.column(i)
            if j >= 0 and stored.field(j).type != f.type:
                have = stored.field(j).type
                wide = evolve(pa.schema([pa.field(f.name, have)]), pa.schema([pa.field(f.name, f.type)])).schema.field(0).type
                if wide != have:  # a widening: a new column, not a rewrite of the stored one
                    target, new = shadow_name(f.name, wide), True
                column = column.cast(wide)
            changed = changed or target != f.name or column.type != f.type
            arrays.append(column)
            names.append(target)
        if not changed:
            return data, False
        return type(data).from_arrays(arrays, names=names), new

    def learn(self, stored: pa.Schema | None) -> None:
        """Take the shadow columns of the table's schema after an append."""
        fresh = Layout(stored)
        self.shadows = fresh.shadows

    def to_logical(self, data: pa.Table) -> pa.Table:
        """Stored rows back as logical columns: each widened column is its newest non-null
        shadow value, else the stored value cast to the widened type."""
        if not self.shadows:
            return data
        names = data.schema.names
        for name, shadows in self.shadows.items():
            present = [c for c in shadows if c in names]
            if not present:
                continue
            wide = data.schema.field(present[-1]).type
            parts = [data.column(c).cast(wide) for c in reversed(present)]
            if name in names:
                parts.append(data.column(name).cast(wide))
            merged = pc.coalesce(*parts) if len(parts) > 1 else parts[0]
            data = data.drop_columns(present)
            names = data.schema.names
            if name in names:
                data = data.set_column(names.index(name), pa.field(name, wide), merged)
            else:
                data = data.append_column(pa.field(name, wide), merged)
            names = data.schema.names
        return data
