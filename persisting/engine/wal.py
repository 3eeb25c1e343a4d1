"""The write-ahead log: segment files of CRC32C-checked, LSN-numbered frames.

Segment ``NNNNNNNN.wal`` = header ``[8s magic][u32 version][16s salt][u32 crc32c(header)]``,
then frames ``[u32 length][u32 crc32c][u64 lsn][u8 type][payload]`` where ``length`` counts
the bytes after the crc and the crc covers them, seeded with the segment's salt (so a frame
copied from another segment never validates). Frames go to the kernel with one ``os.writev``
each, so a killed process loses nothing it acknowledged; ``fdatasync`` makes them survive
power loss: per frame (``always``) or by a background group commit (``batch``).

Recovery reads segments in order. In point-in-time mode a bad frame with no valid frame
after it, in the last segment, is a torn tail and is cut off; any other bad frame raises
CorruptionError naming file and offset, unless salvage mode skips it and reports the loss.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import crc32c

from persisting.engine.durable import fsync_ancestors
from persisting.errors import CorruptionError, WALError

__all__ = ["FRAME_BATCH", "WAL", "Frame", "LostRange", "ReplayReport", "list_segments", "read_frames", "truncate_torn"]

MAGIC = b"PSTWAL\x00\x01"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sI16s")
HEADER_SIZE = _HEADER.size + 4
_PREFIX = struct.Struct("<II")  # length, crc
_META = struct.Struct("<QB")  # lsn, type
FRAME_OVERHEAD = _PREFIX.size + _META.size
FRAME_BATCH = 1
_MAX_FRAME = 1 << 31
_SEGMENT_RE = re.compile(r"^(\d{8})\.wal$")

SyncMode = Literal["batch", "always"]
RecoveryMode = Literal["point_in_time", "salvage"]


@dataclass(frozen=True)
class Frame:
    """One replayed frame; ``payload`` is a view into the segment's bytes."""

    lsn: int
    type: int
    payload: memoryview


@dataclass(frozen=True)
class LostRange:
    """Bytes skipped by salvage (or cut as a torn tail): file, offset, length."""

    path: str
    offset: int
    length: int
    reason: str


@dataclass
class ReplayReport:
    """What recovery found: frames read, the last LSN, torn tails cut, ranges lost, and
    damaged ranges skipped because their frames were already applied."""

    frames: int = 0
    last_lsn: int = 0
    torn: list[LostRange] = field(default_factory=list)
    lost: list[LostRange] = field(default_factory=list)
    damaged_applied: list[LostRange] = field(default_factory=list)
    skipping: bool = field(default=False, repr=False)  # salvage gave bytes up since the last good frame


def frame_head(lsn: int, ftype: int, pieces: list[Any], seed: int) -> tuple[bytes, bytes]:
    """The prefix (length, crc32c) and meta (lsn, type) of a frame whose payload is ``pieces``,
    written before them: one frame format for local segments and object-store segments."""
    meta = _META.pack(lsn, ftype)
    crc = crc32c.crc32c(meta, seed)
    length = _META.size
    for piece in pieces:
        crc = crc32c.crc32c(piece, crc)
        length += len(memoryview(piece))
    return _PREFIX.pack(length, crc), meta


def list_segments(directory: str) -> list[tuple[int, str]]:
    """(number, path) of every segment in ``directory``, oldest first."""
    out = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []  # a writer directory removed at a clean close (its frames are all in Lance)
    for name in names:
        m = _SEGMENT_RE.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(out)


def _header_bytes(salt: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, salt)
    return head + struct.pack("<I", crc32c.crc32c(head))


def _parse_header(buf: memoryview | bytes, path: str) -> int:
    """Return the CRC seed of a segment from its header, or raise CorruptionError."""
    magic, version, salt = _HEADER.unpack_from(buf, 0)
    (crc,) = struct.unpack_from("<I", buf, _HEADER.size)
    if magic != MAGIC or crc != crc32c.crc32c(bytes(buf[: _HEADER.size])):
        raise CorruptionError(
            f"{path} offset 0: not a Persisting WAL segment header (bad magic or checksum)",
            path=path,
            offset=0,
        )
    if version != FORMAT_VERSION:
        raise WALError(f"{path}: WAL format version {version} is not supported (this build reads {FORMAT_VERSION})")
    return crc32c.crc32c(salt)


