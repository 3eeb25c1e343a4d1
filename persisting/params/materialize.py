"""Tensors <-> chunks outside the store's bookkeeping: assembling stored tensors from their
chunks (each chunk read once, straight into caller tensors where they fit) and private snapshots of the
caller's tensors for background saves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from persisting.engine.codec import decode_tensor
from persisting.errors import CorruptionError
from persisting.params.chunks import ChunkTable
from persisting.params.manifest import TensorEntry
from persisting.params.tree import NUMPY_SCALAR, TORCH, TensorRef

__all__ = ["materialize", "snapshot_tensor"]


def materialize(
    chunks: ChunkTable, entries: Mapping[int, TensorEntry], step: int, dest: Mapping[int, Any],
    counts: dict[str, int],
) -> dict[int, Any]:
    """Build the tensors of ``entries`` from their chunks, each chunk read once; ``dest``
    offers existing tensors, by tensor reference, to read into; ``counts`` gains the bytes and
    chunks read."""
    buffers: dict[int, np.ndarray] = {}
    outputs: dict[int, Any] = {}
    targets: dict[str, list[tuple[int, int]]] = {}
    for i, e in entries.items():
        if e.kind == TORCH:
            import torch

            t: Any = dest.get(i)
            if not _fits(t, e):
                t = torch.empty(e.shape, dtype=getattr(torch, e.dtype))
            outputs[i] = t
            t = t.detach()
            buffers[i] = t.reshape(-1).view(torch.uint8).numpy() if e.nbytes else np.empty(0, np.uint8)
        else:
            buffers[i] = np.empty(e.nbytes, np.uint8)
        offset = 0
        for key in e.chunks:
            targets.setdefault(key, []).append((i, offset))
            offset += chunks.size(key)
        if offset != e.nbytes:
            raise CorruptionError(
                f"tensor {e.name!r} of step {step}: its chunks hold {offset} bytes, its manifest says {e.nbytes}",
                step=step, key=e.name,
            )
    first = {key: buffers[at[0][0]][at[0][1] : at[0][1] + chunks.size(key)] for key, at in targets.items()}
    counts["bytes_read"] += chunks.read_into(first)
    counts["chunks_read"] += len(first)
    for key, at in targets.items():  # a chunk shared by several tensors (dedup) is read once
        src = first[key]
        for i, off in at[1:]:
            buffers[i][off : off + len(src)] = src
    for i, e in entries.items():
        if e.kind != TORCH:
            raw = memoryview(buffers[i])  # type: ignore[arg-type]  # numpy stubs lack Buffer
            arr = decode_tensor(raw, dtype=e.dtype, shape=e.shape, framework="numpy", copy=False)
            outputs[i] = arr[()] if e.kind == NUMPY_SCALAR else arr
    return outputs


def _fits(t: Any, e: TensorEntry) -> bool:
    """Can stored tensor ``e`` be read straight into ``t``?"""
    return (
        t is not None and str(t.dtype).removeprefix("torch.") == e.dtype and tuple(t.shape) == e.shape
        and t.device.type == "cpu" and t.is_contiguous() and e.nbytes > 0
    )


def snapshot_tensor(ref: TensorRef, staging: dict[tuple[Any, tuple[int, ...]], list[Any]]) -> TensorRef:
    """A private copy of a tensor, so the caller may change the original at once; into a
    buffer of ``staging`` (same dtype and shape) when one is left."""
    if ref.kind == TORCH:
        t = ref.value.detach()
        spare = staging.get((t.dtype, tuple(t.shape)))
        if spare:
            buf = spare.pop()
            buf.copy_(t)
            return TensorRef(ref.name, ref.kind, buf)
        copy = t.to("cpu", copy=True) if t.device.type != "cpu" else t.clone(memory_format=_contiguous())
        return TensorRef(ref.name, ref.kind, copy)
    if ref.kind == NUMPY_SCALAR:
        return ref
    return TensorRef(ref.name, ref.kind, np.array(ref.value, copy=True, order="C"))


def _contiguous() -> Any:
    import torch

    return torch.contiguous_format
