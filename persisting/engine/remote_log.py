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
the next owner starts at once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import TYPE_CHECKING

from persisting.engine.commits import writer_applied_lsn
from persisting.engine.dedup import Dedup, last_seen
from persisting.engine.lance_io import open_dataset
from persisting.engine.lease import Lease, read_lease
from persisting.engine.names import check_name
from persisting.engine.objstore import ObjectStore
from persisting.engine.remote_wal import EPOCH_SHIFT, RemoteWAL, fence_and_list, list_writers, read_segments
from persisting.engine.writers import new_writer_id
from persisting.errors import LockedError

if TYPE_CHECKING:
    from persisting.engine.table import Table

__all__ = ["RemoteLog", "scratch_dir"]


def scratch_dir(uri: str) -> str:
    """A local directory for this host's dataset-creation lock when there is no ``wal_dir``."""
    digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"persisting-{digest}")
    os.makedirs(path, exist_ok=True)
    return path


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
        self.lease = Lease.acquire(self.store, self.identity, ttl=o.wal_lease_seconds, wait=o.wal_lease_seconds + 1.0)
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
        t._ds = open_dataset(t.uri, t.storage_options) or t._ds
        if not segments:
            return None
        applied = writer_applied_lsn(t._ds, lease.writer)
        frames = read_segments(self.store, segments, after_lsn=applied, mode=t.options.recovery, report=t.recovery_report)
        dedup = t._replay_frames(frames, lease.writer, f"{self.store.uri}/{lease.writer}", applied)
        self.store.delete([s.name for s in segments])
        return dedup

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
