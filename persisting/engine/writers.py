"""Writer directories: one WAL per writer under a table's WAL directory, and orphan adoption.

Layout of a table's ``wal_dir`` (always local)::

    wal_dir/LOCK                 shared flock by every writer; exclusive by an exclusive writer
    wal_dir/writers/<id>/LOCK    exclusive flock held by the live writer <id> for its lifetime
    wal_dir/writers/<id>/BASE    "<version> <lsn>": at dataset version <version> this writer
                                 had applied every frame through <lsn> (a lower bound)
    wal_dir/writers/<id>/*.wal   its segments
    wal_dir/*.wal                a WAL from the single-writer layout (writer id ""), adopted once

A process that finds a writer directory whose LOCK it can take holds an orphan: the writer
died (flocks die with their process). The taker replays it, commits it under the orphan's id
and removes the directory, so an orphan is replayed by exactly one process, exactly once.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import crc32c

from persisting.engine.durable import fsync_path, is_local, local_path
from persisting.engine.flocks import held, try_flock, unlock
from persisting.engine.wal import list_segments
from persisting.errors import LockedError, StorageError

__all__ = [
    "Orphan", "TableLock", "WriterDir", "creation_lock", "find_orphans", "live_writer_ids", "new_writer_id", "read_base", "base_problem", "writer_wal_dirs",
]

_WRITERS = "writers"


def new_writer_id() -> str:
    """A random writer id: unique across processes, hosts and restarts."""
    return secrets.token_hex(8)


def _makedirs_durable(path: str) -> None:
    """Create ``path`` (and missing parents) and fsync each new entry's parent directory."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            if not os.path.isdir(d):
                raise StorageError(f"WAL directory {d} cannot be created: a file is in the way") from None
        fsync_path(os.path.dirname(d))


class TableLock:
    """The table-level lock: shared by every writer, exclusive for an exclusive writer.

    Exclusive writers exist for stores that are not yet safe with concurrent writers; a plain
    Table shares the table with any number of other writers.
    """

    def __init__(self, wal_dir: str, uri: str, *, exclusive: bool) -> None:
        try:
            _makedirs_durable(wal_dir)
        except (NotADirectoryError, FileExistsError) as exc:
            raise StorageError(f"WAL directory {wal_dir} cannot be created: {exc}") from exc
        path = os.path.join(wal_dir, "LOCK")
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not try_flock(self.fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH):
            os.close(self.fd)
            self.fd = -1
            held = "by another writer" if exclusive else "exclusively by another writer"
            raise LockedError(
                f"table {uri} is open for writing {held} (lock {path} is held); "
                "close the other writer or open with read_only=True",
                path=path,
            )

    def release(self) -> None:
        self.fd = unlock(self.fd)


@dataclass
class WriterDir:
    """One writer's WAL directory, locked by this process."""

    writer_id: str
    path: str
    lock_fd: int

    @classmethod
    def create(cls, wal_dir: str, base_version: int) -> WriterDir:
        """A fresh directory for a new writer, durable before any append is acknowledged."""
        writer_id = new_writer_id()
        root = os.path.join(wal_dir, _WRITERS)
        _makedirs_durable(root)
        # built under a hidden name and renamed in locked: nobody can take it for an orphan
        tmp = os.path.join(root, f".new-{writer_id}")
        os.mkdir(tmp)
        # the lock file appears under its name already locked: a process cleaning up abandoned
        # ".new-" directories must never find LOCK free while its creator is alive (cleaners
        # never open the file under its creating name, so none can lock it before we do)
        creating = os.path.join(tmp, ".LOCK.creating")
        fd = os.open(creating, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(creating, os.path.join(tmp, "LOCK"))
        wd = cls(writer_id, tmp, fd)
        wd.write_base(base_version, 0, durable=True)
        path = os.path.join(root, writer_id)
        os.rename(tmp, path)
        fsync_path(root)
        wd.path = path
        return wd

    def write_base(self, version: int, lsn: int, *, durable: bool = False) -> None:
        """Record that at ``version`` every frame through ``lsn`` was applied (a lower bound
        for recovery: losing an update only makes a later adopter walk back further)."""
        tmp = os.path.join(self.path, "BASE.tmp")
        body = f"{version} {lsn}"
        with open(tmp, "w") as f:
            f.write(f"{body} {crc32c.crc32c(body.encode()):08x}\n")
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.path, "BASE"))
        if durable:
            fsync_path(self.path)

    def read_base(self) -> tuple[int, int]:
        return read_base(self.path)

    def remove(self) -> None:
        """Delete the directory (its frames are all applied) and release its lock."""
        if not self.writer_id:  # the single-writer layout: only its segments are ours
            try:
                os.unlink(os.path.join(self.path, "ACTIVE"))
            except FileNotFoundError:
                pass
            for _, seg in list_segments(self.path):
                os.unlink(seg)
            fsync_path(self.path)
            self.release()
            return
        names = sorted(os.listdir(self.path), key=lambda n: (n != "ACTIVE", n))  # ACTIVE first: a
        for name in names:  # crash mid-removal must not look like a lost segment
            if name != "LOCK":
                os.unlink(os.path.join(self.path, name))
        os.unlink(os.path.join(self.path, "LOCK"))
        os.rmdir(self.path)
        fsync_path(os.path.dirname(self.path))
        self.release()

    def release(self) -> None:
        self.lock_fd = unlock(self.lock_fd)


