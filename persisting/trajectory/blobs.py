"""Blob step fields (images, bfloat16 arrays) read through the engine's payload path.

A blob field stores each step's array as raw C-order bytes with an xxh3-128 checksum beside it
(``<name>__xxh3``). Sampling many steps of such a field reads every payload straight into its
row of one preallocated ``(n, *shape)`` array with :func:`persisting.engine.payloads.read_into`
(parallel ``preadv`` from Lance's blob files, checksums verified, no per-row decode), instead of
pulling each blob through Lance and decoding it in a Python loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from persisting.engine.payloads import read_into
from persisting.engine.table import Table
from persisting.errors import CorruptionError
from persisting.trajectory.fields import FieldSpec

__all__ = ["gather_blobs"]


def _destination(spec: FieldSpec, n: int) -> Any:
    try:
        return np.empty((n, *spec.shape), np.dtype(spec.dtype))
    except TypeError:  # bfloat16 and friends: no numpy dtype, a torch tensor holds them
        import torch

        return torch.empty((n, *spec.shape), dtype=getattr(torch, spec.dtype))


def gather_blobs(steps: Table, spec: FieldSpec, positions: np.ndarray, sums: pa.Array) -> Any | None:
    """Field ``spec`` of the steps at ``positions`` (distinct), one row each, as an
    ``(n, *shape)`` array (a torch tensor for dtypes numpy lacks). None when the fast path does
    not apply -- a step without the field, or a payload moved by another writer's cleanup --
    and the caller reads the column the generic way. Damage raises CorruptionError."""
    if sums.null_count:
        return None
    out = _destination(spec, len(positions))
    results = read_into(steps, spec.name, positions.tolist(), [out[i] for i in range(len(positions))],
                        checksums=sums.to_pylist())
    for row, r in zip(positions.tolist(), results):
        if r.ok:
            continue
        if r.status == "corrupt" and not r.retry:
            raise CorruptionError(
                f"step field {spec.name!r} at row {row} of {steps.uri} fails its check ({r.reason}) at {r.where}; "
                "the stored bytes were not returned",
                field=spec.name, where=r.where,
            )
        return None
    return out
