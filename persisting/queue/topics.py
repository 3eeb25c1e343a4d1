"""Topics under one ``storage_path``: Pulsing's ``write_queue``/``read_queue``, kept apart.

Pulsing lays a queue's buckets out as ``storage_path/bucket_<N>``, without the topic, so two
topics given the same ``storage_path`` (as every example does) would share bucket files: one
topic's reader gets the other's records, and two live topics collide on the bucket's writer
lock. The helpers here take Pulsing's exact signatures and give each topic its own directory,
``storage_path/<topic>/bucket_<N>``, and tell the backend its topic.

Each bucket records its topic in a ``TOPIC`` file in its WAL directory (local, like the bucket's
lock), written once, atomically, when the bucket is first opened with a topic. A backend told
another topic refuses the bucket with :class:`~persisting.errors.TopicMismatchError` before it
touches a file, whichever helper (or plain Pulsing call) opened it.
"""

from __future__ import annotations

import os
from typing import Any

from persisting.engine.durable import fsync_path
from persisting.engine.names import check_name
from persisting.errors import StorageError, TopicMismatchError

__all__ = ["TOPIC_FILE", "claim_topic", "read_queue", "read_topic", "topic_storage_path", "write_queue"]

TOPIC_FILE = "TOPIC"


def read_topic(wal_dir: str) -> str | None:
    """The topic a bucket recorded in its WAL directory, or None (none recorded yet)."""
    try:
        with open(os.path.join(wal_dir, TOPIC_FILE), encoding="utf-8") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"cannot read the topic record {wal_dir}/{TOPIC_FILE}: {exc}", path=wal_dir) from exc


def claim_topic(wal_dir: str, topic: str, bucket: str) -> None:
    """Record ``topic`` for the bucket whose WAL directory is ``wal_dir``, or check it.

    Raises TopicMismatchError when the bucket already records another topic. The record is
    created with a hard link from a fsynced temporary file, so two processes claiming one
    bucket at once cannot both win, and a crash leaves either no record or a whole one.
    """
    check_name(topic, what="topic")
    os.makedirs(wal_dir, exist_ok=True)
    path = os.path.join(wal_dir, TOPIC_FILE)
    stored = read_topic(wal_dir)
    if stored is None:
        tmp = f"{path}.{os.getpid()}.{id(wal_dir):x}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(topic + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                fsync_path(wal_dir)
            except FileExistsError:
                pass  # another process recorded it first: check against theirs below
        except OSError as exc:
            raise StorageError(f"cannot record topic {topic!r} in {path}: {exc}", path=path) from exc
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        stored = read_topic(wal_dir)
    if stored != topic:
        raise TopicMismatchError(
            f"queue bucket {bucket} holds topic {stored!r}, not {topic!r}: two topics share one "
            "storage_path; open queues with persisting.queue.write_queue/read_queue (each topic gets "
            "storage_path/<topic>) or give each topic its own storage_path",
            path=bucket, topic=topic, stored_topic=stored,
        )


def topic_storage_path(storage_path: str | None, topic: str) -> str | None:
    """``storage_path/<topic>`` (None keeps Pulsing's default, which already holds the topic)."""
    check_name(topic, what="topic")
    if storage_path is None:
        return None
    return os.path.join(os.fspath(storage_path), topic)


def _backend_args(topic: str, backend: str | type, backend_options: dict[str, Any] | None) -> tuple[str | type, dict[str, Any] | None]:
    """The backend (by registered name) and its options with ``topic`` for our backends."""
    from persisting.queue.backend import LanceBackend
    from persisting.queue.plugin import backend_class, register

    register()
    cls = backend_class(backend)
    if cls is None or not issubclass(cls, LanceBackend):
        return backend, backend_options  # Pulsing's own or a third-party backend: unchanged
    name = backend if isinstance(backend, str) else register(cls)
    options = dict(backend_options or {})
    given = options.get("topic")
    if given is not None and given != topic:
        raise TopicMismatchError(
            f"backend_options topic={given!r} differs from the queue's topic {topic!r}; drop the option",
            topic=topic, stored_topic=given,
        )
    options["topic"] = topic
    return name, options


async def write_queue(
    system: Any,
    topic: str,
    bucket_column: str = "id",
    num_buckets: int = 4,
    batch_size: int = 100,
    storage_path: str | None = None,
    backend: str | type = "memory",
    backend_options: dict[str, Any] | None = None,
) -> Any:
    """``pulsing.streaming.write_queue`` with each topic kept in ``storage_path/<topic>``.

    Registers the Persisting backends (by name and by class) on this node, accepts ``backend``
    as a name or a class, and tells Persisting backends their topic.
    """
    from pulsing import streaming

    name, options = _backend_args(topic, backend, backend_options)
    return await streaming.write_queue(
        system, topic, bucket_column=bucket_column, num_buckets=num_buckets, batch_size=batch_size,
        storage_path=topic_storage_path(storage_path, topic), backend=name, backend_options=options,
    )


async def read_queue(
    system: Any,
    topic: str,
    bucket_id: int | None = None,
    bucket_ids: list[int] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    num_buckets: int = 4,
    storage_path: str | None = None,
    backend: str | type = "memory",
    backend_options: dict[str, Any] | None = None,
) -> Any:
    """``pulsing.streaming.read_queue`` reading the topic written by :func:`write_queue`."""
    from pulsing import streaming

    name, options = _backend_args(topic, backend, backend_options)
    return await streaming.read_queue(
        system, topic, bucket_id=bucket_id, bucket_ids=bucket_ids, rank=rank, world_size=world_size,
        num_buckets=num_buckets, storage_path=topic_storage_path(storage_path, topic), backend=name,
        backend_options=options,
    )
