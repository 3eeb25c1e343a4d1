"""The episode and step layout of a TrajectoryStore, in one place.

``episodes.lance`` holds one row per *revision* of an episode (the engine appends only; readers
keep the newest ``rev``): :data:`EPISODE_SCHEMA` plus user metadata columns. ``steps.lance``
holds one row per step: :data:`STEP_KEYS` plus the user's fields (see
:mod:`persisting.trajectory.fields`). An episode's ``status`` is one of :data:`STATUSES`.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["ENDED_STATUSES", "EPISODE_COLUMNS", "EPISODE_SCHEMA", "STATUSES", "STEP_KEYS"]

EPISODE_SCHEMA = pa.schema([
    pa.field("episode_id", pa.int64(), nullable=False),
    pa.field("rev", pa.int64(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("length", pa.int64()),
    pa.field("return", pa.float64()),
    pa.field("start_time", pa.timestamp("us", tz="UTC")),
    pa.field("end_time", pa.timestamp("us", tz="UTC")),
])
EPISODE_COLUMNS = tuple(EPISODE_SCHEMA.names)
STEP_KEYS = ("episode_id", "step")
STATUSES = ("open", "complete", "truncated", "incomplete")
ENDED_STATUSES = STATUSES[1:]
