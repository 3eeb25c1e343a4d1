"""A Table's side of the object-store WAL: leases, adoption, replay, and the clean close.

Opening a writer with ``wal_uri``:

1. every *other* writer identity under ``wal_uri`` whose lease expired unreleased (its owner
   died) is taken over, fenced, replayed and committed under its own id, and its segments are
   deleted -- the object-store twin of adopting a dead writer's local WAL directory;
2. this writer's identity (``writer_id``, or a fresh random one) is taken: a live holder's
   lease is waited for up to ``wal_lease_seconds`` + 1 s (then LockedError); earlier epochs are
   fenced, their frames above the identity's applied LSN replayed in (epoch, seq) order and
   committed, their segments deleted;
3. a :class:`~persisting.engine.remote_wal.RemoteWAL` starts logging in the new epoch.

A clean close commits everything, deletes this epoch's segments and releases the lease, so
the next owner starts at once. ``Table.cleanup()`` deletes spent fences and other identities'
released leases (:meth:`RemoteLog.cleanup`). A failed group PUT stops the WAL: that append,
every append waiting on it and every later one raise the same StorageError naming the key.

Read-only handles use :class:`RemoteReader` instead: no lease, no write (see the visibility
rules in :mod:`persisting.engine.remote_wal`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import lance

from persisting.engine.commits import fence_commits, writer_applied_lsn
from persisting.engine.dedup import Dedup, last_seen
from persisting.engine.lance_io import open_dataset
from persisting.engine.lease import Lease, read_lease
from persisting.engine.names import check_name
from persisting.engine.objstore import ObjectStore
from persisting.engine.remote_wal import (
    EPOCH_SHIFT, RemoteWAL, fence_and_list, list_all, list_writers, read_segments, remote_wal_uri, segment_of,
)
from persisting.engine.wal import Frame, ReplayReport
from persisting.engine.writers import new_writer_id
from persisting.errors import ConfigError, LockedError, StorageError

if TYPE_CHECKING:
    from persisting.engine.table import Table

__all__ = ["RemoteLog", "RemoteReader", "scratch_dir"]


def scratch_dir(uri: str) -> str:
    """A local directory for this host's dataset-creation lock when there is no ``wal_dir``."""
    digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"persisting-{digest}")
    os.makedirs(path, exist_ok=True)
    return path


class RemoteReader:
    """What a read-only handle sees of an object-store WAL: every writer's acknowledged frames
    above its applied LSN. It takes no lease, renews nothing and writes nothing (readers never
    fence), so a live writer, a dead one and its adopter all go on undisturbed."""

    def __init__(self, store: ObjectStore, implicit: bool) -> None:
        self.store, self.implicit = store, implicit
        self.listed = 0  # data segments the last :meth:`frames` found

    @classmethod
    def open(cls, uri: str, wal_uri: str | None, storage_options: dict[str, str] | None) -> RemoteReader | None:
        """The reader of ``wal_uri``, or of the default placement beside an ``s3://`` dataset
        (``remote_wal_uri(uri)``; a probe that fails there is ignored); None otherwise."""
        implicit = wal_uri is None
        if implicit:
            if urlparse(uri).scheme not in ("s3", "s3a"):
                return None
            wal_uri = remote_wal_uri(uri)
        try:
            return cls(ObjectStore(str(wal_uri), storage_options), implicit)
        except ConfigError:
            if implicit:
                return None  # no boto3: a reader without wal_uri shows committed rows only
            raise

    def frames(self, ds: lance.LanceDataset | None, mode: Any, report: ReplayReport) -> Iterator[tuple[str, str, Frame]]:
        """``(writer, where, frame)`` in (writer, epoch, seq) order, frames above each writer's
        applied LSN in ``ds``. One LIST, then the segments' GETs (eight in flight)."""
        try:
            writers = list_all(self.store)
        except StorageError:
            if self.implicit:
                return  # e.g. no LIST permission beside the dataset: committed rows only
            raise
        self.listed = sum(not s.fence for segments in writers.values() for s in segments)
        for writer, segments in writers.items():
            data = [s for s in segments if not s.fence]
            if data:
                applied = writer_applied_lsn(ds, writer)
                where = f"{self.store.uri}/{writer}"
                own = ReplayReport()  # LSNs are per writer: each gets its own order checks
                try:
                    for frame in read_segments(self.store, data, after_lsn=applied, mode=mode, report=own):
                        yield writer, where, frame
                finally:
                    report.frames += own.frames
                    report.last_lsn = max(report.last_lsn, own.last_lsn)
                    report.torn += own.torn
                    report.lost += own.lost
                    report.damaged_applied += own.damaged_applied


