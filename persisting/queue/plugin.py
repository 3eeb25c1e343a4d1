"""Registration with Pulsing: the one line a Pulsing application adds.

Pulsing is imported here only, so the backends work (and are tested) without it.
"""

from __future__ import annotations

from persisting.queue.backend import LanceBackend, PersistingBackend

__all__ = ["register"]


def register(*, lance: str = "lance", persisting: str = "persisting") -> None:
    """Register LanceBackend and PersistingBackend with ``pulsing.streaming`` under these names.

    Every node of a Pulsing cluster must call this (buckets are created on the node that owns
    them, which looks the backend up by name).
    """
    try:
        from pulsing.streaming import register_backend
    except ImportError as exc:
        raise ImportError(
            "persisting.queue.register() needs Pulsing: pip install 'persisting[pulsing]'"
        ) from exc
    register_backend(lance, LanceBackend)
    register_backend(persisting, PersistingBackend)
