"""The write-ahead log on object storage: one object per group commit, fenced by epoch.

Placement: a table opened with ``wal_uri="s3://bucket/prefix"`` (``Table.remote_wal_uri(uri)``
gives ``<dataset uri>/_persisting/wal``, beside the dataset) keeps, per writer identity::

    <wal_uri>/<writer>/LEASE                 the writer's lease (persisting.engine.lease)
    <wal_uri>/<writer>/<epoch>/<seq>         one segment per group commit, seq = 1, 2, ...
    <wal_uri>/<writer>/<epoch>/<seq>         ... or a FENCE object closing an old epoch

A segment object has exactly the local segment format (:mod:`persisting.engine.wal`: header
with salt, CRC32C-checked frames) and is written once with ``If-None-Match: *``. Frames
appended while the previous PUT is in flight (and for ``wal_sync_interval`` when > 0) form one
group: one PUT whatever the batch size. LSNs are ``epoch << 40 | n``, so a writer identity's
LSNs grow across owners and never collide.

Durability: ``always`` -- :meth:`RemoteWAL.wait` returns once the append's group PUT
succeeded (the Table waits outside its lock, so concurrent appenders share one PUT);
``batch`` -- appends return at once and the group is PUT every ``wal_sync_interval`` s (the
same window of loss as the local ``batch`` mode).

Fencing, clock-free: a new owner takes the lease (epoch e+1), then writes a FENCE object at
seq k+1 of each older epoch, where k is the newest segment it lists there; if the old owner
wrote k+1 first the fence loses (412) and is retried above it. The old owner's next PUT hits
the fence and fails, so it can never acknowledge a group the new owner did not replay. A
group is also acknowledged only if the lease still holds *after* its PUT (so an ack never
depends on the fence alone). Replayed segments are deleted after their commit; fences of
epochs with no segment left, older than the lease time, are deleted by ``Table.cleanup()``
(then an old owner paused longer than that is stopped by its lease check, i.e. by clocks).

Visibility and staleness (who sees a row, when):

* the writer sees its own rows as soon as ``append`` returns (they are buffered in memory);
* other processes: a read-only ``Table`` (``wal_uri=``, or an ``s3://`` dataset with the WAL
  at ``remote_wal_uri(uri)``) shows committed rows plus every writer's frames above that
  writer's applied LSN, i.e. rows whose group PUT landed (``always``: acknowledged or about to
  be; ``batch``: up to ``wal_sync_interval`` later). It takes no lease and writes nothing, so it
  never fences or slows a writer. If a commit lands while it lists (segments deleted under
  it), it reads the newer version and lists again (up to 5 times), so it misses no row that
  was acknowledged before it opened and shows none twice;
* that view is a snapshot: frames PUT later show up when the reader moves to a newer Lance
  version (automatically on reads with ``follow=True``, or ``refresh()``) or is reopened --
  not while the version stays the same. Writers on ``batch``/``always`` with no commit for
  long: reopen readers to see new rows;
* a reader does not deduplicate: the writer drops retried ``(producer, seq)`` before logging
  and the next owner drops them on replay, so a duplicate is at most transient;
* cost: one LIST of the WAL prefix per reader open or version move, then GETs (eight in
  flight) of the segments found -- the WAL stays small because commits delete segments.
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import crc32c

from persisting.engine.lease import Lease
from persisting.engine.objstore import ObjectStore, PreconditionFailed
from persisting.engine.wal import FRAME_BATCH, HEADER_SIZE, Frame, ReplayReport, _header_bytes, _read_segment, frame_head
from persisting.errors import FencedError, StorageError, WALError

__all__ = [
    "EPOCH_SHIFT", "FENCE", "RemoteWAL", "Segment", "fence_and_list", "list_all", "read_segments", "remote_wal_uri",
    "segment_of",
]

EPOCH_SHIFT = 40
FENCE = b"PSTFENCE"
_SEG_RE = re.compile(r"^(\d{10})/(\d{12})$")


def remote_wal_uri(uri: str) -> str:
    """The WAL placement beside a dataset on object storage: ``<uri>/_persisting/wal``."""
    return uri.rstrip("/") + "/_persisting/wal"


@dataclass(frozen=True)
class Segment:
    """One object of a writer's remote WAL."""

    epoch: int
    seq: int
    name: str  # relative to the store
    size: int

    @property
    def fence(self) -> bool:
        return self.size == len(FENCE)  # a segment is never shorter than its header


def _segment_name(writer: str, epoch: int, seq: int) -> str:
    return f"{writer}/{epoch:010d}/{seq:012d}"


def list_segments(store: ObjectStore, writer: str) -> list[Segment]:
    """Every segment or fence object of ``writer``, in (epoch, seq) order."""
    out = []
    for name, size in store.list_sized(writer + "/"):
        m = _SEG_RE.match(name[len(writer) + 1 :])
        if m:
            out.append(Segment(int(m.group(1)), int(m.group(2)), name, size))
    return sorted(out, key=lambda s: (s.epoch, s.seq))


