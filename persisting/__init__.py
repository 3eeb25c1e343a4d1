"""Persisting: persistent storage for AI systems, on Lance with a write-ahead log."""

from persisting import errors
from persisting.engine import Table, TableOptions

__all__ = ["Table", "TableOptions", "errors"]
__version__ = "0.1.0"
