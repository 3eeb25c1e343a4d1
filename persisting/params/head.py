"""A durable record of the newest checkpoint, kept outside the checkpoint table.

Lance opens a dataset at the newest manifest it finds under ``_versions``. If that file is lost
(a deleted file, a restore from an older backup, a power cut on a filesystem that dropped it),
the table silently opens one version back and the newest checkpoint is gone without an error.
So after every commit of ``checkpoints.lance`` the writer records the table's version and the
newest step in ``checkpoints.head.json`` beside it (written to a temporary file, fsynced,
renamed, directory fsynced: only after the commit itself is durable). Opening a store reads the
record *before* the table, so a live writer can only move the table past it, and refuses with
:class:`~persisting.errors.CorruptionError` when the table is older than the record.

Several processes may commit to one store (DCP coordinators, separate trainers): the record only
moves forward. :func:`write_head` holds an ``flock`` on ``checkpoints.head.json.lock`` while it
compares and replaces, so a slower writer never overwrites a newer version with an older one.

Local stores only: on an object store the record would need a conditional write of its own.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass

from persisting.engine.durable import fsync_path
from persisting.errors import CorruptionError, StorageError

__all__ = ["HEAD_NAME", "Head", "check_head", "read_head", "write_head"]

HEAD_NAME = "checkpoints.head.json"
_FORMAT = 1


@dataclass(frozen=True)
class Head:
    """The checkpoint table's version after a commit, and the newest step it then held."""

    version: int
    step: int | None


def read_head(path: str) -> Head | None:
    """The record at ``path``, or None when there is none (a store made before records)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}", path=path) from exc
    try:
        doc = json.loads(raw)
        if doc.get("format") != _FORMAT:
            raise ValueError(f"format {doc.get('format')!r} is not {_FORMAT}")
        version, step = doc["version"], doc["step"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"version {version!r}")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise ValueError(f"step {step!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptionError(
            f"{path} (the record of the newest checkpoint) is damaged: {exc}; if checkpoints.lance "
            "beside it is intact, delete this file and reopen the store",
            path=path,
        ) from exc
    return Head(version, step)


def write_head(path: str, head: Head) -> None:
    """Replace the record at ``path`` durably (temporary file, fsync, rename, fsync dir),
    unless it already records ``head.version`` or a newer one (another writer's commit)."""
    try:
        lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open {path}.lock to record the newest checkpoint: {exc}", path=path) from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = read_head(path)
        except CorruptionError:
            current = None  # a damaged record is replaced by a good one
        if current is None or head.version > current.version:
            _replace(path, head)
    finally:
        os.close(lock)  # releases the flock


def _replace(path: str, head: Head) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    body = json.dumps({"format": _FORMAT, "version": head.version, "step": head.step}).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_path(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        raise StorageError(
            f"checkpoint table committed, but its record {path} cannot be written: {exc}; the "
            "checkpoint is saved, and a lost newest manifest would go unnoticed until the next save",
            path=path,
        ) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_head(head: Head | None, *, path: str, table: str, version: int, steps: list[int]) -> None:
    """Raise CorruptionError when ``table`` (at ``version``, holding ``steps``) is older than
    the record ``head`` read from ``path``: its newest manifest(s) are missing."""
    if head is None or version >= head.version:
        return
    newest = max(steps) if steps else None
    raise CorruptionError(
        f"{table} opens at version {version} (newest checkpoint step {newest}), but {path} records "
        f"that version {head.version} (newest checkpoint step {head.step}) was committed: the newest "
        f"manifest(s) under {table}/_versions are missing, and opening would silently roll the store "
        f"back. Restore them from a backup; to accept the rollback, delete {path} and reopen",
        path=path, version=version, expected_version=head.version, step=head.step,
    )
