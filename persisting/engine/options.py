"""Tunables of a Table, in one typed place with their defaults."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

from persisting.errors import ConfigError

__all__ = ["Durability", "Recovery", "TableOptions"]

_MAX_INTERVAL = 86_400.0  # a day: longer is "never", and threading waits overflow near 2**33 s

Durability = Literal["none", "batch", "always"]
Recovery = Literal["point_in_time", "salvage"]


@dataclass(frozen=True)
class TableOptions:
    """How a Table buffers, logs, commits and compacts.

    durability: ``"none"`` (no WAL: rows are durable once ``flush()`` returns), ``"batch"``
        (WAL group commit every ``wal_sync_interval`` s), ``"always"`` (fsync per append).
    wal_sync_interval: seconds between group-commit fsyncs; 0 means ``"always"``.
    wal_sync_bytes: also sync once this many WAL bytes are pending (None: time only).
    max_wal_size: a WAL segment rotates at this many bytes.
    flush_rows / flush_bytes: commit the buffer to Lance once it holds this much.
    flush_interval: also commit once the oldest buffered row has waited this many seconds
        (None: by size only). Bounds how late other processes see rows of a slow writer, and
        lets a fast one use a large ``flush_rows`` (fewer, larger commits) without delaying
        them. Needs ``background_flush`` for a timer; without it, appends check the age.
    compact_fragments: compact the dataset once it has this many fragments (0 = never).
    recovery: ``"point_in_time"`` cuts a torn tail and refuses mid-log corruption;
        ``"salvage"`` skips corrupt frames and reports what was lost.
    background_flush: commit a full buffer on a background thread while appends continue;
        rows that arrive during a commit go into the next one, so a writer that outpaces the
        committer gets fewer, larger commits. Appends wait only once ``64 x flush_rows`` rows
        or ``4 x flush_bytes`` bytes are waiting (not counting the batch just appended);
        ``flush()`` still waits.
    wal_lease_seconds: with a WAL on object storage (``Table(wal_uri=...)``), how long a
        writer's lease lasts without renewal: a dead writer's identity is taken over this long
        after its last renewal (renewed every third of it).
    wal_group_interval: with a WAL on object storage and durability ``always``, how long a
        group stays open before its PUT (0: PUT as soon as the previous PUT returns).
    dedup: ``(producer column, sequence column)``: drop rows whose sequence is not above the
        highest seen from their producer (see :mod:`persisting.engine.dedup`).
    column_compression: how Lance compresses string/binary/list columns that do not declare
        their own ``lance-encoding:compression``: ``None`` stores them uncompressed (Lance
        2.2's default compression costs ~3x in append throughput), ``"lz4"`` or ``"zstd"``
        trade speed for space.
    """

    durability: Durability = "batch"
    wal_sync_interval: float = 1.0
    wal_sync_bytes: int | None = None
    max_wal_size: int = 100 * 1024 * 1024
    flush_rows: int = 10_000
    flush_bytes: int = 64 * 1024 * 1024
    flush_interval: float | None = None
    compact_fragments: int = 64
    recovery: Recovery = "point_in_time"
    background_flush: bool = True
    column_compression: Literal["lz4", "zstd"] | None = None
    wal_lease_seconds: float = 10.0
    wal_group_interval: float = 0.0
    dedup: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.durability not in ("none", "batch", "always"):
            raise ConfigError(f"durability {self.durability!r} is not 'none', 'batch' or 'always'", option="durability")
        if self.recovery not in ("point_in_time", "salvage"):
            raise ConfigError(f"recovery {self.recovery!r} is not 'point_in_time' or 'salvage'", option="recovery")
        if self.column_compression not in (None, "lz4", "zstd"):
            raise ConfigError(
                f"column_compression {self.column_compression!r} is not None, 'lz4' or 'zstd'",
                option="column_compression",
            )
        interval = self.wal_sync_interval
        if isinstance(interval, bool) or not isinstance(interval, numbers.Real) or not 0 <= interval <= _MAX_INTERVAL:
            raise ConfigError(
                f"wal_sync_interval={interval!r} must be a number of seconds from 0 (fsync every append) "
                f"to {_MAX_INTERVAL} (not NaN or infinity)",
                option="wal_sync_interval",
            )
        object.__setattr__(self, "wal_sync_interval", float(interval))
        if self.flush_interval is not None:
            v = self.flush_interval
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v <= _MAX_INTERVAL:
                raise ConfigError(
                    f"flush_interval={v!r} must be None or a number of seconds above 0, at most {_MAX_INTERVAL}",
                    option="flush_interval",
                )
            object.__setattr__(self, "flush_interval", float(v))
        for name, low in (("wal_lease_seconds", 0.1), ("wal_group_interval", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= _MAX_INTERVAL:
                raise ConfigError(f"{name}={value!r} must be a number of seconds from {low} to {_MAX_INTERVAL}", option=name)
            object.__setattr__(self, name, float(value))
        if self.dedup is not None:
            d = self.dedup
            if not isinstance(d, (tuple, list)) or len(d) != 2 or not all(isinstance(c, str) and c for c in d):
                raise ConfigError(f"dedup={d!r} must be (producer column, sequence column), two names", option="dedup")
            object.__setattr__(self, "dedup", (d[0], d[1]))
        if self.wal_sync_bytes is not None:
            self._int("wal_sync_bytes", minimum=1)
        for name in ("max_wal_size", "flush_rows", "flush_bytes"):
            self._int(name, minimum=1)
        self._int("compact_fragments", minimum=0, hint=" (0 never compacts)")
        if not isinstance(self.background_flush, bool):
            raise ConfigError(f"background_flush={self.background_flush!r} must be True or False", option="background_flush")

    def _int(self, name: str, *, minimum: int, hint: str = "") -> None:
        """Check an integer option (an integral float such as 1e6 is taken as that int)."""
        value = getattr(self, name)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ConfigError(f"{name}={getattr(self, name)!r} must be an int >= {minimum}{hint}", option=name)
        object.__setattr__(self, name, int(value))

    @property
    def wal_enabled(self) -> bool:
        return self.durability != "none"

    @property
    def wal_sync(self) -> Literal["batch", "always"]:
        return "always" if self.durability == "always" or self.wal_sync_interval == 0 else "batch"
