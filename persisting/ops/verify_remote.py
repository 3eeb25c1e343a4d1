"""What ``verify`` can and cannot check of a table on an object store (``s3://``).

- File digests: none. :mod:`persisting.engine.integrity` records them at local fsync time, so
  a remote table's manifests and data files cannot be hashed, and its rows are read without
  the digest gate a local table has. Said once per table, as a warning.
- Rows, payload checksums, row counts, checkpoint manifests: checked as for a local table
  (by :mod:`persisting.ops.verify`, reading through Lance with the storage options).
- An object-store WAL (``<table>/_persisting/wal/``, :mod:`persisting.engine.remote_wal`):
  every writer identity's segments above its applied LSN are read the way a read-only handle
  reads them (no lease taken, nothing written), each frame's CRC checked and its batch decoded.
- A local WAL: only where its writers keep it; checked when the store's ``wal_dir`` is given,
  otherwise a warning says it was not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persisting.engine.batches import decode_batch
from persisting.engine.lance_io import is_panic, open_dataset
from persisting.engine.remote_log import RemoteReader
from persisting.engine.wal import ReplayReport
from persisting.errors import PersistingError

if TYPE_CHECKING:
    from persisting.ops.catalog import TableInfo
    from persisting.ops.verify import VerifyReport

__all__ = ["check_remote_table", "check_object_wal"]


def check_remote_table(t: TableInfo, report: VerifyReport, opts: dict[str, str] | None,
                       wal_dir: str | None) -> list[str]:
    """Report what a remote table cannot have checked and check its object-store WAL.
    Returns the damaged data files: none can be known without digests."""
    from persisting.ops.verify import Finding

    report.findings.append(Finding(
        "warning", t.path, "not checked: file digests (none are recorded on an object store; Persisting takes "
        "them at local fsync time), so manifests and data files were not hashed and rows were read without "
        "that gate; checked instead: every row decodes, payload checksums, the row count"))
    if not check_object_wal(t, report, opts) and wal_dir is None:
        report.findings.append(Finding(
            "warning", t.path, "not checked: a local WAL, which its writers keep on their own disk; pass the "
            "store's wal_dir (persisting verify --wal-dir) to check it"))
    return []


def check_object_wal(t: TableInfo, report: VerifyReport, opts: dict[str, str] | None) -> bool:
    """Read every writer's object-store WAL segments of ``t`` above its applied LSN, checking
    each frame; False when the table has no object-store WAL segments at all."""
    from persisting.ops.verify import Finding

    reader = RemoteReader.open(t.path, None, opts)
    if reader is None:
        return False
    replay = ReplayReport()
    try:
        ds = open_dataset(t.path, opts) if t.has_dataset else None
        for writer, where, frame in reader.frames(ds, "point_in_time", replay):
            try:
                decode_batch(frame.payload, where=f"{where} frame lsn {frame.lsn}")
            except PersistingError as exc:
                report.findings.append(Finding("problem", where, f"frame lsn {frame.lsn}: {exc}"))
    except BaseException as exc:  # noqa: BLE001 - a damaged or unreadable log is a finding with its place
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        details = getattr(exc, "details", {}) or {}
        report.findings.append(Finding("problem", str(details.get("path") or t.path + "/_persisting/wal"),
                                       f"object-store WAL: {exc}", offset=details.get("offset")))
    report.wal_frames += replay.frames
    for r in replay.damaged_applied:
        report.findings.append(Finding(
            "warning", r.path, f"{r.reason}: {r.length} damaged bytes whose frames are already in the table",
            offset=r.offset))
    return reader.listed > 0