def _frame_at(buf: memoryview, pos: int, seed: int, end: int) -> tuple[int, int, int] | None:
    """(lsn, type, next_pos) if a valid frame starts at ``pos``, else None."""
    if pos + FRAME_OVERHEAD > end:
        return None
    length, crc = _PREFIX.unpack_from(buf, pos)
    if length < _META.size or pos + _PREFIX.size + length > end:
        return None
    body = buf[pos + _PREFIX.size : pos + _PREFIX.size + length]
    if crc32c.crc32c(body, seed) != crc:
        return None
    lsn, ftype = _META.unpack_from(body, 0)
    return lsn, ftype, pos + _PREFIX.size + length


def _resync(buf: memoryview, start: int, seed: int, end: int, after_lsn: int) -> int | None:
    """Offset of the next valid frame after ``start`` with an LSN above ``after_lsn``."""
    pos = start
    while pos + FRAME_OVERHEAD <= end:
        length, _ = _PREFIX.unpack_from(buf, pos)
        if _META.size <= length and pos + _PREFIX.size + length <= end:
            lsn, _ = _META.unpack_from(buf, pos + _PREFIX.size)
            if lsn > after_lsn:
                found = _frame_at(buf, pos, seed, end)
                if found is not None:
                    return pos
        pos += 1
    return None


def read_frames(
    directory: str,
    *,
    after_lsn: int | None = None,
    mode: RecoveryMode = "point_in_time",
    report: ReplayReport | None = None,
) -> Iterator[Frame]:
    """Yield every valid frame with LSN > ``after_lsn``, oldest first, without changing files.

    ``after_lsn`` is the applied LSN: frames at or below it are checked but not yielded, and
    the frames above it must be consecutive (a gap is CorruptionError). ``None`` (unknown)
    yields everything and cannot check that the log starts where it should.

    Torn tails found are listed in ``report.torn`` (the writer cuts them); frames lost to
    salvage are listed in ``report.lost``. Frames must carry increasing LSNs.
    """
    report = report if report is not None else ReplayReport()
    start_known = after_lsn is not None
    after = after_lsn or 0
    segments = list_segments(directory)
    _check_active_present(directory, segments, mode, report)
    last_lsn = 0
    for i, (_, path) in enumerate(segments):
        is_last = i == len(segments) - 1
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            continue  # dropped by a live writer after a flush: its frames are in Lance
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < HEADER_SIZE:
                if is_last:  # crashed while creating the segment
                    report.torn.append(LostRange(path, 0, size, "incomplete segment header"))
                    continue
                raise CorruptionError(f"{path} offset 0: segment shorter than its header", path=path, offset=0)
            data = f.read(size)  # payload views handed out keep these bytes alive
        # len(data), not size: a live writer may cut its file between the stat and the read
        yield from _read_segment(memoryview(data), path, len(data), is_last, mode, after, report, last_lsn, start_known)
        last_lsn = max(last_lsn, report.last_lsn)


def _read_segment(
    buf: memoryview,
    path: str,
    end: int,
    is_last: bool,
    mode: RecoveryMode,
    after_lsn: int,
    report: ReplayReport,
    last_lsn: int,
    start_known: bool,
) -> Iterator[Frame]:
    seed = _parse_header(buf, path)
    pos = HEADER_SIZE
    while pos < end:
        found = _frame_at(buf, pos, seed, end)
        if found is not None and found[0] <= last_lsn:
            found = None  # an LSN that goes backwards is not a frame we wrote here
        if found is None:
            nxt = _resync(buf, pos + 1, seed, end, last_lsn)
            if nxt is None and is_last:
                report.torn.append(LostRange(path, pos, end - pos, "torn tail"))
                return
            nxt_frame = _frame_at(buf, nxt, seed, end) if nxt is not None else None
            if nxt is not None and nxt_frame is not None and nxt_frame[0] <= after_lsn + 1:
                # every frame in the damaged bytes has an LSN below the next good one, so it
                # is already applied to Lance: nothing is lost, nothing to refuse
                report.damaged_applied.append(LostRange(path, pos, nxt - pos, "damaged frame already applied"))
                pos = nxt
                continue
            if mode != "salvage":
                where = "valid frames follow it" if nxt is not None else "it is not the log's tail"
                raise CorruptionError(
                    f"{path} offset {pos}: WAL frame fails its checksum and {where}; the log is "
                    "corrupt before its tail. Open with recovery='salvage' to skip the damaged "
                    "bytes and continue (the records in them are lost)",
                    path=path,
                    offset=pos,
                )
            stop = end if nxt is None else nxt
            report.lost.append(LostRange(path, pos, stop - pos, "checksum mismatch"))
            report.skipping = True
            pos = stop
            continue
        lsn, ftype, nxt_pos = found
        missing_from = max(last_lsn, after_lsn) + 1
        if lsn > missing_from and not report.skipping and (last_lsn or start_known):
            # LSNs are consecutive: frames above the applied LSN vanished (a deleted segment?)
            if mode != "salvage":
                raise CorruptionError(
                    f"{path} offset {pos}: WAL frames with LSN {missing_from}..{lsn - 1} are missing "
                    "(a segment file was removed?); open with recovery='salvage' to accept the loss",
                    path=path,
                    offset=pos,
                )
            report.lost.append(LostRange(path, pos, 0, f"missing LSNs {missing_from}..{lsn - 1}"))
        report.skipping = False
        last_lsn = lsn
        report.last_lsn = lsn
        report.frames += 1
        if lsn > after_lsn:
            start = pos + FRAME_OVERHEAD
            yield Frame(lsn, ftype, buf[start:nxt_pos])
        pos = nxt_pos


