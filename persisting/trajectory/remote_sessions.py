"""Writer sessions of a TrajectoryStore whose WALs live on object storage (``wal="object"``).

The same interface as :class:`~persisting.trajectory.sessions.Sessions`, with no local
directory, so the writers of one store may run on different hosts::

    <path>/_persisting/sessions/<id>/LEASE   the lease of session <id> (an engine Lease, renewed
                                             every ttl/3 by the live session's process)
    <path>/_persisting/sessions/NEXT_ID      the first episode id no block holds yet (text),
                                             changed only by compare-and-swap

Each session's tables log to the engine's object-store WAL under the writer identity
``<id>`` (:func:`writer_id`), so what a session acknowledged survives its host: the next
writer that opens a table anywhere adopts identities whose lease expired unreleased.

A session needs recovery when the ids table lists it as open and its lease is not live
(expired, released by a failed close, or missing). A recoverer *claims* it by taking its lease
(a compare-and-swap: one process wins), reads the ids table again (another opener may have
finished it just before) and checks that every table adopted its WAL (its table leases are
released); only then does it mark its episodes ``incomplete`` and record that once.

No store-wide lock exists: id blocks come from a compare-and-swap on ``NEXT_ID``
(:meth:`RemoteSessions.next_block`), claims make recovery exclusive, and the engine serialises
the creation of each table across hosts. :meth:`RemoteSessions.locked` holds nothing. Unlike the
local flocks, nothing here depends on a shared disk; liveness depends on the lease time
(``TableOptions.wal_lease_seconds``) and on hosts' clocks agreeing within a quarter of it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from persisting.engine.lease import Lease, read_lease
from persisting.engine.objstore import ObjectStore, PreconditionFailed
from persisting.engine.remote_wal import remote_wal_uri
from persisting.engine.shell import join_uri
from persisting.engine.table import Table
from persisting.errors import CorruptionError, LockedError
from persisting.trajectory.ids import high_water

__all__ = ["ClaimedSession", "RemoteSessions", "sessions_uri", "writer_id"]

NEXT_ID = "NEXT_ID"


def sessions_uri(path: str) -> str:
    """Where a store's session leases and id counter live: ``<path>/_persisting/sessions``."""
    return join_uri(path, "_persisting/sessions")


def writer_id(session_id: str) -> str:
    """The WAL writer identity of a session's tables (each table has its own WAL prefix)."""
    return session_id


@dataclass
class ClaimedSession:
    """A dead session this process claimed (holds its lease) until it is forgotten."""

    session_id: str
    writers: dict[str, str]  # table name -> that table's writer id in the dead session
    lease: Lease

    def release(self) -> None:
        self.lease.release()


class RemoteSessions:
    """Session leases and the id counter of the store at ``path`` (an ``s3://`` URI)."""

    def __init__(self, path: str, storage_options: dict[str, str] | None, table_uris: Mapping[str, str],
                 ttl: float) -> None:
        self.store_path = path
        self.store = ObjectStore(sessions_uri(path), storage_options)
        self._wals = {name: ObjectStore(remote_wal_uri(uri), storage_options) for name, uri in table_uris.items()}
        self.ttl = ttl
        self._lease: Lease | None = None
        self._session_id = ""

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Nothing to hold: see the module docstring."""
        yield

    # -- this session ------------------------------------------------------------------------
    def start(self, session_id: str, writers: dict[str, str]) -> None:
        """Take this session's lease (the id is fresh, so no one holds it)."""
        self._lease = Lease.acquire(self.store, session_id, ttl=self.ttl, wait=0)
        self._session_id = session_id

    def finish(self) -> None:
        """This session ended cleanly (its ``closed`` row is committed, its tables closed):
        delete its table leases, then release and delete its own lease."""
        if self._lease is None:
            return
        for wal in self._wals.values():
            _delete_released(wal, writer_id(self._session_id))
        self.release()
        _delete_released(self.store, self._session_id)

    def release(self) -> None:
        """Stop renewing and release the lease: a session without a ``closed`` row is then
        recovered by the next writer that opens the store."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    # -- other sessions ----------------------------------------------------------------------
    def dead(self, candidates: Collection[str] = ()) -> list[ClaimedSession]:
        """Claim every session of ``candidates`` (sessions the ids table lists as open) whose
        lease is not live; a session another process claims first is left to it."""
        out = []
        for sid in sorted(candidates):
            if sid == self._session_id:
                continue
            found = read_lease(self.store, sid)
            if found is not None and not found[0].free:
                continue  # alive
            try:
                lease = Lease.acquire(self.store, sid, ttl=self.ttl, wait=0)
            except LockedError:
                continue  # another opener claimed it first: it recovers it
            out.append(ClaimedSession(sid, {name: writer_id(sid) for name in self._wals}, lease))
        return out

    def unadopted(self, dead: Collection[ClaimedSession], tables: Mapping[str, Table]) -> set[str]:
        """Sessions of ``dead`` whose WAL in one of ``tables`` was not adopted yet (its lease
        there is unreleased: it expired after those tables opened, or its owner still runs)."""
        out = set()
        for d in dead:
            for name in tables:
                found = read_lease(self._wals[name], d.writers[name])
                if found is not None and not found[0].released:
                    out.add(d.session_id)
        return out

    def forget(self, dead: ClaimedSession) -> None:
        """A claimed session is recovered (or had ended): delete its leases."""
        for name, wal in self._wals.items():
            _delete_released(wal, dead.writers[name])
        dead.release()
        _delete_released(self.store, dead.session_id)

    # -- episode ids -------------------------------------------------------------------------
    def next_block(self, ids: Table, floor: int, size: int) -> int:
        """Reserve ``size`` ids by compare-and-swap on ``NEXT_ID``; return the first. The
        counter starts above every id the ids table (``ids``, refreshed) knows and ``floor``."""
        while True:
            got = self.store.get(NEXT_ID)
            try:
                if got is None:
                    start = max(floor, high_water(ids))
                    self.store.put_new(NEXT_ID, str(start + size).encode())
                    return start
                start = max(floor, self._counter(got[0]))
                self.store.put_if_match(NEXT_ID, str(start + size).encode(), got[1])
                return start
            except PreconditionFailed:
                continue  # another session reserved meanwhile: read again

    def give_back(self, used: int, stop: int) -> None:
        """After a clean close: ids ``[used, stop)`` of this session's newest block go back,
        if no block was reserved after it (the ``closed`` row is committed first)."""
        if used >= stop:
            return
        got = self.store.get(NEXT_ID)
        if got is not None and self._counter(got[0]) == stop:
            try:
                self.store.put_if_match(NEXT_ID, str(used).encode(), got[1])
            except PreconditionFailed:
                pass  # a block was reserved meanwhile: these ids stay unused

    def _counter(self, body: bytes) -> int:
        try:
            return int(body.decode())
        except (UnicodeDecodeError, ValueError) as exc:
            where = f"{self.store.uri}/{NEXT_ID}"
            raise CorruptionError(
                f"trajectory store {self.store_path}: episode id counter {where} is unreadable ({body[:40]!r}); "
                "write the highest episode id + 1 into it", path=where, offset=0,
            ) from exc


def _delete_released(store: ObjectStore, identity: str) -> None:
    """Delete ``identity``'s lease if it is released (a conditional DELETE: a lease taken
    meanwhile stays)."""
    found = read_lease(store, identity)
    if found is not None and found[0].released:
        store.delete_if_match(f"{identity}/LEASE", found[1])
