"""Persisting: persistent storage for AI systems, on Lance with a write-ahead log."""

from persisting import errors, queue
from persisting.engine import Table, TableOptions
from persisting.queue import LanceBackend, PersistingBackend

__all__ = ["LanceBackend", "PersistingBackend", "Table", "TableOptions", "errors", "queue"]
__version__ = "0.1.0"
