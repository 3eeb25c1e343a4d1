"""``persisting verify``: read every WAL frame and every row, check every checksum, change nothing.

WAL segments are read with the table's applied LSN in point-in-time mode (the same rules a
writer's recovery applies): a torn tail is a warning (a crash leaves one and recovery cuts it),
a bad frame before the tail is a problem named by file and offset. Rows are read in batches;
every payload is checked by the engine's one rule (:func:`~persisting.engine.payloads.payload_matches`:
xxh3-128 over the bytes as stored), against the checksum column its store declares (params
``chunks``: ``data`` against its content key ``hash``; kvcache: ``payload`` against ``checksum``)
or, in any table, a column ``X`` against ``X__xxh3`` (trajectory blob fields).

Checkpoint manifests must reference only chunks that exist. Every committed Lance file
(manifests, data, blob, deletion, index and transaction files) is hashed against the xxh3-128
digest recorded at its commit (:mod:`persisting.engine.integrity`): a changed, truncated or
missing file is a problem, and so is a committed file that no digest record covers (its
record was lost, so its bytes cannot be vouched for).

On an object store (``s3://``, found by :mod:`persisting.ops.remote_catalog`) no digests are
recorded (they are taken at local fsync time): verify says so for each table and still checks
what it can (:mod:`persisting.ops.verify_remote`) -- rows decode, payload checksums, row counts,
checkpoint manifests against chunks, object-store WALs, and local WALs when the store's
``wal_dir`` is given. What it could not check is a warning, never a silent "healthy";
``files_hashed`` counts the files actually hashed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import lance
import pyarrow as pa

from persisting.engine import integrity
from persisting.engine.batches import decode_batch
from persisting.engine.commits import writer_applied_lsn
from persisting.engine.durable import is_local
from persisting.engine.lance_io import is_blob, is_panic
from persisting.engine.payloads import PayloadColumn, payload_columns, payload_matches
from persisting.engine.wal import ReplayReport, read_frames
from persisting.engine.writers import base_problem, read_base, writer_wal_dirs
from persisting.errors import CorruptionError, PersistingError
from persisting.ops.catalog import StoreInfo, TableInfo, discover
from persisting.ops.verify_remote import check_object_wal, check_remote_table

__all__ = ["Finding", "VerifyReport", "verify"]

_BATCH_ROWS = 1024
_BLOB_BATCH_ROWS = 8  # rows with payloads (checkpoint chunks are MiBs each): bounded memory


@dataclass(frozen=True)
class Finding:
    """One problem or warning: where (a file and byte offset, or a table and row) and what."""

    severity: str  # "problem" | "warning"
    path: str
    message: str
    offset: int | None = None
    row: int | None = None

    def where(self) -> str:
        if self.offset is not None:
            return f"{self.path} offset {self.offset}"
        if self.row is not None:
            return f"{self.path} row {self.row}"
        return self.path

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "path": self.path, "offset": self.offset, "row": self.row,
                "message": self.message}


@dataclass
class VerifyReport:
    """Totals and findings of one run; healthy when no finding is a problem."""

    stores: int = 0
    tables: int = 0
    rows: int = 0
    payloads: int = 0
    wal_frames: int = 0
    files_hashed: int = 0  # committed files checked against a recorded digest
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "problem"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy, "stores": self.stores, "tables": self.tables, "rows": self.rows,
            "payloads_checked": self.payloads, "wal_frames": self.wal_frames,
            "files_hashed": self.files_hashed,
            "problems": [f.to_json() for f in self.problems], "warnings": [f.to_json() for f in self.warnings],
        }


Progressed = Callable[[int, str], None]


def verify(root: str, *, progress: Progressed | None = None, stores: list[StoreInfo] | None = None,
           storage_options: dict[str, str] | None = None, wal_dir: str | None = None) -> VerifyReport:
    """Verify every store and table under ``root`` read-only; ``progress(rows, table)`` is
    called as each table starts (0 rows) and after each batch of rows checked. A ``root`` on
    an object store (``s3://bucket/prefix``) is read with ``storage_options``; ``wal_dir`` is
    its stores' local WAL directory (the one their writers were given), checked when given."""
    report = VerifyReport()
    opts = None if is_local(root) else storage_options
    if stores is None:
        if is_local(root):
            stores = discover(root, wal_rows=False)
        else:
            from persisting.ops.remote_catalog import discover_remote

            stores = discover_remote(root, storage_options, wal_dir, wal_rows=False)  # verify reads the WALs itself
    report.stores = len(stores)
    for store in stores:
        chunk_keys: set[str] | None = None
        for t in store.tables:
            if progress is not None:
                progress(0, t.path)
            report.tables += 1
            if not t.has_dataset:  # a writer died before its first commit: only its WAL to check
                _verify_wal(t, report)
                if not is_local(t.path):
                    check_object_wal(t, report, opts)
                if t.error is not None:
                    report.findings.append(Finding("problem", t.path, f"cannot replay its WAL: {t.error}"))
                continue
            damaged = _verify_digests(t, report) if is_local(t.path) else check_remote_table(t, report, opts, wal_dir)
            _verify_wal(t, report, opts)
            if damaged:
                # never hand Lance a data file known damaged: a flipped length can make its reader
                # allocate without bound (the soak corruption sweep saw 24 GiB and an OOM kill)
                report.findings.append(Finding(
                    "problem", t.path, f"rows not scanned: {len(damaged)} committed data file(s) fail their "
                    f"digests ({', '.join(damaged[:3])}{', ...' if len(damaged) > 3 else ''})"))
                continue
            keys = _verify_rows(store, t, report, progress, opts)
            if store.kind == "params" and t.name == "chunks":
                chunk_keys = keys
        if store.kind == "params" and chunk_keys is not None:
            _verify_manifests(store, chunk_keys, report, opts)
        if store.kind == "params" and is_local(store.path):
            _verify_head(store, report)
        elif store.kind == "params":
            report.findings.append(Finding(
                "warning", store.path, "not checked: the record of the newest checkpoint (a ParamStore on an "
                "object store keeps none, so a lost newest manifest cannot be noticed here)"))
    return report


def _verify_digests(t: TableInfo, report: VerifyReport) -> list[str]:
    """Hash every recorded file of the table; flag changed, missing and unrecorded files.
    Returns the damaged files other than blob files (those hold only payload bytes, which the
    row check verifies by their checksums; the others hold the lengths Lance trusts)."""
    try:
        recorded = integrity.load(t.path)
    except CorruptionError as exc:
        report.findings.append(Finding("problem", str(exc.details.get("path", t.path)), str(exc)))
        return []
    if recorded is None:
        report.findings.append(Finding(
            "warning", t.path, "no digests recorded (written before digests existed): only payload "
            "checksums can be checked"))
        return []
    damaged: list[str] = []
    for rel in sorted(recorded):
        report.files_hashed += 1
        problem = integrity.check_file(t.path, rel, recorded[rel], cache=False)
        if problem is not None:
            report.findings.append(Finding("problem", os.path.join(t.path, rel), problem))
            if not rel.endswith(".blob"):
                damaged.append(rel)
    for rel in _committed_files(t.path):
        if rel not in recorded:
            report.findings.append(Finding(
                "problem", os.path.join(t.path, rel),
                "no digest record covers this committed file (its record was lost or damaged, or a crash "
                "came between its commit and the record): its bytes cannot be verified"))
    return damaged


def _committed_files(root: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), root)
            if integrity.is_immutable(rel):
                out.append(rel)
    return sorted(out)


