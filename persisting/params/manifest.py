"""Checkpoint manifests: one row per checkpoint in ``checkpoints.lance``, written last.

A row names the step, tags, user metadata, the state tree (JSON, tensors by reference) and for
each tensor its dtype, shape and chunk keys. A checkpoint exists exactly when its row is
committed; the row is appended only after every chunk it references is durable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

__all__ = ["FORMAT_VERSION", "SCHEMA", "CheckpointInfo", "Manifest", "TensorEntry"]

FORMAT_VERSION = 1
SCHEMA = pa.schema([
    pa.field("step", pa.int64(), nullable=False),
    pa.field("created_at", pa.float64(), nullable=False),
    pa.field("tags", pa.string(), nullable=False),  # JSON list of names
    pa.field("metadata", pa.string(), nullable=False),  # JSON (tree-encoded plain values)
    pa.field("nbytes", pa.int64(), nullable=False),
    pa.field("new_bytes", pa.int64(), nullable=False),
    pa.field("num_tensors", pa.int64(), nullable=False),
    pa.field("num_chunks", pa.int64(), nullable=False),
    pa.field("new_chunks", pa.int64(), nullable=False),
    pa.field("manifest", pa.string(), nullable=False),  # JSON: format, tree, tensors
])
INFO_COLUMNS = [f.name for f in SCHEMA if f.name != "manifest"]


@dataclass(frozen=True)
class CheckpointInfo:
    """What :meth:`ParamStore.list` and :meth:`ParamStore.save` report about a checkpoint.

    ``nbytes`` is the size of its tensors; ``new_bytes``/``new_chunks`` what its save actually
    wrote (the rest was already stored and is shared with other checkpoints).
    """

    step: int
    created_at: float
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    nbytes: int = 0
    new_bytes: int = 0
    num_tensors: int = 0
    num_chunks: int = 0
    new_chunks: int = 0


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a checkpoint: where it sits in the tree and which chunks hold it."""

    name: str
    kind: str  # "torch", "numpy" or "numpy_scalar"
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    checksum: str  # xxh3-128 over its chunk keys (hex): names the tensor's content
    chunks: tuple[str, ...]

    def to_json(self) -> list[Any]:
        return [self.name, self.kind, self.dtype, list(self.shape), self.nbytes, self.checksum, list(self.chunks)]

    @classmethod
    def from_json(cls, row: list[Any]) -> TensorEntry:
        name, kind, dtype, shape, nbytes, digest, chunks = row
        return cls(name, kind, dtype, tuple(int(s) for s in shape), int(nbytes), digest, tuple(chunks))


@dataclass(frozen=True)
class Manifest:
    """The state tree of a checkpoint and its tensors, as stored in the ``manifest`` column."""

    tree: Any
    tensors: tuple[TensorEntry, ...]

    def dumps(self) -> str:
        return json.dumps(
            {"format": FORMAT_VERSION, "tree": self.tree, "tensors": [t.to_json() for t in self.tensors]},
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def loads(cls, text: str) -> Manifest:
        doc = json.loads(text)
        if doc.get("format") != FORMAT_VERSION:
            raise ValueError(f"manifest format {doc.get('format')!r} is not {FORMAT_VERSION}; upgrade persisting")
        return cls(doc["tree"], tuple(TensorEntry.from_json(t) for t in doc["tensors"]))

    def chunk_keys(self) -> set[str]:
        return {k for t in self.tensors for k in t.chunks}


def info_from_row(row: Mapping[str, Any], decode_metadata: Any) -> CheckpointInfo:
    return CheckpointInfo(
        step=int(row["step"]),
        created_at=float(row["created_at"]),
        tags=tuple(json.loads(row["tags"])),
        metadata=decode_metadata(json.loads(row["metadata"])),
        nbytes=int(row["nbytes"]),
        new_bytes=int(row["new_bytes"]),
        num_tensors=int(row["num_tensors"]),
        num_chunks=int(row["num_chunks"]),
        new_chunks=int(row["new_chunks"]),
    )
