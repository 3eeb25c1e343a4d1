"""The one exception hierarchy of Persisting.

Every error is a :class:`PersistingError`; subclasses also inherit the built-in exception a
caller would already catch (``KeyError`` for a missing key, ``ValueError`` for bad input), so
``except KeyError`` keeps working. Messages say what was wrong, with which name, path or
offset, and what to do. All errors survive pickling because they cross Pulsing actors and
process boundaries.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyExistsError",
    "ClosedError",
    "ConfigError",
    "CorruptionError",
    "FencedError",
    "InvalidNameError",
    "InvalidRecordError",
    "LockedError",
    "NotFoundError",
    "PersistingError",
    "ReadOnlyError",
    "SchemaError",
    "StorageError",
    "TopicMismatchError",
    "WALError",
]


class PersistingError(Exception):
    """Root of every error raised by Persisting."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        for key, value in details.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))


def _rebuild(cls: type[PersistingError], message: str, details: dict[str, Any]) -> PersistingError:
    return cls(message, **details)


class NotFoundError(PersistingError, KeyError):
    """A key, version, tag, checkpoint or episode that does not exist."""


class AlreadyExistsError(PersistingError, FileExistsError):
    """A key, step or name that is already taken (e.g. a checkpoint step saved twice)."""


class SchemaError(PersistingError, ValueError):
    """A field whose type cannot be stored next to what is already stored."""


class ConfigError(PersistingError, ValueError):
    """An option or argument with a bad value; the message names the option."""


class TopicMismatchError(ConfigError):
    """A queue bucket that records one topic was opened for another; give each topic its own
    directory (``persisting.queue.write_queue`` does)."""


class InvalidNameError(PersistingError, ValueError):
    """A name (topic, namespace, tag, table) that could escape the store's directory."""


class InvalidRecordError(PersistingError, TypeError):
    """A record that cannot be stored: not a dict, or a value of an unsupported type."""


class ClosedError(PersistingError, ValueError):
    """An operation on a table or store that was already closed."""


class StorageError(PersistingError, OSError):
    """The underlying storage (local disk, object store, Lance) failed."""


class ReadOnlyError(StorageError, PermissionError):
    """A write through a store or table opened with ``read_only=True``; open it as a writer."""


class WALError(PersistingError):
    """The write-ahead log cannot be written or read."""


class CorruptionError(WALError):
    """Stored bytes fail their checksum; the message names the file and offset."""


class LockedError(PersistingError):
    """Another writer holds the table's lock; open read-only or stop that writer."""


class FencedError(LockedError):
    """This writer lost its lease on an object-store WAL (another process took the writer's
    identity over, e.g. after a network partition or a long pause): it can no longer log,
    acknowledge or commit. Open the table again to continue as a new owner."""