class RemoteLog:
    """Leases and replay for one Table whose WAL is on object storage."""

    def __init__(self, table: Table, wal_uri: str, writer_id: str | None) -> None:
        self.table = table
        self.store = ObjectStore(wal_uri, table.storage_options)
        self.identity = check_name(writer_id, what="writer_id") if writer_id is not None else new_writer_id()
        self.lease: Lease | None = None

    def writer_ids(self) -> set[str]:
        return set(list_writers(self.store)) | {self.identity}

    def recover(self) -> None:
        """Adopt dead writers, take this identity, replay its earlier epochs, start logging."""
        t, o = self.table, self.table.options
        for other in list_writers(self.store):
            if other == self.identity:
                continue
            found = read_lease(self.store, other)
            if found is None or found[0].released or not found[0].free:
                continue  # closed cleanly (nothing left) or alive
            try:
                lease = Lease.acquire(self.store, other, ttl=o.wal_lease_seconds, wait=0)
            except LockedError:
                continue  # renewed meanwhile, or another opener adopts it
            try:
                self._replay(lease)
            finally:
                lease.release()
        t.writer_id = self.identity
        if not o.wal_enabled:
            return
        self.lease = Lease.acquire(
            self.store, self.identity, ttl=o.wal_lease_seconds, wait=o.wal_lease_seconds + 1.0,
            min_epoch=lambda: (writer_applied_lsn(t._ds, self.identity) >> EPOCH_SHIFT) + 1,
        )
        dedup = self._replay(self.lease)
        if o.dedup and dedup is None:
            dedup = Dedup(o.dedup, last_seen(t._ds, self.identity))
        t._dedup = dedup
        interval = o.wal_group_interval if o.wal_sync == "always" else o.wal_sync_interval
        t._wal = RemoteWAL(self.store, self.lease, sync=o.wal_sync, interval=interval)
        first = (self.lease.epoch << EPOCH_SHIFT) + 1
        t._applied, t._next_lsn = first - 1, first

    def _replay(self, lease: Lease) -> Dedup | None:
        """Fence ``lease``'s older epochs, commit their unapplied frames, delete them."""
        t = self.table
        segments = fence_and_list(self.store, lease)
        if segments:  # a predecessor may be paused inside a commit of these: fence Lance too
            t._ds = fence_commits(t.uri, t.storage_options) or t._ds
        else:
            t._ds = open_dataset(t.uri, t.storage_options) or t._ds
            return None
        applied = writer_applied_lsn(t._ds, lease.writer)  # read after the fence: see fence_commits
        frames = read_segments(self.store, segments, after_lsn=applied, mode=t.options.recovery, report=t.recovery_report)
        dedup = t._replay_frames(frames, lease.writer, f"{self.store.uri}/{lease.writer}", applied, lease.check)
        self.store.delete([s.name for s in segments])
        return dedup

    def cleanup(self, older_than: float) -> list[str]:
        """Delete leftovers older than ``max(older_than, lease time)`` seconds; return their names.

        * a FENCE object of an epoch that has no data segment left (its replay was committed);
        * a released lease of another writer identity that has no object left beside it,
          deleted only if unchanged since read (conditional DELETE: a lease taken meanwhile
          stays). Reopening that identity later starts above its committed epochs.

        A live or expired-unreleased lease, and any data segment, is never touched."""
        ttl = self.table.options.wal_lease_seconds
        cutoff = time.time() - max(older_than, ttl)
        by_writer: dict[str, list[tuple[str, int, float]]] = {}
        for name, size, mtime in self.store.list_meta():
            by_writer.setdefault(name.partition("/")[0], []).append((name, size, mtime))
        removed: list[str] = []
        for writer, objects in by_writer.items():
            segments = [(found[1], m) for n, size, m in objects if (found := segment_of(n, size))]
            live = {s.epoch for s, _ in segments if not s.fence}
            removed += [s.name for s, m in segments if s.fence and s.epoch not in live and m < cutoff]
            if writer == self.identity or len(objects) != 1 or not objects[0][0].endswith("/LEASE"):
                continue
            found = read_lease(self.store, writer)
            if found is not None and found[0].released and found[0].expires < cutoff:
                if self.store.delete_if_match(objects[0][0], found[1]):
                    removed.append(objects[0][0])
        fences = [n for n in removed if not n.endswith("/LEASE")]
        if fences:
            self.store.delete(fences)
        return removed

    def close(self, clean: bool) -> None:
        """After the WAL closed: drop this epoch's segments if all is committed, release."""
        wal = self.table._wal
        if clean and isinstance(wal, RemoteWAL) and self.lease is not None and not self.lease.lost:
            wal.drop_through(1 << 62)
        self.release()

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None