def _current_lsn(t: TableInfo, writer_id: str = "", wal: str | None = None,
                 opts: dict[str, str] | None = None) -> tuple[int, int]:
    """(version, applied LSN of ``writer_id``) of the table as committed now."""
    if not t.has_dataset:
        return 0, 0
    if t.error is not None:
        return t.version, t.applied_lsn
    try:
        ds = lance.dataset(t.path, storage_options=opts)
        floor = read_base(wal) if (writer_id and wal) else (0, 0)
        return ds.version, writer_applied_lsn(ds, writer_id, *floor)
    except BaseException as exc:  # noqa: BLE001 - the row check reports a table Lance cannot open
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        return t.version, t.applied_lsn


def _verify_wal(t: TableInfo, report: VerifyReport, opts: dict[str, str] | None = None) -> None:
    """Every writer's WAL of the table (live or dead), each against its own applied LSN."""
    if t.wal_dir is None:
        return
    for writer_id, wal in writer_wal_dirs(t.wal_dir):
        problem = base_problem(wal) if writer_id else None
        if problem is not None:
            report.findings.append(Finding("problem", os.path.join(wal, "BASE"), problem))
        _verify_writer_wal(t, writer_id, wal, report, opts)


def _verify_writer_wal(t: TableInfo, writer_id: str, wal: str, report: VerifyReport,
                       opts: dict[str, str] | None = None) -> None:
    findings: list[Finding] = []
    version, lsn = _current_lsn(t, writer_id, wal, opts)
    for attempt in range(3):
        replay, findings = ReplayReport(), []
        try:
            for frame in read_frames(wal, after_lsn=lsn, mode="point_in_time", report=replay):
                try:
                    decode_batch(frame.payload, where=f"{wal} frame lsn {frame.lsn}")
                except PersistingError as exc:
                    findings.append(Finding("problem", wal, f"frame lsn {frame.lsn}: {exc}"))
        except CorruptionError as exc:
            # a live writer may have committed and dropped segments meanwhile: read again
            # against its new applied LSN before calling the log corrupt
            now = _current_lsn(t, writer_id, wal, opts)
            if now[0] != version and attempt < 2:
                version, lsn = now
                continue
            path = exc.details.get("path") or wal
            findings.append(Finding("problem", str(path), str(exc), offset=exc.details.get("offset")))
        except (PersistingError, OSError) as exc:
            findings.append(Finding("problem", wal, str(exc)))
        break
    report.findings.extend(findings)
    report.wal_frames += replay.frames
    for r in replay.torn:
        report.findings.append(Finding(
            "warning", r.path,
            f"{r.reason}: {r.length} bytes after the last complete frame (what a crash leaves; "
            "the next writer's recovery cuts it, nothing acknowledged is lost)", offset=r.offset))
    for r in replay.damaged_applied:
        report.findings.append(Finding(
            "warning", r.path, f"{r.reason}: {r.length} damaged bytes whose frames are already in the table",
            offset=r.offset))