class WAL:
    """An append-only log in ``directory``, written by one process at a time.

    ``sync="always"``: :meth:`append` returns after its frame is fdatasync'ed.
    ``sync="batch"``: a background thread fdatasyncs every ``sync_interval`` seconds, and an
    append also syncs once ``sync_bytes`` are pending (group commit).
    Segments rotate when they reach ``max_segment_size`` bytes.
    """

    def __init__(
        self,
        directory: str,
        *,
        next_lsn: int,
        sync: SyncMode = "batch",
        sync_interval: float = 1.0,
        sync_bytes: int | None = None,
        max_segment_size: int = 100 * 1024 * 1024,
    ) -> None:
        if sync not in ("batch", "always"):
            raise WALError(f"WAL sync mode {sync!r} is not 'batch' or 'always'")
        self.directory = directory
        self._sync_mode: SyncMode = "always" if sync_interval == 0 else sync
        self._interval = sync_interval
        self._sync_bytes = sync_bytes
        self._max_size = max_segment_size
        self._lock = threading.Lock()
        self._next_lsn = next_lsn
        # segments left by an earlier writer hold only LSNs below next_lsn
        self._sealed: list[tuple[str, int, int]] = [
            (path, next_lsn - 1, os.path.getsize(path)) for _, path in list_segments(directory)
        ]
        self._sealed_bytes = sum(size for _, _, size in self._sealed)
        self._fd = -1
        self._path = ""
        self._size = 0
        self._last_lsn = 0  # last LSN in the active segment (0 = empty)
        self._pending = 0
        self._synced_lsn = next_lsn - 1
        self._closed = False
        self._open_segment()
        # the directory may be new (and its parents): its entry must be durable before the
        # first append is acknowledged, or a power cut takes every frame with it
        fsync_ancestors(directory)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._sync_mode == "batch":
            self._thread = threading.Thread(target=self._sync_loop, name="persisting-wal-sync", daemon=True)
            self._thread.start()

    # -- segments ----------------------------------------------------------------------------
    def _open_segment(self) -> None:
        existing = list_segments(self.directory)
        number = existing[-1][0] + 1 if existing else 1
        path = os.path.join(self.directory, f"{number:08d}.wal")
        salt = os.urandom(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        os.write(fd, _header_bytes(salt))
        os.fdatasync(fd)
        _write_active(self.directory, number)
        _fsync_dir(self.directory)
        self._fd, self._path, self._size, self._last_lsn = fd, path, HEADER_SIZE, 0
        self._seed = crc32c.crc32c(salt)

    def _rotate(self) -> None:
        os.fdatasync(self._fd)
        os.close(self._fd)
        self._synced_lsn = self._next_lsn - 1
        self._pending = 0
        self._sealed.append((self._path, self._last_lsn, self._size))
        self._sealed_bytes += self._size
        self._open_segment()

    # -- writing -----------------------------------------------------------------------------
    def append(self, payload: bytes | memoryview | Sequence[Any], ftype: int = FRAME_BATCH) -> int:
        """Write one frame and return its LSN; durable per the sync mode when this returns.

        ``payload`` may be a list of buffers, written with one vectored write (no join copy).
        """
        pieces = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else list(payload)
        with self._lock:
            if self._closed:
                raise WALError(f"WAL {self.directory} is closed")
            lsn = self._next_lsn
            prefix, meta = frame_head(lsn, ftype, pieces, self._seed)
            expected = len(prefix) + len(meta) + sum(len(memoryview(p)) for p in pieces)
            try:
                written = os.writev(self._fd, [prefix, meta, *pieces])
                if written != expected:
                    raise OSError(f"short write: {written} of {expected} bytes")
            except OSError as exc:
                raise WALError(f"cannot append to WAL segment {self._path} at offset {self._size}: {exc}") from exc
            self._next_lsn = lsn + 1
            self._last_lsn = lsn
            self._size += expected
            self._pending += expected
            if self._sync_mode == "always" or (self._sync_bytes is not None and self._pending >= self._sync_bytes):
                self._sync_locked()
            if self._size >= self._max_size:
                self._rotate()
            return lsn

    def _sync_locked(self) -> None:
        if self._pending:
            os.fdatasync(self._fd)
            self._pending = 0
            self._synced_lsn = self._next_lsn - 1

    def sync(self) -> int:
        """fdatasync what is pending; return the highest LSN known durable.

        The fdatasync runs outside the lock, on a duplicate of the segment's descriptor, so
        appends go on while the disk works (a slow fsync stalled every appender before); a
        rotation meanwhile syncs the old segment itself, and the duplicate keeps it open."""
        with self._lock:
            if self._closed or not self._pending:
                return self._synced_lsn
            target, flushed, path = self._next_lsn - 1, self._pending, self._path
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        with self._lock:
            if target > self._synced_lsn:
                self._synced_lsn = target
            if self._path == path:  # still the same segment: those bytes are durable now
                self._pending = max(0, self._pending - flushed)
            return self._synced_lsn

    def _sync_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sync()
            except OSError:
                pass  # the next append or close reports the disk error to a caller

    # -- truncation --------------------------------------------------------------------------
    def drop_through(self, lsn: int) -> None:
        """Delete every segment whose frames all have LSN <= ``lsn`` (they are applied)."""
        with self._lock:
            if self._closed:
                return
            if self._last_lsn and self._last_lsn <= lsn:
                # every frame of the active segment is applied: empty it in place. No fsync is
                # needed: if the truncation is lost, its frames reappear with LSNs <= applied
                # and replay skips them.
                os.ftruncate(self._fd, HEADER_SIZE)
                self._size, self._last_lsn, self._pending = HEADER_SIZE, 0, 0
                self._synced_lsn = self._next_lsn - 1
            keep = []
            for path, last, size in self._sealed:
                if last <= lsn:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                else:
                    keep.append((path, last, size))
            self._sealed = keep
            self._sealed_bytes = sum(size for _, _, size in keep)

    @property
    def next_lsn(self) -> int:
        return self._next_lsn

    @property
    def size_bytes(self) -> int:
        """Bytes in every segment (a snapshot read without the lock: a metric, not a bound)."""
        return self._size + self._sealed_bytes

    def close(self) -> None:
        """Sync and close; idempotent."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._closed:
                return
            self._sync_locked()
            os.close(self._fd)
            self._closed = True


ACTIVE = "ACTIVE"  # the number of the newest segment: a deleted tail segment cannot go unnoticed


def _write_active(directory: str, number: int) -> None:
    """Record the newest segment's number (fsynced; the caller fsyncs the directory)."""
    tmp = os.path.join(directory, ACTIVE + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{number}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, ACTIVE))


