"""Durable queues for Pulsing: ``LanceBackend`` and ``PersistingBackend``.

    from persisting.queue import write_queue, read_queue
    writer = await write_queue(system, "topic", backend="persisting", storage_path="/data/queues",
                               backend_options={"enable_wal": True})   # in /data/queues/topic/

``write_queue``/``read_queue`` take Pulsing's signatures, register the backends and keep each
topic in its own directory under a shared ``storage_path``.
"""

from persisting.queue.backend import LanceBackend, PersistingBackend
from persisting.queue.options import LanceBackendOptions, PersistingBackendOptions
from persisting.queue.plugin import register
from persisting.queue.topics import read_queue, write_queue

__all__ = [
    "LanceBackend",
    "LanceBackendOptions",
    "PersistingBackend",
    "PersistingBackendOptions",
    "read_queue",
    "register",
    "write_queue",
]
