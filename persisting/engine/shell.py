"""The lifecycle every store shares: where its tables live, open/closed and read-only state,
and the checks on constructor arguments.

Each facade (KV cache, checkpoints, trajectories, queue buckets) keeps one or more engine tables
under one ``path`` (a local directory or an object-store URI). A :class:`StoreShell` holds what
they all need once:

- layout: table ``name`` lives at ``<path>/<name>.lance``; its WAL at ``<wal_dir>/<name>.wal``
  when the store was given a ``wal_dir`` (one meaning everywhere: a local *parent* directory
  shared by all of the store's tables and by every process that writes the store), else beside
  the dataset (the engine's default, local paths only);
- checks: a remote ``path`` needs a local ``wal_dir`` to write (unless its WAL lives on the
  object store too: ``object_wal``, see :mod:`persisting.engine.remote_wal`), ``wal_dir`` is
  never remote;
- state: :meth:`check_open` raises :class:`~persisting.errors.ClosedError` after
  :meth:`mark_closed`, :meth:`check_writable` raises :class:`~persisting.errors.ReadOnlyError`
  on a read-only handle; both name the store and its path.

The ``check_*`` functions validate constructor arguments with one wording, raising
:class:`~persisting.errors.ConfigError` that names the argument and the store.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Collection
from typing import Any

from persisting.errors import ClosedError, ConfigError, ReadOnlyError

__all__ = [
    "StoreShell",
    "check_choice",
    "check_int",
    "check_seconds",
    "join_uri",
]


def join_uri(base: str, name: str) -> str:
    """``base/name`` for local paths and URIs alike (no ``os.path``: ``s3://`` keeps its slashes)."""
    return base.rstrip("/") + "/" + name


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


class StoreShell:
    """Layout, state and argument checks one store (of kind ``kind``) shares with the others."""

    def __init__(
        self,
        kind: str,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        wal_dir: str | os.PathLike[str] | None = None,
        object_wal: bool = False,
        label: str | None = None,
        reopen: str = "open it again",
    ) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigError(f"{kind}: path must be a non-empty local path or URI, got {path!r}", argument="path")
        self.kind = kind
        self.path = os.fspath(path)
        self.read_only = bool(read_only)
        self.remote = _is_remote(self.path)
        self._label = label
        self._reopen = reopen
        if wal_dir is not None:
            if not isinstance(wal_dir, (str, os.PathLike)) or not os.fspath(wal_dir):
                raise ConfigError(f"{self}: wal_dir must be a local directory path, got {wal_dir!r}", argument="wal_dir")
            wal_dir = os.fspath(wal_dir)
            if "://" in wal_dir:
                raise ConfigError(
                    f"{self}: wal_dir must be a local directory (the WAL is fsynced there), got {wal_dir!r}",
                    argument="wal_dir",
                )
        self.wal_dir: str | None = wal_dir
        if self.remote and wal_dir is None and not object_wal and not self.read_only:
            raise ConfigError(
                f"{self} is on an object store: pass wal_dir, a local directory for its write-ahead logs "
                "and writer locks (the same one for every process writing this store)",
                argument="wal_dir",
            )
        self._closed = False

    # -- layout -----------------------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        """Where table ``name`` keeps its Lance dataset."""
        return join_uri(self.path, name + ".lance")

    def table_wal_dir(self, name: str) -> str | None:
        """Table ``name``'s WAL directory under ``wal_dir``; None lets the engine put it beside
        the (local) dataset."""
        return None if self.wal_dir is None else os.path.join(self.wal_dir, name + ".wal")

    def make_root(self) -> None:
        """Create a local store's directory (a writer's job; readers never create anything)."""
        if not self.remote and not self.read_only:
            os.makedirs(self.path.removeprefix("file://"), exist_ok=True)

    # -- state ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def mark_closed(self) -> bool:
        """Move to closed; True the first time (the caller then releases its tables)."""
        first = not self._closed
        self._closed = True
        return first

    def check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self} is closed; {self._reopen} to use it", path=self.path)

    def check_writable(self, action: str = "write") -> None:
        if self._closed:  # check_open, inline: a logging loop calls this once per step
            self.check_open()
        if self.read_only:
            raise ReadOnlyError(f"{self} is open read-only; open it without read_only=True to {action}", path=self.path)

    def __str__(self) -> str:
        return f"{self.kind} {self.path}" + (f" ({self._label})" if self._label else "")

    def __repr__(self) -> str:
        return f"StoreShell({self.kind!r}, {self.path!r}, read_only={self.read_only}, wal_dir={self.wal_dir!r})"


def check_int(
    name: str, value: Any, *, store: str, minimum: int = 0, optional: bool = False
) -> int | None:
    """``value`` as an int >= ``minimum`` (None allowed when ``optional``); bools are refused."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        none = "None or " if optional else ""
        raise ConfigError(f"{store}: {name} must be {none}an int >= {minimum}, got {value!r}", argument=name)
    return int(value)


def check_seconds(name: str, value: Any, *, store: str, positive: bool = False) -> float:
    """``value`` as a finite number of seconds (>= 0, or > 0 when ``positive``)."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and value == value
        and value != float("inf")
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{store}: {name} must be a number of seconds {bound}, got {value!r}", argument=name)
    return float(value)


def check_choice(name: str, value: Any, choices: Collection[Any], *, store: str) -> Any:
    """``value`` if it is one of ``choices``."""
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a set
        ok = False
    if not ok:
        shown = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{store}: {name} must be one of {shown}, got {value!r}", argument=name)
    return value
