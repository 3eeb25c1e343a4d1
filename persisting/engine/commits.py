"""Which writer applied what: commit properties, per-writer applied LSNs, conflict retries.

Every append commit carries ``persisting.writer`` (the writer's id) and ``persisting.lsn``
(the last LSN of that writer it applies). A writer's applied LSN is the one on its newest
commit; commits from the single-writer layout carry no writer id and count as writer ``""``.
Maintenance commits (compaction, cleanup, deletes) carry nothing: before cleanup removes old
transactions, :func:`remember_applied` copies live writers' LSNs into the dataset config.

:func:`fence_commits` is how a new owner of a writer identity (the WAL on object storage)
stops its predecessor's commits: Lance has no conditional commit, but it does reject an Append
prepared on a version older than a Project (measured on pylance 14.0.2: "Retryable commit
conflict ... preempted by concurrent transaction Project"), and a Project that keeps the schema
changes nothing else (deletes, compaction, config and index builds go on beside it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import lance

__all__ = [
    "LSN_KEY",
    "WRITER_KEY",
    "commit_properties",
    "fence_commits",
    "is_conflict",
    "remember_applied",
    "retry_on_conflict",
    "writer_applied_lsn",
]

LSN_KEY = "persisting.lsn"
WRITER_KEY = "persisting.writer"
T = TypeVar("T")


def commit_properties(writer_id: str, last_lsn: int) -> dict[str, str]:
    props = {LSN_KEY: str(last_lsn)}
    if writer_id:
        props[WRITER_KEY] = writer_id
    return props


def _config_key(writer_id: str) -> str:
    return f"{LSN_KEY}.{writer_id}" if writer_id else LSN_KEY


def writer_applied_lsn(
    ds: lance.LanceDataset | None, writer_id: str, floor_version: int = 0, floor_lsn: int = 0
) -> int:
    """The highest LSN of ``writer_id`` applied to ``ds``.

    Walks back from the newest version to ``floor_version`` (the writer's BASE record: at that
    version it had applied ``floor_lsn``) and returns the LSN on the first commit carrying the
    writer's id; stops early at a cleaned-up transaction or at the config update that recorded
    the writer's LSN, and falls back to the config and the floor.
    """
    if ds is None:
        return floor_lsn
    best = max(floor_lsn, int(ds.config().get(_config_key(writer_id), 0) or 0))
    key = _config_key(writer_id)
    for v in range(ds.version, floor_version, -1):
        try:
            tx = ds.read_transaction(v)
        except Exception:  # noqa: BLE001 - an old version's transaction may be cleaned up
            break
        props = getattr(tx, "transaction_properties", None) or {}
        if LSN_KEY in props and props.get(WRITER_KEY, "") == writer_id:
            return max(best, int(props[LSN_KEY]))
        updates = getattr(getattr(getattr(tx, "operation", None), "config_updates", None), "updates", None)
        if updates and key in updates:
            return best
    return best


def applied_lsn(ds: lance.LanceDataset | None) -> int:
    """The single-writer applied LSN (writer ``""``): kept for tools reading old tables."""
    return writer_applied_lsn(ds, "")


def remember_applied(ds: lance.LanceDataset, writer_ids: Iterable[str]) -> None:
    """Copy the applied LSN of each writer into the dataset config, so that cleanup of old
    transactions cannot make a writer's applied LSN unknowable."""
    updates = {}
    config = ds.config()
    for wid in writer_ids:
        lsn = writer_applied_lsn(ds, wid)
        if lsn and int(config.get(_config_key(wid), 0) or 0) != lsn:
            updates[_config_key(wid)] = str(lsn)
    if updates:
        retry_on_conflict(lambda: ds.update_config(updates))


def fence_commits(uri: str, storage_options: dict[str, str] | None) -> lance.LanceDataset | None:
    """Commit a schema-preserving Project on the newest version of ``uri`` and return it.

    Every Append prepared on an earlier version then fails with a retryable conflict instead
    of landing (a retry re-reads the dataset, and a fenced writer's lease check stops it
    there); an Append committed before it is in the returned version, so the caller's replay
    sees it as applied. None if the dataset does not exist yet."""
    from persisting.engine.lance_io import open_dataset

    def attempt() -> lance.LanceDataset | None:
        ds = open_dataset(uri, storage_options)
        if ds is None:
            return None
        return lance.LanceDataset.commit(
            uri, lance.LanceOperation.Project(ds.lance_schema), read_version=ds.version,
            storage_options=storage_options, max_retries=0,
        )

    return retry_on_conflict(attempt)


def is_conflict(exc: BaseException) -> bool:
    """A Lance commit that lost a race with a concurrent commit and may be retried."""
    text = str(exc).lower()
    return isinstance(exc, OSError | ValueError | RuntimeError) and (
        "conflict" in text or "preempted" in text or "retry" in text or "already exist" in text
    )


def retry_on_conflict(action: Callable[[], T], attempts: int = 20) -> T:
    """Run ``action`` until it does not lose a commit race (with a short random backoff)."""
    import random

    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is a retryable conflict
            if attempt == attempts - 1 or not is_conflict(exc):
                raise
            time.sleep(random.uniform(0.001, 0.01) * (attempt + 1))
    raise AssertionError("unreachable")
