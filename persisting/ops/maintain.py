"""``persisting compact`` and ``persisting gc``: maintenance through the engine's writer path.

Each table is opened as its writer (so a store in use elsewhere is refused with LockedError,
never raced), which also replays and commits its WAL first, exactly as the store would on
open. Checkpoint stores are collected with ``ParamStore.gc`` (unreferenced chunks removed,
their space reclaimed); every other table drops old, untagged versions with ``Table.cleanup``.

Compaction rewrites small fragments into large ones; the old fragments stay referenced by the
older versions until those are cleaned up, so a compaction alone grows the store (a 1.1 GB
store became 1.8 GB). ``compact`` therefore cleans up the versions it superseded right after,
keeping tagged versions (and the newest ``retain_versions`` when given): disk use does not grow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from persisting.engine.table import Table
from persisting.errors import PersistingError
from persisting.ops.catalog import StoreInfo, iter_tables
from persisting.ops.progress import Progress

__all__ = ["MaintenanceReport", "compact", "gc"]


@dataclass
class MaintenanceReport:
    """Per-table results and the tables that could not be maintained (and why)."""

    done: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ok": not self.failed, "done": self.done, "failed": self.failed}


def compact(stores: list[StoreInfo], *, retain_versions: int | None = None) -> MaintenanceReport:
    """Merge small fragments of every table (keeps the applied LSN), then remove the versions
    that compaction superseded (tagged versions and the newest ``retain_versions`` stay)."""
    report = MaintenanceReport()
    pairs = list(iter_tables(stores))
    with Progress(len(pairs), "compact", unit="tables") as bar:
        for _, t in pairs:
            bar.step(t.path)
            try:
                with Table(t.path) as table:
                    result = table.compact()
                    freed = table.cleanup(older_than=timedelta(0), retain_versions=retain_versions)
                after = _tree_bytes(t.path)
                report.done.append({"table": t.path, **result, "bytes_removed": freed,
                                    "bytes_before": t.bytes_on_disk, "bytes_after": after})
            except PersistingError as exc:
                report.failed.append({"table": t.path, "error": str(exc)})
    return report


def _tree_bytes(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                continue
    return total


def gc(stores: list[StoreInfo], *, older_than: timedelta = timedelta(0),
       retain_versions: int | None = None) -> MaintenanceReport:
    """Reclaim space: unreferenced checkpoint chunks, then old versions of every table."""
    report = MaintenanceReport()
    units = sum(1 + len(s.tables) if s.kind == "params" else len(s.tables) for s in stores)
    with Progress(units, "gc") as bar:
        for store in stores:
            if store.kind == "params":
                bar.step(store.path)
                try:
                    report.done.append({"store": store.path, **_param_gc(store.path)})
                except PersistingError as exc:
                    report.failed.append({"store": store.path, "error": str(exc)})
                    continue
            for t in store.tables:
                bar.step(t.path)
                try:
                    with Table(t.path) as table:
                        freed = table.cleanup(older_than=older_than, retain_versions=retain_versions)
                    report.done.append({"table": t.path, "bytes_removed": freed})
                except PersistingError as exc:
                    report.failed.append({"table": t.path, "error": str(exc)})
    return report


def _param_gc(path: str) -> dict[str, int]:
    from persisting.params.store import ParamStore

    with ParamStore(path) as ps:
        r = ps.gc()
    return {"chunks_removed": r.chunks_removed, "bytes_removed": r.bytes_removed, "bytes_freed": r.bytes_freed}
