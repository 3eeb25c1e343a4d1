"""``persisting index``: build an index on one column of every table under a path that has it.

Each table is opened as a writer (pending WAL rows are committed first, as the store would on
open); a table held by an exclusive writer (a live queue bucket, a KV namespace) fails with
LockedError and exit 1, never raced. The index is one Lance commit: readers see it at once.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from persisting.engine.indexes import KINDS, METRICS
from persisting.engine.table import Table
from persisting.errors import PersistingError
from persisting.ops.catalog import StoreInfo, iter_tables
from persisting.ops.maintain import MaintenanceReport
from persisting.ops.progress import Progress

__all__ = ["add_index_command", "build_indexes"]


def build_indexes(stores: list[StoreInfo], column: str, kind: str, metric: str, **tuning: Any) -> MaintenanceReport:
    """Index ``column`` in every table of ``stores`` that has it; tables without it are skipped."""
    report = MaintenanceReport()
    pairs = [(s, t) for s, t in iter_tables(stores) if column in t.columns]
    with Progress(len(pairs), "index", unit="tables") as bar:
        for _, t in pairs:
            bar.step(t.path)
            try:
                start = time.perf_counter()
                with Table(t.path) as table:
                    info = table.create_index(column, kind=kind, metric=metric, **tuning)
                report.done.append({"table": t.path, **info.to_json(), "seconds": round(time.perf_counter() - start, 3)})
            except PersistingError as exc:
                report.failed.append({"table": t.path, "error": f"{type(exc).__name__}: {exc}"})
    return report


def cmd_index(args: argparse.Namespace) -> int:
    from persisting.ops.commands import UsageError, _report_maintenance, _stores

    stores = _stores(args.path)
    if not any(args.column in t.columns for _, t in iter_tables(stores)):
        raise UsageError(f"no table under {args.path} has a column {args.column!r}")
    tuning = {} if args.num_partitions is None else {"num_partitions": args.num_partitions}
    report = build_indexes(stores, args.column, args.kind, args.metric, **tuning)
    return _report_maintenance(report, "indexed", args.json)


def add_index_command(sub: Any) -> None:
    """Add ``persisting index`` to the subparsers."""
    from persisting.ops.commands import _guarded

    p = sub.add_parser("index", help="index one column of every table under PATH (vector, btree, bitmap)",
                       description="Build (or replace) an index on COLUMN in every table under PATH that has it: "
                                   "'vector' (IVF_PQ, for nearest-neighbour search on a fixed-size float column), "
                                   "'btree' (point and range filters), 'bitmap' (few distinct values). Exit 1 if a "
                                   "table could not be indexed (e.g. held by an exclusive writer), 2 on usage errors.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--column", required=True, metavar="C")
    p.add_argument("--kind", choices=KINDS, default="vector", help="index kind (default vector)")
    p.add_argument("--metric", choices=METRICS, default="l2", help="distance of a vector index (default l2)")
    p.add_argument("--num-partitions", type=int, default=None, metavar="N", help="IVF lists (default ~sqrt(rows))")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guarded(cmd_index))
