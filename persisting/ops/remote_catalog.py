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
from dataclasses import dataclass, replace
from urllib.parse import urlparse

import lance

from persisting.engine.commits import applied_lsn
from persisting.engine.lance_io import is_panic
from persisting.engine.objstore import ObjectStore
from persisting.errors import ConfigError, NotFoundError
from persisting.ops.catalog import StoreInfo, TableInfo, group_stores, has_wal_rows, open_table, wal_size

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


@dataclass(frozen=True)
class _Listed:
    """What one listing says of a table prefix: bytes of its dataset and of its object-store
    WAL, and the newest key's time."""

    size: int = 0
    wal_bytes: int = 0
    last_write: float | None = None

    def add(self, size: int, when: float, wal: bool) -> _Listed:
        last = when if self.last_write is None else max(self.last_write, when)
        if wal:
            return _Listed(self.size, self.wal_bytes + size, last)
        return _Listed(self.size + size, self.wal_bytes, last)


def _tables(root: str, storage_options: dict[str, str] | None) -> tuple[dict[str, _Listed], dict[str, _Listed]]:
    """``({table uri: what is stored}, {uri of a table with only an object-store WAL: ...})``
    for every table at or under ``root`` (one listing)."""
    if not _listable(root):
        return {root: _Listed()}, {}  # one table, opened (or refused) by Lance itself
    keys = ObjectStore(root, storage_options).list_meta()
    tables: set[str] = set()
    logs: set[str] = set()
    for name, _, _ in keys:
        for marker, into in ((_VERSIONS, tables), ("/" + _OBJECT_WAL, logs)):
            rel = _table_of(name, marker)
            if rel is not None:
                into.add(rel)
    listed = {rel: _Listed() for rel in tables | logs}
    for name, size, when in keys:
        for rel in listed:
            if not rel or name.startswith(rel + "/"):
                listed[rel] = listed[rel].add(size, when, name.startswith(rel + "/" + _OBJECT_WAL if rel else _OBJECT_WAL))

    def uri(rel: str) -> str:
        return root + "/" + rel if rel else root

    return ({uri(rel): listed[rel] for rel in tables},
            {uri(rel): listed[rel] for rel in logs - tables})


def remote_table_info(uri: str, storage_options: dict[str, str] | None, wal_dir: str | None = None,
                      size: int = 0, *, wal_rows: bool = False, listed: _Listed | None = None) -> TableInfo:
    """What the object store holds for one table (never opened for writing). ``wal_dir`` is
    the store's local WAL parent: this table's WAL is ``<wal_dir>/<name>.wal``. ``wal_rows``
    also counts rows still only in a WAL (local or object-store), replayed read-only."""
    listed = listed or _Listed(size)
    name = _name(uri)
    table_wal = _table_wal(name, wal_dir)
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
    info = TableInfo(uri, name, table_wal, committed, 0, listed.size, listed.wal_bytes + wal_size(table_wal)[0],
                     versions, version, lsn, listed.last_write, columns, error)
    return _replayed(info, storage_options) if wal_rows and error is None else info


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".lance")


def _table_wal(name: str, wal_dir: str | None) -> str | None:
    table_wal = os.path.join(wal_dir, name + ".wal") if wal_dir is not None else None
    return table_wal if table_wal is not None and os.path.isdir(table_wal) else None


def _replayed(info: TableInfo, storage_options: dict[str, str] | None) -> TableInfo:
    """``info`` with the rows its WALs hold above what is committed (and, for a table not yet
    committed, their columns), read the way a read-only handle reads them."""
    try:
        with open_table(info, storage_options) as table:
            stats, schema = table.stats(), table.schema
    except BaseException as exc:  # noqa: BLE001 - a WAL that cannot be replayed is shown, as locally
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        return replace(info, error=f"{type(exc).__name__}: {exc}")
    columns = info.columns or (tuple(schema.names) if schema is not None else ())
    return replace(info, pending_rows=int(stats["buffered_rows"]), columns=columns)


def _wal_only(root: str, tables: set[str], wal_dir: str | None) -> list[TableInfo]:
    """Tables of the store at ``root`` whose writers died before their first commit: only a
    WAL under ``wal_dir`` (``<name>.wal`` with segments) and no dataset on the object store."""
    if wal_dir is None or root.endswith(".lance") or not os.path.isdir(wal_dir):
        return []
    out = []
    names = {_name(t) for t in tables}  # a WAL of a table found anywhere under root is that table's
    for entry in sorted(os.listdir(wal_dir)):
        uri, d = f"{root}/{entry.removesuffix('.wal')}.lance", os.path.join(wal_dir, entry)
        if entry.endswith(".wal") and entry.removesuffix(".wal") not in names and has_wal_rows(d):
            out.append(_unborn(uri, d, _Listed(0, *wal_size(d))))
    return out


def _unborn(uri: str, table_wal: str | None, listed: _Listed) -> TableInfo:
    """A table whose writers died before its first commit: rows only in a WAL."""
    return TableInfo(uri, _name(uri), table_wal, 0, 0, 0, listed.wal_bytes, 0, 0, 0, listed.last_write, (),
                     has_dataset=False)


def discover_remote(root: str, storage_options: dict[str, str] | None,
                    wal_dir: str | None = None, *, wal_rows: bool = True) -> list[StoreInfo]:
    """The stores at or under the object-store URI ``root``, each with its tables.

    ``wal_dir`` is the local WAL directory the stores' writers were given (their local WALs
    are found only there); ``wal_rows`` counts rows still only in a WAL (local or object-store)
    as pending, replayed read-only (as :func:`persisting.ops.catalog.discover` does).
    Raises NotFoundError when nothing there is a table, ConfigError for a root that is not a
    URI, and StorageError when the object store refuses the listing."""
    if "://" not in root or root.startswith("file://"):
        raise ConfigError(f"{root!r} is a local path: use persisting.ops.catalog.discover", argument="root")
    root = root.rstrip("/")
    found, logged = _tables(root, storage_options)
    infos = [remote_table_info(t, storage_options, wal_dir, wal_rows=wal_rows, listed=listed)
             for t, listed in sorted(found.items())]
    infos += [_unborn(t, _table_wal(_name(t), wal_dir), listed) for t, listed in sorted(logged.items())]
    infos += _wal_only(root, set(found) | set(logged), wal_dir)
    if not _listable(root) and infos and infos[0].error is not None:
        raise NotFoundError(f"{root} is not a table Lance can open ({infos[0].error}); only s3:// roots can be "
                            "listed for the stores under them: pass a table URI", path=root)
    if not infos:
        raise NotFoundError(f"{root} holds no Persisting tables (no <name>.lance/_versions/ keys under it, and no "
                            "WAL of one under wal_dir); check the bucket, prefix and storage_options", path=root)
    if wal_rows:
        infos = [_replayed(t, storage_options) if not t.has_dataset else t for t in infos]
    return group_stores(infos)
