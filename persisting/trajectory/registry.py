"""FieldRegistry: the step fields a TrajectoryStore knows, and the checks a step passes.

Specs come from the stored schema (field metadata), from other writers' commits
(:meth:`FieldRegistry.follow`) and from the steps this writer logs: a new field registers its
spec, a compatible one widens it (:func:`~persisting.trajectory.fields.merge`), anything else
raises before the step is kept. Shared by the store's read side (which fields exist, how to
decode them) and its writer side (:class:`~persisting.trajectory.writing.EpisodeWriter`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from persisting.errors import InvalidRecordError
from persisting.trajectory.fields import (
    CHECKSUM_SUFFIX,
    FieldSpec,
    Signature,
    check_column,
    merge,
    normalize,
    specs_from_schema,
    stacked_signature,
)
from persisting.trajectory.schema import STEP_KEYS

__all__ = ["FieldRegistry"]

_INT64 = (-(1 << 63), 1 << 63)
_PLAIN: dict[type, Signature] = {float: ("scalar", "float", ()), int: ("scalar", "int", ()), bool: ("scalar", "bool", ())}


class FieldRegistry:
    """Specs (and their signatures) of the step fields, plus how new values are classified."""

    def __init__(self, *, ragged: frozenset[str], blob_threshold: int) -> None:
        self.ragged = ragged
        self.blob_threshold = blob_threshold
        self.specs: dict[str, FieldSpec] = {}
        self.sigs: dict[str, Signature] = {}
        self._schema: pa.Schema | None = None
        self.version = 0  # bumped whenever a spec is added or widened (step buffers cache specs)

    def load(self, schema: pa.Schema | None) -> None:
        """Start from the fields a stored schema holds."""
        self.specs = specs_from_schema(schema, STEP_KEYS)
        self.sigs = {n: s.signature for n, s in self.specs.items()}
        self._schema = schema
        self.version += 1

    def follow(self, schema: pa.Schema | None) -> None:
        """Take in step fields other writers stored since (this writer's own specs win)."""
        if schema is self._schema:
            return
        stored = specs_from_schema(schema, STEP_KEYS)
        new = {n: spec for n, spec in stored.items() if n not in self.specs}
        self.specs.update(new)
        self.sigs.update({n: spec.signature for n, spec in new.items()})
        self._schema = schema
        if new:
            self.version += 1

    def normalize_steps(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Private copies of the steps, checked against the known field specs (all or nothing)."""
        new_specs: dict[str, FieldSpec] = {}
        sigs = self.sigs
        out = []
        for i, row in enumerate(rows):
            clean: dict[str, Any] = {}
            for name, value in row.items():
                if name not in sigs:
                    check_field_name(name, i)
                sig = _PLAIN.get(type(value))
                if sig is not None:  # the hot path: float, int and bool scalars
                    stored = value
                else:
                    stored, sig = normalize(name, value, ragged=name in self.ragged, blob_threshold=self.blob_threshold)
                if sig is None:
                    continue  # a missing value: the column reads null for this step
                if type(stored) is int and not _INT64[0] <= stored < _INT64[1] and sig[1] == "int":
                    raise InvalidRecordError(
                        f"step {i}: field {name!r} = {stored} does not fit a 64-bit integer column; "
                        "pass it as a float or a str", field=name, index=i)
                if sigs.get(name) != sig:
                    known = new_specs.get(name) or self.specs.get(name)
                    sig = _kept_kind(known, sig)
                    spec = FieldSpec(name, *sig)
                    new_specs[name] = spec if known is None else merge(known, spec)
                clean[name] = stored
            out.append(clean)
        if new_specs:
            self.specs.update(new_specs)
            self.sigs.update({n: s.signature for n, s in new_specs.items()})
            self.version += 1
        return out

    def check_stacked(self, batch: Mapping[str, Any]) -> int | None:
        """Validate a dict of stacked columns; return its step count, or None when it needs
        the per-step path. Registers new field specs only when every column is valid."""
        lengths = {k: len(v) if hasattr(v, "__len__") else -1 for k, v in batch.items()}
        if not lengths or len(set(lengths.values())) > 1:
            return None
        n = next(iter(lengths.values()))
        new_specs: dict[str, FieldSpec] = {}
        for name, value in batch.items():
            if name not in self.sigs:
                check_field_name(name, 0)
            sig = stacked_signature(value, n, ragged=name in self.ragged, blob_threshold=self.blob_threshold)
            if sig is None:
                return None
            if self.sigs.get(name) != sig:
                known = self.specs.get(name)
                sig = _kept_kind(known, sig)
                spec = FieldSpec(name, *sig)
                new_specs[name] = spec if known is None else merge(known, spec)
        if new_specs:
            self.specs.update(new_specs)
            self.sigs.update({k: s.signature for k, s in new_specs.items()})
            self.version += 1
        return n


def _kept_kind(known: FieldSpec | None, sig: Signature) -> Signature:
    """A stored array field keeps its kind: ``blob_threshold`` is a setting of each open, so an
    array of the dtype and shape of a field stored as a blob (or as a fixed column) is stored
    that way again, whatever the threshold of the store that logs it now."""
    if known is not None and {known.kind, sig[0]} == {"fixed", "blob"} and (known.dtype, known.shape) == sig[1:]:
        return known.signature
    return sig


def check_field_name(name: object, i: int) -> None:
    """Refuse a step field name the store sets itself or the engine would refuse."""
    if not isinstance(name, str) or not name:
        raise InvalidRecordError(f"step {i}: field name {name!r} must be a non-empty str", index=i)
    if name in STEP_KEYS or name.endswith(CHECKSUM_SUFFIX):
        raise InvalidRecordError(f"step field {name!r} is reserved: the store sets it", field=name)
    check_column(name, what="step field")