def _declared(store: StoreInfo, t: TableInfo) -> tuple[PayloadColumn, ...]:
    """The payload columns this table's store declares (others follow the ``X__xxh3`` rule)."""
    if store.kind == "params" and t.name == "chunks":
        from persisting.params.chunks import PAYLOADS as params_payloads

        return params_payloads
    if store.kind == "kvcache":
        from persisting.kvcache.chunks import PAYLOADS as kv_payloads

        return kv_payloads
    return ()


def _checks(store: StoreInfo, t: TableInfo) -> list[tuple[str, str, Callable[[Any, Any], bool]]]:
    """(payload column, checksum column, matches) pairs for this table: one rule for all."""
    return [(c.payload, c.checksum, payload_matches) for c in payload_columns(list(t.columns), _declared(store, t))]


def _batches(ds: lance.LanceDataset) -> Iterator[pa.RecordBatch]:
    rows = _BLOB_BATCH_ROWS if any(is_blob(f) for f in ds.schema) else _BATCH_ROWS
    scanner = ds.scanner(batch_size=rows, scan_in_order=True, blob_handling="all_binary")
    yield from scanner.to_batches()


def _verify_rows(store: StoreInfo, t: TableInfo, report: VerifyReport, progress: Progressed | None = None,
                 opts: dict[str, str] | None = None) -> set[str] | None:
    if t.error is not None:
        report.findings.append(Finding("problem", t.path, f"cannot open the table: {t.error}"))
        return None
    checks = _checks(store, t)
    keys: set[str] | None = set() if store.kind == "params" and t.name == "chunks" else None
    row = 0
    expected = t.committed_rows
    try:
        ds = lance.dataset(t.path, storage_options=opts)  # one version for the count and the scan
        expected = ds.count_rows()
        for batch in _batches(ds):
            cols = {name: batch.column(name).to_pylist() for name, _, _ in checks}
            sums = {name: batch.column(name).to_pylist() for _, name, _ in checks}
            if keys is not None and "hash" in batch.schema.names:
                keys.update(batch.column("hash").to_pylist())
            for data_col, sum_col, ok in checks:
                for i, (data, s) in enumerate(zip(cols[data_col], sums[sum_col])):
                    if data is None:
                        continue
                    report.payloads += 1
                    if s is None or not ok(data, s):
                        key = f" (chunk {s})" if sum_col == "hash" else ""
                        report.findings.append(Finding(
                            "problem", t.path,
                            f"column {data_col!r}{key} fails its checksum ({sum_col!r}): the stored bytes are corrupt",
                            row=row + i))
            row += batch.num_rows
            if progress is not None:
                progress(batch.num_rows, t.path)
    except BaseException as exc:  # noqa: BLE001 - any failure to read is reported as a problem with its place
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        report.findings.append(Finding("problem", t.path, f"cannot read rows after row {row}: {exc}", row=row))
    report.rows += row
    if row != expected:
        report.findings.append(Finding(
            "problem", t.path, f"read {row} rows but the table's manifest counts {expected}"))
    return keys


