"""Durable queues for Pulsing: ``LanceBackend`` and ``PersistingBackend``.

    import persisting.queue
    persisting.queue.register()          # "lance" and "persisting" in pulsing.streaming
    writer = await pulsing.streaming.write_queue(system, "topic", backend="persisting",
                                                 storage_path="/data/queues",
                                                 backend_options={"enable_wal": True})
"""

from persisting.queue.backend import LanceBackend, PersistingBackend
from persisting.queue.options import LanceBackendOptions, PersistingBackendOptions
from persisting.queue.plugin import register

__all__ = [
    "LanceBackend",
    "LanceBackendOptions",
    "PersistingBackend",
    "PersistingBackendOptions",
    "register",
]
