"""Registration with Pulsing: the one line a Pulsing application adds.

Pulsing is imported here only, so the backends work (and are tested) without it.
"""

from __future__ import annotations

from typing import Any

from persisting.queue.backend import LanceBackend, PersistingBackend
from persisting.queue.pulsing_fixes import install as install_fixes

__all__ = ["backend_class", "register"]


def _streaming() -> Any:
    try:
        from pulsing import streaming
    except ImportError as exc:
        raise ImportError(
            "persisting.queue.register() needs Pulsing: pip install 'persisting[pulsing]'"
        ) from exc
    return streaming


def register(backend: type | None = None, *, lance: str = "lance", persisting: str = "persisting") -> str:
    """Register LanceBackend and PersistingBackend with ``pulsing.streaming`` under these names
    and under their class names; returns the name ``backend`` (a class, optional) is known by.

    Pulsing turns a backend passed by class into its ``__name__`` before the owning node looks
    it up, so the class names are registered too: ``write_queue(..., backend=PersistingBackend)``
    works. Every node of a Pulsing cluster must call this (buckets are created on the node that
    owns them, which looks the backend up by name). It also installs
    :mod:`persisting.queue.pulsing_fixes` (a bucket whose actor died is created again).
    """
    streaming = _streaming()
    install_fixes(streaming)  # a bucket whose actor died is created again (see pulsing_fixes)
    streaming.register_backend(lance, LanceBackend)
    streaming.register_backend(persisting, PersistingBackend)
    for cls in (LanceBackend, PersistingBackend) if backend is None else (LanceBackend, PersistingBackend, backend):
        streaming.register_backend(cls.__name__, cls)
    return "" if backend is None else backend.__name__


def backend_class(backend: str | type) -> type | None:
    """The class Pulsing would build for ``backend`` (a name or a class), or None if unknown."""
    if isinstance(backend, type):
        return backend
    try:
        cls: type = _streaming().get_backend_class(backend)
    except ValueError:
        return None
    return cls
