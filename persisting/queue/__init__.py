"""Durable queues for Pulsing: ``LanceBackend`` and ``PersistingBackend``.

    from persisting.queue import write_queue, read_queue
    writer = await write_queue(system, "topic", backend="persisting", storage_path="/data/queues",
                               backend_options={"enable_wal": True})   # in /data/queues/topic/

``write_queue``/``read_queue`` take Pulsing's signatures, register the backends and keep each
topic in its own directory under a shared ``storage_path``. With ``uri``/``storage_options``
and ``wal="object"`` the buckets and their WAL live on object storage, so a node's death loses
nothing acknowledged; ``Producer`` retries puts on the bucket's new owner, stored once.
"""

from persisting.queue.backend import LanceBackend, PersistingBackend
from persisting.queue.options import LanceBackendOptions, PersistingBackendOptions
from persisting.queue.plugin import register
from persisting.queue.producer import Producer
from persisting.queue.search import search_topic
from persisting.queue.topics import read_queue, write_queue

__all__ = [
    "LanceBackend",
    "LanceBackendOptions",
    "PersistingBackend",
    "PersistingBackendOptions",
    "Producer",
    "read_queue",
    "register",
    "search_topic",
    "write_queue",
]
