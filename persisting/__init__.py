"""Persisting: persistent storage for AI systems, on Lance with a write-ahead log.

The stores import their heavy dependencies (torch, transformers, gymnasium, pulsing) lazily.
"""

from persisting import errors, queue
from persisting.engine import Table, TableOptions
from persisting.kvcache import KVCacheStore
from persisting.params import ParamStore
from persisting.queue import LanceBackend, PersistingBackend
from persisting.trajectory import TrajectoryStore

__all__ = [
    "KVCacheStore",
    "LanceBackend",
    "ParamStore",
    "PersistingBackend",
    "Table",
    "TableOptions",
    "TrajectoryStore",
    "errors",
    "queue",
]
__version__ = "0.1.0"