def _verify_head(store: StoreInfo, report: VerifyReport) -> None:
    """The ParamStore's record of its newest checkpoint: readable, and not ahead of the table."""
    from persisting.params.head import HEAD_NAME, read_head

    path = os.path.join(store.path, HEAD_NAME)
    table = os.path.join(store.path, "checkpoints.lance")
    try:
        head = read_head(path)
    except PersistingError as exc:
        report.findings.append(Finding("problem", path, str(exc)))
        return
    if head is None:
        if integrity.load(table):
            report.findings.append(Finding(
                "problem", path, "the record of the newest checkpoint is missing (the store was written "
                "with one): a lost newest checkpoint could not be noticed; reopen the store as a writer"))
        return
    try:
        version = lance.dataset(table).version
    except BaseException as exc:  # noqa: BLE001 - reported by the row check already
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        return
    if head.version > version:
        report.findings.append(Finding(
            "problem", path, f"records checkpoint table version {head.version} (step {head.step}) but the "
            f"table opens at version {version}: its newest manifest is lost"))


def _verify_manifests(store: StoreInfo, chunk_keys: set[str], report: VerifyReport,
                      opts: dict[str, str] | None = None) -> None:
    from persisting.params.manifest import Manifest

    path = store.path.rstrip("/") + "/checkpoints.lance"
    try:
        t = lance.dataset(path, storage_options=opts).to_table(columns=["step", "manifest"])
    except BaseException as exc:  # noqa: BLE001 - a damaged table (Rust panics included) is a finding
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        report.findings.append(Finding("problem", path, f"cannot read manifests: {exc}"))
        return
    for i, (step, text) in enumerate(zip(t.column("step").to_pylist(), t.column("manifest").to_pylist())):
        try:
            missing = Manifest.loads(text).chunk_keys() - chunk_keys
        except (ValueError, KeyError, TypeError) as exc:
            report.findings.append(Finding("problem", path, f"checkpoint step {step}: unreadable manifest: {exc}", row=i))
            continue
        if missing:
            report.findings.append(Finding(
                "problem", path, f"checkpoint step {step} references {len(missing)} chunk(s) that are not stored",
                row=i))