def segment_of(name: str, size: int) -> tuple[str, Segment] | None:
    """``(writer, segment)`` if ``name`` is ``<writer>/<epoch>/<seq>`` (a segment or a fence)."""
    writer, _, rest = name.partition("/")
    m = _SEG_RE.match(rest)
    return (writer, Segment(int(m.group(1)), int(m.group(2)), name, size)) if m else None


def list_all(store: ObjectStore) -> dict[str, list[Segment]]:
    """Every writer's segments and fences from one LIST of the whole WAL, in (epoch, seq) order."""
    out: dict[str, list[Segment]] = {}
    for name, size in store.list_sized():
        found = segment_of(name, size)
        if found:
            out.setdefault(found[0], []).append(found[1])
    return {w: sorted(segs, key=lambda s: (s.epoch, s.seq)) for w, segs in sorted(out.items())}


def list_writers(store: ObjectStore) -> list[str]:
    """Writer identities that have a lease under the store."""
    return sorted({n[: -len("/LEASE")] for n in store.list() if n.endswith("/LEASE") and n.count("/") == 1})


def fence_and_list(store: ObjectStore, lease: Lease) -> list[Segment]:
    """Close every epoch older than ``lease.epoch`` with a FENCE object; return their data
    segments (not fences), in replay order."""
    writer = lease.writer
    while True:
        segs = [s for s in list_segments(store, writer) if s.epoch < lease.epoch]
        by_epoch: dict[int, list[Segment]] = {}
        for s in segs:
            by_epoch.setdefault(s.epoch, []).append(s)
        if lease.previous_epoch:
            by_epoch.setdefault(lease.previous_epoch, [])
        fenced_all = True
        for epoch, items in sorted(by_epoch.items()):
            last = items[-1] if items else None
            if last is not None and last.fence:
                continue
            try:
                store.put_new(_segment_name(writer, epoch, (last.seq if last else 0) + 1), FENCE)
            except PreconditionFailed:
                fenced_all = False  # the old owner just wrote that seq: list again, fence above it
                break
        if fenced_all:
            return [s for s in segs if not s.fence]


def read_segments(
    store: ObjectStore, segments: Sequence[Segment], *, after_lsn: int, mode: Any, report: ReplayReport
) -> Iterator[Frame]:
    """Frames with LSN > ``after_lsn`` from ``segments`` (already in order); an object never
    has a torn tail (PUTs are atomic), so any bad frame is corruption (or salvaged)."""
    last_lsn = 0
    previous: Segment | None = None
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="persisting-wal-get") as pool:
        fetched = [pool.submit(store.get, seg.name) for seg in segments]  # GETs in flight, read in order
        for seg, future in zip(segments, fetched):
            got = future.result()
            yield from _frames_of(store, seg, got, previous, mode, after_lsn, report, last_lsn)
            if got is not None and got[0] != FENCE:
                previous = seg
            last_lsn = max(last_lsn, report.last_lsn)


def _frames_of(
    store: ObjectStore, seg: Segment, got: tuple[bytes, str] | None, previous: Segment | None, mode: Any,
    after_lsn: int, report: ReplayReport, last_lsn: int,
) -> Iterator[Frame]:
    if got is None:
        return  # deleted by a commit that applied it
    body = got[0]
    if body == FENCE:
        return
    if previous is not None and previous.epoch == seg.epoch and seg.seq != previous.seq + 1 and mode != "salvage":
        raise WALError(
            f"{store.uri}/{seg.name}: segments {previous.seq + 1}..{seg.seq - 1} of epoch {seg.epoch} are "
            "missing; open with recovery='salvage' to accept the loss"
        )
    path = f"{store.uri}/{seg.name}"
    yield from _read_segment(memoryview(body), path, len(body), False, mode, after_lsn, report, last_lsn, False)


