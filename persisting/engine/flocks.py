"""Advisory file locks (flock) as the engine uses them to tell live processes from dead ones.

A flock dies with its process, so "I can take this lock" means "its holder is gone". Kept in
one place for the WAL writer directories and the stores' own liveness files.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["held", "try_flock", "unlock"]


def try_flock(fd: int, op: int = fcntl.LOCK_EX) -> bool:
    """Take ``op`` (LOCK_EX or LOCK_SH) on ``fd`` without waiting; False if someone holds it."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def unlock(fd: int) -> int:
    """Release and close ``fd`` if it is open; returns -1 (the "no lock" value) to store back."""
    if fd >= 0:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return -1


@contextmanager
def held(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), waiting for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        unlock(fd)
