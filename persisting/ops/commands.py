"""The operator subcommands of ``persisting``: ls, inspect, verify, compact, gc, export, metrics.

Exit codes scripts can rely on: 0 success (for ``verify``: healthy), 1 the work found problems
or failed (verify found damage, a table was locked by a writer, an export failed), 2 usage
errors (bad arguments, a path that does not exist or holds no store).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from datetime import timedelta
from typing import Any

from persisting.engine.durable import is_local
from persisting.errors import NotFoundError, PersistingError

__all__ = ["EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "add_commands"]

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the command line: exit 2 with the message."""


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _grid(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _existing(path: str) -> str:
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist; pass a directory that holds Persisting stores")
    return os.path.abspath(path)


def _stores(path: str, *, wal_rows: bool = True) -> list[Any]:
    from persisting.ops.catalog import discover

    stores = discover(_existing(path), wal_rows=wal_rows)
    if not stores:
        raise UsageError(f"{path} holds no Persisting tables (a Lance directory with _versions/, or a "
                         "<name>.wal directory holding a writer's log)")
    return stores


def _located(args: argparse.Namespace, *, wal_rows: bool = True) -> tuple[str, dict[str, str] | None, list[Any]]:
    """``(root, storage options, stores)`` of PATH: a local directory, or an object-store URI
    (``s3://bucket/prefix``) read with ``--storage-option`` flags and ``--wal-dir``."""
    if is_local(args.path):
        if args.storage_option or args.wal_dir is not None:
            raise UsageError(f"--storage-option and --wal-dir are for an s3:// PATH; {args.path} is a local path "
                             "(its WALs are found beside its tables)")
        return os.path.abspath(args.path), None, _stores(args.path, wal_rows=wal_rows)
    from persisting.ops.remote_catalog import discover_remote

    root, options = args.path.rstrip("/"), _storage_options(args.storage_option)
    try:
        return root, options, discover_remote(root, options, args.wal_dir, wal_rows=wal_rows)
    except NotFoundError as exc:
        raise UsageError(str(exc)) from exc


def _one_store(args: argparse.Namespace) -> tuple[Any, dict[str, str] | None]:
    """The store at PATH (a store directory or prefix, or a table inside one) and its storage options."""
    root, options, stores = _located(args)
    exact = [s for s in stores if s.path == root or any(t.path == root for t in s.tables)]
    if len(exact) == 1:
        return exact[0], options
    if len(stores) == 1:
        return stores[0], options
    listing = ", ".join(f"{s.path} ({s.kind})" for s in stores)
    raise UsageError(f"{args.path} holds {len(stores)} stores; pass one of them: {listing}")


def _relative(path: str, root: str) -> str:
    if path == root:
        return "."
    return path[len(root) + 1:] if not is_local(root) else os.path.relpath(path, root)


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# -- ls -----------------------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace) -> int:
    root, _, stores = _located(args)
    if args.json:
        _print_json({"path": root, "stores": [s.to_json() for s in stores]})
        return EXIT_OK
    rows = []
    for s in stores:
        rel = _relative(s.path, root)
        if s.kind == "queue":
            rel = f"{rel} (topic {s.topic})"
        rows.append([s.kind, rel, "", s.rows, _human_bytes(s.bytes_on_disk), sum(t.versions for t in s.tables),
                     _when(s.last_write)])
        if s.kind != "table":
            for t in s.tables:
                rows.append(["", "", t.name, t.rows, _human_bytes(t.bytes_on_disk + t.wal_bytes), t.versions,
                             _when(t.last_write)])
    print(_grid(["KIND", "STORE", "TABLE", "ROWS", "BYTES", "VERSIONS", "LAST WRITE (UTC)"], rows))
    for s in stores:
        for t in s.tables:
            if t.error is not None:
                print(f"warning: {t.path} could not be read: {t.error} (run persisting verify)", file=sys.stderr)
            elif not t.has_dataset:
                print(f"note: {t.path} has rows only in its WAL (its writer stopped before the first commit): "
                      "shown replayed in memory; the next writer to open it commits them", file=sys.stderr)
    return EXIT_OK


def _when(ts: float | None) -> str:
    from datetime import datetime, timezone

    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# -- inspect ------------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    from persisting.ops.inspect import inspect_store

    store, options = _one_store(args)
    doc = inspect_store(store, storage_options=options, wal_dir=args.wal_dir)
    if args.json:
        _print_json(doc)
        return EXIT_OK
    print(f"{doc['kind']} store {doc['path']}: {doc['rows']} rows, {_human_bytes(doc['bytes'])}, "
          f"last write {doc['last_write'] or '-'}")
    detail: dict[str, Any] = doc.get(doc["kind"]) or {}
    if doc["kind"] == "params":
        print(f"\n{len(detail['checkpoints'])} checkpoints, {detail['chunks']} chunks, "
              f"{_human_bytes(detail['logical_bytes'])} of tensors stored in {_human_bytes(detail['stored_bytes'])} "
              f"(dedup ratio {detail['dedup_ratio']})")
        print(_grid(["STEP", "TAGS", "SIZE", "NEW", "TENSORS", "CHUNKS"], [
            [c["step"], ",".join(c["tags"]) or "-", _human_bytes(c["bytes"]), _human_bytes(c["new_bytes"]),
             c["tensors"], c["chunks"]] for c in detail["checkpoints"]]))
    elif doc["kind"] == "trajectory":
        print(f"\n{detail['episodes']} episodes, {detail['steps']} steps; status {detail.get('status', {})}")
        for col in ("length", "return"):
            if col in detail:
                d = detail[col]
                print(f"  {col}: min {d['min']}, mean {d['mean']:.3g}, max {d['max']}")
        print("  fields: " + ", ".join(f"{k} ({v})" for k, v in detail["fields"].items()))
    elif doc["kind"] == "queue":
        print(f"\ntopic {detail['topic']}: {detail['records']} records")
        print(_grid(["BUCKET", "RECORDS", "COMMITTED", "IN WAL", "FIRST OFFSET", "NEXT OFFSET", "WAL BYTES"], [
            [b["bucket"], b["records"], b["committed"], b["pending_in_wal"], b["first_offset"], b["next_offset"],
             b["wal_bytes"]] for b in detail["buckets"]]))
    elif doc["kind"] == "kvcache":
        print()
        print(_grid(["NAMESPACE", "ENTRIES", "BYTES", "CHUNK TOKENS", "DTYPES"], [
            [n["namespace"], n["entries"], _human_bytes(n.get("bytes", 0)), n.get("chunk_tokens"),
             ",".join(n.get("dtypes", []))] for n in detail["namespaces"]]))
        print(f"hit statistics: {detail['hit_statistics']}")
    print()
    for t in doc["tables"]:
        print(f"table {t['name']} ({t['path']})")
        print(f"  rows {t['rows']} (committed {t['committed_rows']}, in WAL {t['pending_rows']}), "
              f"version {t['version']} of {t['versions']}, tags {t.get('tags') or {}}, "
              f"applied LSN {t['applied_lsn']}, WAL {_human_bytes(t['wal_bytes'])}")
        if t.get("error"):
            print(f"  error: {t['error']}")
        if "schema" in t:
            print("  schema: " + ", ".join(f"{k}: {v}" for k, v in t["schema"].items()))
        for i in t.get("indexes") or ():
            print(f"  index {i['name']}: {i['kind']} on {i['column']} ({i['index_type']}{', ' + i['metric'] if i['metric'] else ''}), "
                  f"{i['indexed_rows']} rows indexed, {i['unindexed_rows']} not yet")
    return EXIT_OK


# -- verify -------------------------------------------------------------------------------------
def _storage_options(pairs: list[str] | None) -> dict[str, str] | None:
    """``--storage-option KEY=VALUE`` flags as Lance storage options (None: the environment's)."""
    options: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option {pair!r} is not KEY=VALUE (e.g. aws_endpoint=http://host:9000)")
        options[key] = value
    return options or None


def cmd_verify(args: argparse.Namespace) -> int:
    from persisting.ops.progress import Progress
    from persisting.ops.verify import verify

    root, options, stores = _located(args, wal_rows=False)
    rows = sum(t.committed_rows for s in stores for t in s.tables)
    with Progress(rows, "verify", unit="rows") as bar:  # on stderr: stdout stays the report
        report = verify(root, progress=bar.advance, stores=stores, storage_options=options, wal_dir=args.wal_dir)
    if args.json:
        _print_json(report.to_json())
    else:
        for f in report.findings:
            print(f"{f.severity.upper()}: {f.where()}: {f.message}")
        state = "healthy" if report.healthy else f"{len(report.problems)} problem(s)"
        print(f"{state}: {report.stores} stores, {report.tables} tables, {report.rows} rows, "
              f"{report.payloads} payload checksums, {report.wal_frames} WAL frames, "
              f"{report.files_hashed} file digests checked; "
              f"{len(report.warnings)} warning(s)")
    return EXIT_OK if report.healthy else EXIT_PROBLEMS


# -- compact / gc -------------------------------------------------------------------------------
def _report_maintenance(report: Any, verb: str, as_json: bool) -> int:
    if as_json:
        _print_json(report.to_json())
    else:
        for d in report.done:
            what = d.get("table") or d.get("store")
            extra = ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("table", "store"))
            print(f"{verb}: {what}: {extra}")
        for f in report.failed:
            print(f"FAILED: {f.get('table') or f.get('store')}: {f['error']}", file=sys.stderr)
    return EXIT_OK if not report.failed else EXIT_PROBLEMS


def cmd_compact(args: argparse.Namespace) -> int:
    from persisting.ops.maintain import compact

    if args.retain_versions is not None and args.retain_versions < 1:
        raise UsageError("--retain-versions must be >= 1")
    return _report_maintenance(compact(_stores(args.path), retain_versions=args.retain_versions), "compacted", args.json)


def cmd_gc(args: argparse.Namespace) -> int:
    from persisting.ops.maintain import gc

    if args.older_than < 0 or (args.retain_versions is not None and args.retain_versions < 1):
        raise UsageError("--older-than must be >= 0 and --retain-versions >= 1")
    report = gc(_stores(args.path), older_than=timedelta(seconds=args.older_than), retain_versions=args.retain_versions)
    return _report_maintenance(report, "collected", args.json)


# -- export -------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from persisting.ops.export import export_checkpoint, export_parquet

    from persisting.ops.progress import Progress

    store, options = _one_store(args)
    where = {"storage_options": options, "wal_dir": args.wal_dir}
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a directory; name the file to write")
    if os.path.exists(out) and not args.force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    if store.kind == "params":
        if not out.endswith(".safetensors"):
            raise UsageError("a checkpoint exports to a .safetensors file: --out FILE.safetensors")
        result = export_checkpoint(store, args.step, args.tag, out, **where)
        print(f"exported checkpoint step {result['step']} to {out} ({_human_bytes(os.path.getsize(out))})")
        return EXIT_OK
    if store.kind == "kvcache":
        raise UsageError(f"{store.path} is a KV cache store; export takes a checkpoint, episodes, a queue topic or a table")
    if args.step is not None or args.tag is not None:
        raise UsageError(f"--step/--tag select a checkpoint, but {store.path} is a {store.kind} store")
    if not out.endswith(".parquet"):
        raise UsageError(f"a {store.kind} store exports to Parquet: --out FILE.parquet")
    with Progress(store.rows, "export", unit="rows") as bar:
        result = export_parquet(store, out, what=args.what, progress=bar.advance, **where)
    print(f"exported {result['rows']} rows of {store.path} to {out} ({_human_bytes(os.path.getsize(out))})")
    return EXIT_OK


# -- metrics ------------------------------------------------------------------------------------
def cmd_metrics_serve(args: argparse.Namespace) -> int:
    from persisting.ops.metricsd import serve

    root = _existing(args.path)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    try:
        server, thread = serve(root, host=args.host, port=args.port)
    except OSError as exc:
        print(f"persisting metrics serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    host, port = str(args.host), server.server_address[1]
    print(f"serving Prometheus metrics for {root} on http://{host}:{port}/metrics", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(timeout=5)
    return EXIT_OK


# -- wiring -------------------------------------------------------------------------------------
def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except UsageError as exc:
            print(f"persisting {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except PersistingError as exc:
            print(f"persisting {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_PROBLEMS
    return run


def _remote_flags(p: argparse.ArgumentParser, wal_use: str) -> None:
    p.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                   help="a Lance storage option for an s3:// PATH (repeatable), e.g. aws_endpoint=http://host:9000")
    p.add_argument("--wal-dir", default=None, metavar="DIR",
                   help=f"for an s3:// PATH: the local WAL directory its stores were opened with ({wal_use} if given)")


def add_commands(sub: Any) -> None:
    """Add the operator subcommands to ``persisting``'s subparsers."""
    p = sub.add_parser("ls", help="list the stores and tables under PATH: kind, rows, bytes, versions, last write",
                       description="List the stores and tables under PATH (a directory, or s3://bucket/prefix). "
                                   "Exit 2 if PATH holds none.")
    p.add_argument("path", metavar="PATH", help="a directory, or an object-store URI such as s3://bucket/prefix")
    _remote_flags(p, "its rows counted")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_guarded(cmd_ls))

    p = sub.add_parser("inspect", help="show one store in detail",
                       description="Show one store in detail: checkpoints, episodes, queue buckets, KV namespaces, "
                                   "and every table's schema, versions, tags, applied LSN and WAL size.")
    p.add_argument("path", metavar="PATH", help="a store directory or s3:// prefix (or a table inside it)")
    _remote_flags(p, "its rows shown")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guarded(cmd_inspect))

    p = sub.add_parser("verify", help="check every WAL frame, row and payload checksum (read-only)",
                       description="Read every WAL frame and every row under PATH and check every checksum, "
                                   "changing nothing. Exit 0 when healthy, 1 when problems were found, 2 on "
                                   "usage errors. A torn WAL tail (what a crash leaves) is a warning.")
    p.add_argument("path", metavar="PATH", help="a directory, or an object-store URI such as s3://bucket/prefix")
    _remote_flags(p, "checked")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guarded(cmd_verify))

    p = sub.add_parser("compact", help="merge small fragments of every table under PATH",
                       description="Merge small fragments of every table under PATH (opens each as its writer: "
                                   "a table in use by another writer fails with exit 1), then remove the "
                                   "versions compaction superseded, keeping tagged ones, so disk use does not "
                                   "grow. Progress on stderr.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--retain-versions", type=int, default=None, metavar="N",
                   help="also keep the newest N versions (default: the latest and tagged ones)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guarded(cmd_compact))

    p = sub.add_parser("gc", help="reclaim space: unreferenced checkpoint chunks and old table versions",
                       description="Reclaim space under PATH: ParamStore.gc for checkpoint stores, then old "
                                   "untagged versions of every table. Progress on stderr.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--older-than", type=float, default=0.0, metavar="SECONDS",
                   help="only remove versions older than this (default 0: all but the latest and tagged)")
    p.add_argument("--retain-versions", type=int, default=None, metavar="N", help="always keep the newest N versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guarded(cmd_gc))

    p = sub.add_parser("export", help="a checkpoint to safetensors; episodes or a queue topic to Parquet",
                       description="Export a checkpoint (--step N or --tag T, default the latest) to "
                                   "FILE.safetensors, or a trajectory store, queue topic or table to FILE.parquet.")
    p.add_argument("path", metavar="PATH", help="the store to export: a directory or an s3:// prefix")
    _remote_flags(p, "its rows exported")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.safetensors or FILE.parquet")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (checkpoint stores)")
    p.add_argument("--tag", default=None, help="checkpoint tag (checkpoint stores)")
    p.add_argument("--what", choices=("episodes", "steps"), default="episodes",
                   help="for a trajectory store: one row per episode (default) or every step")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists (refused otherwise)")
    p.set_defaults(func=_guarded(cmd_export))

    metrics = sub.add_parser("metrics", help="Prometheus metrics for stores on disk",
                             description="Prometheus metrics for the stores under a path.")
    msub = metrics.add_subparsers(dest="metrics_command", required=True)
    p = msub.add_parser("serve", help="serve /metrics for the stores under PATH",
                        description="Serve Prometheus metrics for the stores under PATH, read from disk at every "
                                    "scrape. Binds loopback unless --host says otherwise. Stops on SIGTERM/SIGINT.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--port", type=int, default=9464, help="TCP port (default 9464; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.set_defaults(func=_guarded(cmd_metrics_serve))