class RemoteWAL:
    """The appending side: frames grouped into one conditional PUT each (see module doc)."""

    def __init__(self, store: ObjectStore, lease: Lease, *, sync: str, interval: float) -> None:
        """``interval``: seconds a group stays open before its PUT (``batch``: the sync
        interval; ``always``: the group-commit window, 0 = PUT as soon as the last one ends)."""
        self.store, self.lease = store, lease
        self.writer, self.epoch = lease.writer, lease.epoch
        self.directory = f"{store.uri}/{self.writer}/{self.epoch:010d}"
        self._interval = interval
        salt = os.urandom(16)
        self._header = _header_bytes(salt)
        self._seed = crc32c.crc32c(salt)
        self._cond = threading.Condition()
        self._next_lsn = (self.epoch << EPOCH_SHIFT) + 1
        self._durable = self._next_lsn - 1
        self._group: list[bytes] = []
        self._group_bytes = 0
        self._seq = 0
        self._objects: list[tuple[str, int, int]] = []  # (name, last lsn, size), not yet dropped
        self._error: BaseException | None = None
        self._closed = False
        self._force = False
        self._thread = threading.Thread(target=self._put_loop, name=f"persisting-wal-put-{self.writer}", daemon=True)
        self._thread.start()

    def append(self, payload: bytes | memoryview | Sequence[Any], ftype: int = FRAME_BATCH) -> int:
        """Stage one frame and return its LSN; call :meth:`wait` for its durability."""
        pieces = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else list(payload)
        with self._cond:
            self._raise_if_failed()
            lsn = self._next_lsn
            prefix, meta = frame_head(lsn, ftype, pieces, self._seed)
            frame = b"".join([prefix, meta, *(bytes(p) for p in pieces)])
            self._group.append(frame)
            self._group_bytes += len(frame)
            self._next_lsn = lsn + 1
            if len(self._group) == 1:
                self._cond.notify_all()  # the putter waits for a group's first frame
            return lsn

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise WALError(f"WAL {self.directory} is closed")

    def wait(self, lsn: int) -> None:
        """Block until ``lsn`` is in a segment whose PUT succeeded (FencedError if fenced)."""
        with self._cond:
            while self._durable < lsn:
                if self._error is not None:
                    raise self._error
                self._cond.wait()

    def sync(self) -> int:
        """PUT what is staged now; return the highest durable LSN."""
        with self._cond:
            target = self._next_lsn - 1
            self._force = True
            self._cond.notify_all()
        self.wait(target)
        return self._durable

    def _put_loop(self) -> None:
        while True:
            with self._cond:
                while not self._group and not self._closed:
                    self._cond.wait()
                if not self._group:
                    return
                end = time.monotonic() + self._interval  # the group stays open this long
                while not self._force and not self._closed and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)
                group, last = self._group, self._next_lsn - 1
                self._group, self._group_bytes, self._force = [], 0, False
                self._seq += 1
                seq = self._seq
            body = b"".join([self._header, *group])
            try:
                self._put(seq, body)
            except BaseException as exc:  # noqa: BLE001 - every waiter, and every later append, gets it
                with self._cond:
                    self._error = self._stopped(exc, seq, last - len(group) + 1)
                    self._cond.notify_all()
                return
            with self._cond:
                self._objects.append((_segment_name(self.writer, self.epoch, seq), last, len(body)))
                self._durable = last
                self._cond.notify_all()

    def _stopped(self, exc: BaseException, seq: int, first: int) -> BaseException:
        """The typed error a failed group PUT leaves behind: the WAL stops there for good."""
        if isinstance(exc, FencedError):
            return exc
        key = f"{self.store.uri}/{_segment_name(self.writer, self.epoch, seq)}"
        err = StorageError(
            f"the WAL of writer {self.writer!r} stopped: PUT {key} failed ({exc}); appends from LSN {first} on "
            "are not acknowledged and no later one will be. Close the table and open it again (the next owner "
            "replays what was acknowledged)", path=key, lsn=first,
        )
        err.__cause__ = exc
        return err

    def _put(self, seq: int, body: bytes) -> None:
        self.lease.check()  # a holder paused past its lease learns it here, before any ack
        name = _segment_name(self.writer, self.epoch, seq)
        for attempt in range(3):
            try:
                self.store.put_new(name, body)
                self.lease.check()  # still ours after the PUT: it landed before any takeover listed
                return
            except PreconditionFailed:
                got = self.store.get(name)
                if got is not None and got[0] == body:
                    self.lease.check()
                    return  # an earlier attempt landed and its response was lost
                self.lease.lose(f"segment {seq} of epoch {self.epoch} was fenced by a new owner")
                raise self.lease.fenced() from None
            except OSError:
                if attempt == 2:
                    raise

    def drop_through(self, lsn: int) -> None:
        """Delete segments whose frames are all applied (LSN <= ``lsn``)."""
        with self._cond:
            gone = [o for o in self._objects if o[1] <= lsn]
            self._objects = [o for o in self._objects if o[1] > lsn]
        if gone:
            self.store.delete([name for name, _, _ in gone])

    def check_owner(self) -> None:
        """FencedError unless this writer still holds its lease (before a Lance commit)."""
        with self._cond:
            if isinstance(self._error, FencedError):
                raise self._error
        self.lease.check()

    @property
    def next_lsn(self) -> int:
        return self._next_lsn

    @property
    def size_bytes(self) -> int:
        return sum(size for _, _, size in self._objects) + self._group_bytes + (HEADER_SIZE if self._group else 0)

    def close(self) -> None:
        """PUT what is staged and stop; idempotent. The lease is released by the Table."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._force = True
            self._cond.notify_all()
        self._thread.join()