def read_base(path: str) -> tuple[int, int]:
    """``(version, lsn)`` from a writer directory's BASE file; ``(0, 0)`` if absent, torn or
    damaged -- the safe floor: recovery then walks back further, it never skips a frame."""
    return _parse_base(path)[0]


def base_problem(path: str) -> str | None:
    """What is wrong with a writer directory's BASE record, if anything (for verify)."""
    return _parse_base(path)[1]


def _parse_base(path: str) -> tuple[tuple[int, int], str | None]:
    file = os.path.join(path, "BASE")
    try:
        with open(file) as f:
            text = f.read()
    except FileNotFoundError:
        if os.path.exists(os.path.join(path, "ACTIVE")):  # written before ACTIVE, removed after it
            return (0, 0), f"{file}: writer record missing; recovery walks back further"
        return (0, 0), None  # being removed by its adopter
    except OSError as exc:
        return (0, 0), f"{file}: unreadable writer record: {exc}"
    try:
        version, lsn, crc = text.split()
        body = f"{int(version)} {int(lsn)}"
        if int(crc, 16) != crc32c.crc32c(body.encode()):
            raise ValueError("checksum mismatch")
        return (int(version), int(lsn)), None
    except ValueError as exc:
        return (0, 0), f"{file}: damaged writer record ({exc}); recovery ignores it and walks back further"


@dataclass
class Orphan:
    """A dead writer's WAL, locked by this process until it is adopted and removed."""

    writer: WriterDir
    legacy: bool  # the single-writer layout: segments directly in wal_dir, writer id ""

    @property
    def segments(self) -> list[tuple[int, str]]:
        return list_segments(self.writer.path)


def find_orphans(wal_dir: str) -> list[Orphan]:
    """Lock every writer directory whose writer is gone; the caller adopts or releases them."""
    found: list[Orphan] = []
    if list_segments(wal_dir):
        # the single-writer layout: no single writer can be alive (we share the table LOCK it
        # held exclusively); among new writers, the holder of ADOPT_LEGACY adopts it
        fd = os.open(os.path.join(wal_dir, "ADOPT_LEGACY"), os.O_RDWR | os.O_CREAT, 0o644)
        if try_flock(fd, fcntl.LOCK_EX) and list_segments(wal_dir):
            found.append(Orphan(WriterDir("", wal_dir, fd), legacy=True))
        else:
            os.close(fd)
    root = os.path.join(wal_dir, _WRITERS)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return found
    for name in names:
        path = os.path.join(root, name)
        if name.startswith("."):
            _remove_abandoned(path)
            continue
        try:
            fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR)
        except (FileNotFoundError, NotADirectoryError):
            continue  # being removed by its adopter, or not ours
        if not try_flock(fd, fcntl.LOCK_EX):
            os.close(fd)
            continue  # alive, or being adopted by another process
        if os.fstat(fd).st_nlink == 0:
            fcntl.flock(fd, fcntl.LOCK_UN)  # adopted and removed while we waited
            os.close(fd)
            continue
        found.append(Orphan(WriterDir(name, path, fd), legacy=False))
    return found


def live_writer_ids(wal_dir: str) -> set[str]:
    """Ids of the writer directories under ``wal_dir`` (live or not yet adopted)."""
    try:
        return set(os.listdir(os.path.join(wal_dir, _WRITERS)))
    except FileNotFoundError:
        return set()


_ABANDONED_AFTER = 60.0  # seconds a half-built writer directory without a LOCK is left to its creator


def _remove_abandoned(path: str) -> None:
    """A writer directory whose creator died before renaming it in: it holds no frames. While
    its LOCK is held, or (no LOCK yet) while it is younger than ``_ABANDONED_AFTER`` seconds,
    its creator may be alive and it is left alone."""
    try:
        fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR)
    except FileNotFoundError:
        # its creator is between mkdir and renaming its locked LOCK in, or died there
        try:
            if time.time() - os.stat(path).st_mtime > _ABANDONED_AFTER:
                for name in os.listdir(path):
                    os.unlink(os.path.join(path, name))
                os.rmdir(path)
        except OSError:
            pass  # another process removed it first, or its creator moved on
        return
    try:
        if try_flock(fd, fcntl.LOCK_EX):
            for name in os.listdir(path):
                os.unlink(os.path.join(path, name))
            os.rmdir(path)
    except OSError:
        pass  # another process removed it first
    finally:
        os.close(fd)


def writer_wal_dirs(wal_dir: str) -> list[tuple[str, str]]:
    """``(writer id, directory)`` of every WAL under ``wal_dir``, live or dead, for readers
    (no locks taken): the single-writer layout as id ``""``, then each writer directory."""
    out: list[tuple[str, str]] = []
    if os.path.isdir(wal_dir) and list_segments(wal_dir):
        out.append(("", wal_dir))
    root = os.path.join(wal_dir, _WRITERS)
    try:
        names = sorted(n for n in os.listdir(root) if not n.startswith("."))
    except FileNotFoundError:
        return out
    return out + [(n, os.path.join(root, n)) for n in names]


@contextmanager
def creation_lock(uri: str, wal_dir: str | None) -> Iterator[None]:
    """Serialise the creation of a dataset among this host's writers: beside a local dataset
    (whatever WAL directory each writer uses), in the WAL directory for a remote one. Writers
    on different hosts creating one remote dataset at once are not covered (create it first)."""
    if is_local(uri):
        path = local_path(uri).rstrip("/")
        lock = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.create-lock")
        _makedirs_durable(os.path.dirname(lock))
    else:
        assert wal_dir is not None
        lock = os.path.join(wal_dir, "CREATE.lock")
    with held(lock):
        yield
