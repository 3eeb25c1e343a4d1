"""Find the stores and tables under an object-store URI (``s3://bucket/prefix``), read-only.

The local catalog (:mod:`persisting.ops.catalog`) walks directories; an object store has keys.
A table is a prefix ``<name>.lance/`` holding ``_versions/`` keys, or only an object-store WAL
(``<name>.lance/_persisting/wal/``, :mod:`persisting.engine.remote_wal`) when its writers died
before its first commit. A local WAL is on the writers' disks (a store's ``wal_dir``:
``<wal_dir>/<name>.wal``), so it is found only when that ``wal_dir`` is given. Tables are
grouped into stores by the same layout rules as local ones
(:func:`persisting.ops.catalog.group_stores`).

Other URI schemes (``gs://``, ``az://``, ``memory://``) cannot be listed here: their root must
be one table, opened directly by Lance.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import lance

from persisting.engine.commits import applied_lsn
from persisting.engine.lance_io import is_panic
from persisting.engine.objstore import ObjectStore
from persisting.errors import ConfigError, NotFoundError
from persisting.ops.catalog import StoreInfo, TableInfo, group_stores, has_wal_rows

__all__ = ["discover_remote", "remote_table_info"]

_VERSIONS = "/_versions/"
_OBJECT_WAL = "_persisting/wal/"


def _listable(uri: str) -> bool:
    return urlparse(uri).scheme in ("s3", "s3a")


def _table_of(name: str, marker: str) -> str | None:
    """The table prefix of key ``name`` that holds ``marker`` (``/_versions/``...): ``""``
    for the root itself, None when the key is in no ``<name>.lance/`` table."""
    at = ("/" + name).find(marker)
    if at == 0:
        return ""
    if at > 0 and name[: at - 1].endswith(".lance"):  # at counts the "/" put in front
        return name[: at - 1]
    return None


def _tables(root: str, storage_options: dict[str, str] | None) -> tuple[dict[str, int], set[str]]:
    """``({table uri: bytes stored}, {uri of a table that has only an object-store WAL})`` for
    every table at or under ``root`` (one listing)."""
    if not _listable(root):
        return {root: 0}, set()  # one table, opened (or refused) by Lance itself
    keys = ObjectStore(root, storage_options).list_sized()
    tables: set[str] = set()
    logs: set[str] = set()
    for name, _ in keys:
        for marker, into in ((_VERSIONS, tables), ("/" + _OBJECT_WAL, logs)):
            rel = _table_of(name, marker)
            if rel is not None:
                into.add(rel)
    sizes = {rel: 0 for rel in tables}
    for name, size in keys:
        for rel in tables:
            if not rel or name.startswith(rel + "/"):
                sizes[rel] += size

    def uri(rel: str) -> str:
        return root + "/" + rel if rel else root

    return {uri(rel): size for rel, size in sizes.items()}, {uri(rel) for rel in logs - tables}


def remote_table_info(uri: str, storage_options: dict[str, str] | None, wal_dir: str | None = None,
                      size: int = 0) -> TableInfo:
    """What the object store holds for one table (never opened for writing). ``wal_dir`` is
    the store's local WAL parent: this table's WAL is ``<wal_dir>/<name>.wal``."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".lance")
    table_wal = os.path.join(wal_dir, name + ".wal") if wal_dir is not None else None
    if table_wal is not None and not os.path.isdir(table_wal):
        table_wal = None
    committed = versions = version = lsn = 0
    columns: tuple[str, ...] = ()
    error = None
    try:
        ds = lance.dataset(uri, storage_options=storage_options)
        committed, versions, version = ds.count_rows(), len(ds.versions()), ds.version
        lsn, columns = applied_lsn(ds), tuple(ds.schema.names)
    except BaseException as exc:  # noqa: BLE001 - kept in TableInfo.error, reported by verify
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        error = f"{type(exc).__name__}: {exc}"
    return TableInfo(uri, name, table_wal, committed, 0, size, 0, versions, version, lsn, None, columns, error)


def _wal_only(root: str, tables: set[str], wal_dir: str | None) -> list[TableInfo]:
    """Tables of the store at ``root`` whose writers died before their first commit: only a
    WAL under ``wal_dir`` (``<name>.wal`` with segments) and no dataset on the object store."""
    if wal_dir is None or root.endswith(".lance") or not os.path.isdir(wal_dir):
        return []
    out = []
    for entry in sorted(os.listdir(wal_dir)):
        uri, d = f"{root}/{entry.removesuffix('.wal')}.lance", os.path.join(wal_dir, entry)
        if entry.endswith(".wal") and uri not in tables and has_wal_rows(d):
            out.append(_unborn(uri, d))
    return out


def _unborn(uri: str, table_wal: str | None) -> TableInfo:
    """A table whose writers died before its first commit: rows only in a WAL."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".lance")
    return TableInfo(uri, name, table_wal, 0, 0, 0, 0, 0, 0, 0, None, (), has_dataset=False)


def discover_remote(root: str, storage_options: dict[str, str] | None,
                    wal_dir: str | None = None) -> list[StoreInfo]:
    """The stores at or under the object-store URI ``root``, each with its tables.

    Raises NotFoundError when nothing there is a table, ConfigError for a root that is not a
    URI, and StorageError when the object store refuses the listing."""
    if "://" not in root or root.startswith("file://"):
        raise ConfigError(f"{root!r} is a local path: use persisting.ops.catalog.discover", argument="root")
    root = root.rstrip("/")
    found, logged = _tables(root, storage_options)
    infos = [remote_table_info(t, storage_options, wal_dir, size) for t, size in sorted(found.items())]
    infos += [_unborn(t, None) for t in sorted(logged)]  # only an object-store WAL
    infos += _wal_only(root, set(found) | logged, wal_dir)
    if not _listable(root) and infos and infos[0].error is not None:
        raise NotFoundError(f"{root} is not a table Lance can open ({infos[0].error}); only s3:// roots can be "
                            "listed for the stores under them: pass a table URI", path=root)
    if not infos:
        raise NotFoundError(f"{root} holds no Persisting tables (no <name>.lance/_versions/ keys under it, and no "
                            "WAL of one under wal_dir); check the bucket, prefix and storage_options", path=root)
    return group_stores(infos)