def _check_active_present(
    directory: str, segments: list[tuple[int, str]], mode: RecoveryMode, report: ReplayReport
) -> None:
    """The segment the writer last opened must still exist: sealed segments are dropped only
    once applied, the active one never while its directory lives. A missing one means its
    frames (acknowledged appends) are gone -- corruption, not a clean log."""
    try:
        with open(os.path.join(directory, ACTIVE)) as f:
            active = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return  # the single-writer layout (no record), or a directory being removed
    newest = segments[-1][0] if segments else 0
    if newest >= active:
        return
    # a live writer may have rotated since ``segments`` was listed (it writes ACTIVE after the
    # new segment exists), or be removing its directory at a clean close (ACTIVE goes first)
    current = list_segments(directory)
    if (current and current[-1][0] >= active) or not os.path.exists(os.path.join(directory, ACTIVE)):
        return
    path = os.path.join(directory, f"{active:08d}.wal")
    if mode != "salvage":
        raise CorruptionError(
            f"{path}: WAL segment {active} is missing (the newest segment this writer opened); the "
            "acknowledged records in it are lost. Open with recovery='salvage' to accept the loss",
            path=path, offset=0,
        )
    report.lost.append(LostRange(path, 0, 0, f"segment {active} missing"))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate_torn(report: ReplayReport) -> None:
    """Cut each torn tail found by :func:`read_frames` so new segments never follow garbage."""
    for lost in report.torn:
        if lost.offset == 0:
            os.unlink(lost.path)
        else:
            with open(lost.path, "r+b") as f:
                f.truncate(lost.offset)
                os.fsync(f.fileno())
