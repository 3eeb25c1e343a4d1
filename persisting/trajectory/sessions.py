"""Writer sessions of a TrajectoryStore: who is alive, who died, and the store-wide lock.

Every writer (a ``TrajectoryStore`` opened without ``read_only``, in any process) is a
*session* with a random id. Under the store's control directory (always local: the
``wal_dir`` of the store, or ``<path>/sessions`` for a local store)::

    sessions/LOCK          exclusive flock, held briefly: opening a writer (adoption and
                           recovery), reserving a block of episode ids, closing a writer
    sessions/<id>          exclusive flock held by the live session <id> for its lifetime;
                           its text names the session's table writer ids (JSON)

A session file whose lock can be taken belongs to a dead process (flocks die with it). Only a
holder of ``LOCK`` looks, so two processes never recover the same dead session.

:class:`~persisting.trajectory.remote_sessions.RemoteSessions` offers the same interface on
object storage (``wal="object"``: leases and a compare-and-swap id counter, no local directory).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from persisting.engine import Table, fsync_path, try_flock, unlock
from persisting.engine.writers import live_writer_ids
from persisting.errors import StorageError
from persisting.trajectory.ids import high_water

__all__ = ["DeadSession", "Sessions", "new_session_id"]


def new_session_id() -> str:
    """A random session id: unique across processes, hosts and restarts."""
    return secrets.token_hex(8)


@dataclass
class DeadSession:
    """A dead writer's session file, locked by this process until it is forgotten."""

    session_id: str
    writers: dict[str, str]  # table name -> that table's writer id in the dead session
    path: str
    fd: int

    def release(self) -> None:
        self.fd = unlock(self.fd)


class Sessions:
    """The session files and the store-wide lock under ``root`` (a local directory)."""

    def __init__(self, root: str, store_path: str) -> None:
        self.root = root
        self.store_path = store_path
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"trajectory store {store_path}: cannot create its session directory {root}: {exc}; "
                "pass wal_dir= a writable local directory", path=root,
            ) from exc
        fsync_path(os.path.dirname(os.path.abspath(root)))
        self._fd = -1
        self._path = ""

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store-wide lock (blocking: every holder keeps it for milliseconds)."""
        path = os.path.join(self.root, "LOCK")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"trajectory store {self.store_path}: cannot open its lock {path}: {exc}", path=path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def start(self, session_id: str, writers: dict[str, str]) -> None:
        """Create and lock this process's session file, durably (call under :meth:`locked`)."""
        tmp = os.path.join(self.root, f".new-{session_id}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, json.dumps(writers).encode())
            os.fsync(fd)
            path = os.path.join(self.root, session_id)
            os.rename(tmp, path)
            fsync_path(self.root)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._path = fd, path

    def finish(self) -> None:
        """Remove this process's session file (its episodes are all ended) and unlock it."""
        if self._fd < 0:
            return
        try:
            os.unlink(self._path)
            fsync_path(self.root)
        finally:
            self.release()

    def release(self) -> None:
        """Unlock without removing (a failed close: the next writer open recovers us)."""
        self._fd = unlock(self._fd)

    def live(self) -> set[str]:
        """Ids of every session file present (live, or dead and not yet recovered)."""
        return {n for n in os.listdir(self.root) if n != "LOCK" and not n.startswith(".")}

    def dead(self, candidates: Collection[str] = ()) -> list[DeadSession]:
        """Lock every session file whose process is gone (call under :meth:`locked`); a
        session of ``candidates`` (open in the ids table) with no file at all is dead too."""
        files = self.live()
        found = [DeadSession(sid, {}, "", -1) for sid in sorted(set(candidates) - files)]
        for name in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, name)
            if name == "LOCK":
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            if not try_flock(fd):
                os.close(fd)
                continue
            if name.startswith("."):  # its creator died before renaming it in: nothing reserved
                os.unlink(path)
                os.close(fd)
                continue
            try:
                writers = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
            except ValueError:
                writers = {}
            found.append(DeadSession(name, writers if isinstance(writers, dict) else {}, path, fd))
        return found

    def unadopted(self, dead: Collection[DeadSession], tables: Mapping[str, Table]) -> set[str]:
        """Sessions of ``dead`` whose WAL directory in one of ``tables`` is still there: they
        died after those tables opened (and adopted dead writers), so the next open recovers them."""
        live = {name: live_writer_ids(t.wal_dir) if t.wal_dir else set() for name, t in tables.items()}
        return {d.session_id for d in dead if any(d.writers.get(n) in ids for n, ids in live.items())}

    def forget(self, dead: DeadSession) -> None:
        """Remove a recovered dead session's file."""
        try:
            if dead.path:
                os.unlink(dead.path)
                fsync_path(self.root)
        finally:
            dead.release()

    # -- episode ids (the caller holds :meth:`locked`) ----------------------------------------
    def next_block(self, ids: Table, floor: int, size: int) -> int:
        """The first id of the next block: above every id a session may have handed out
        (the ids table, refreshed under the lock) and ``floor``."""
        return max(high_water(ids), floor)

    def give_back(self, used: int, stop: int) -> None:
        """Nothing to do: the ``closed`` row already returns ids ``[used, stop)``."""
