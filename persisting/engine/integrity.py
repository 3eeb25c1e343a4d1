"""Digests of every committed Lance file, recorded at commit and checked on read and by verify.

Lance checksums nothing it stores, so a flipped byte in a string or integer column is served as
data. After each local commit has been made durable, :func:`fsync_and_record` hashes the new
immutable files (data, blob, deletion, index, transaction files and manifests) with xxh3-128
and writes one small record per commit under ``<dataset>/_persisting/digests/`` (fsynced after
Lance's files, so a power cut leaves at worst an unrecorded newest commit, never a record
naming a missing manifest). Lance ignores the directory (open, compaction, cleanup, checkout).

Readers call :func:`check_dataset` when they open a version: its manifest, data files and
deletion files are hashed once per process (files are immutable, cached by path and size).
A new blob file whose payloads carry xxh3-128 checksums (declared payload columns, or the
``X__xxh3`` rule) is not read back: its entry is a segmented digest built from those checksums
(:mod:`~persisting.engine.blob_digests`), checked by reading the file once, as strong as a
whole-file digest. Blob files (``data/<id>/*.blob``, payloads above Lance's inline size) are not hashed on read:
the stores that keep large payloads check an xxh3 per payload as they read it, and ``verify``
hashes every recorded file. Remote datasets record nothing: object stores checksum on their own.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import xxhash

from persisting.engine.blob_digests import SEGMENTED, check_segmented
from persisting.engine.durable import fsync_path, is_local, local_path
from persisting.errors import CorruptionError

if TYPE_CHECKING:
    import lance

    from persisting.engine.durable import DirectorySnapshot

__all__ = [
    "DIGEST_DIR",
    "Digest",
    "check_blob_files",
    "check_dataset",
    "check_file",
    "fsync_and_record",
    "load",
    "manifest_version",
    "prune",
    "record",
]

DIGEST_DIR = os.path.join("_persisting", "digests")
_IMMUTABLE_DIRS = ("data/", "_deletions/", "_indices/", "_transactions/")
_CHUNK = 8 << 20
_U64 = (1 << 64) - 1

Digest = tuple[int, str]  # (size in bytes, xxh3-128 hex digest)

log = logging.getLogger(__name__)
_lock = threading.Lock()
_records: dict[str, dict[str, dict[str, Digest]]] = {}  # root -> record file name -> entries
_verified: set[tuple[str, int]] = set()  # (absolute path, size) hashed and found good


def forget() -> None:
    """Drop this process's caches of parsed records and verified files (another process's view)."""
    with _lock:
        _records.clear()
        _verified.clear()


def is_immutable(rel: str) -> bool:
    """Files Lance never rewrites: everything but the version hint (and our own sidecar).
    Temporary names (``.tmpXXXX``, ``N.manifest#k``) are another writer's commit in progress."""
    base = os.path.basename(rel)
    if base.startswith(".") or "#" in base:
        return False
    if rel.startswith(_IMMUTABLE_DIRS):
        return True
    return rel.startswith("_versions/") and rel.endswith(".manifest")


def manifest_version(rel: str) -> int | None:
    """The version of ``_versions/N.manifest`` (Lance's V2 names count down from 2**64-1)."""
    if not (rel.startswith("_versions/") and rel.endswith(".manifest")):
        return None
    try:
        n = int(os.path.basename(rel).removesuffix(".manifest"))
    except ValueError:
        return None
    return _U64 - n if n > (1 << 63) else n


def digest_file(path: str) -> Digest:
    """(size, xxh3-128 hex) of one file, read in 8 MiB pieces."""
    h = xxhash.xxh3_128()
    size = 0
    with open(path, "rb", buffering=0) as f:
        # a buffer no larger than the file: most data files are far below the chunk size, and
        # zeroing 8 MiB for each one cost more than hashing it (0.6 ms per small file)
        buf = bytearray(max(1, min(_CHUNK, os.fstat(f.fileno()).st_size + 1)))
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return size, h.hexdigest()


def _write_durable(path: str, body: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(os.path.dirname(path))


def _encode(entries: dict[str, Digest]) -> bytes:
    files = {k: list(v) for k, v in sorted(entries.items())}
    body = json.dumps(files, separators=(",", ":"), sort_keys=True)
    return json.dumps({"format": 1, "check": xxhash.xxh3_64_hexdigest(body.encode()), "files": files},
                      separators=(",", ":"), sort_keys=True).encode()


def _decode(path: str, raw: bytes) -> dict[str, Digest]:
    try:
        doc = json.loads(raw)
        if set(doc) != {"check", "files", "format"} or doc["format"] != 1:
            raise ValueError(f"unexpected header {sorted(doc)!r}")
        files = doc["files"]
        body = json.dumps(files, separators=(",", ":"), sort_keys=True)
        if doc.get("check") != xxhash.xxh3_64_hexdigest(body.encode()):
            raise ValueError("its own checksum does not match")
        return {str(k): (int(v[0]), str(v[1])) for k, v in files.items()}
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CorruptionError(
            f"digest record {path} is damaged ({exc}); the table's files cannot be verified: "
            "restore it from a backup, or delete it to serve the files unverified", path=path) from exc


def record(
    root: str, new_files: Sequence[str], removed: Iterable[str] = (), known: Mapping[str, Digest] | None = None
) -> str | None:
    """Hash the immutable files among ``new_files`` (relative to the dataset ``root``, already
    durable) and write them as one record; drop records of ``removed`` files. ``known`` gives
    digests the writer already has (segmented digests of blob files, see
    :mod:`~persisting.engine.blob_digests`): those files are not read back. Returns the
    record's path (None when there was nothing to record)."""
    entries: dict[str, Digest] = {}
    known = known or {}
    for rel in new_files:
        path = os.path.join(root, rel)
        if not is_immutable(rel):
            continue
        if rel in known:
            entries[rel] = known[rel]
        elif os.path.isfile(path):
            entries[rel] = digest_file(path)
    gone = [r for r in removed if is_immutable(r)]
    if gone:
        try:
            prune(root, gone)
        except OSError as exc:  # stale entries only cost a later prune; the new record matters more
            log.warning("could not prune digest records of %s: %s", root, exc)
    if not entries:
        return None
    versions = [v for v in (manifest_version(r) for r in entries) if v is not None]
    directory = os.path.join(root, DIGEST_DIR)
    if not os.path.isdir(directory):
        os.makedirs(directory, exist_ok=True)
        fsync_path(os.path.dirname(directory))
        fsync_path(root)
    name = f"{max(versions, default=0):020d}-{uuid.uuid4().hex[:12]}.json"
    path = os.path.join(directory, name)
    _write_durable(path, _encode(entries))
    with _lock:
        _records.setdefault(os.path.abspath(root), {})[name] = entries
        _verified.update((os.path.abspath(os.path.join(root, r)), d[0]) for r, d in entries.items())
    return path


def fsync_and_record(
    snapshot: DirectorySnapshot, known: Callable[[Sequence[str]], Mapping[str, Digest]] | None = None
) -> list[str]:
    """Make what a commit wrote durable (data first, manifest last), then record its digests
    and forget the files the commit removed (cleanup). ``known(new_files)`` returns digests the
    writer already knows (not read back). Returns the new files."""
    before = snapshot.names
    snapshot.fsync_new_files()
    new_files = sorted(n for n in snapshot.names - before if not n.endswith("/"))
    removed = sorted(n for n in before - snapshot.names if not n.endswith("/"))
    try:
        record(snapshot.root, new_files, removed, known(new_files) if known is not None else None)
    except OSError as exc:
        # the commit itself is durable and must stand (raising here would commit the rows
        # twice on retry); it stays unverified, as after a power cut, and verify reports it
        log.warning("could not record digests of the commit to %s: %s", snapshot.root, exc)
    return new_files


def prune(root: str, removed: Iterable[str]) -> None:
    """Drop entries of ``removed`` files and merge all records into one (cleanup only)."""
    gone = set(removed)
    directory = os.path.join(root, DIGEST_DIR)
    if not gone or not os.path.isdir(directory):
        return
    names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    merged: dict[str, Digest] = {}
    for n in names:
        try:
            with open(os.path.join(directory, n), "rb") as f:
                merged.update(_decode(os.path.join(directory, n), f.read()))
        except FileNotFoundError:
            continue  # merged away by another writer's concurrent prune: its merge keeps the entries
    kept = {k: v for k, v in merged.items() if k not in gone}
    if kept:
        versions = [v for v in (manifest_version(r) for r in kept) if v is not None]
        new = f"{max(versions, default=0):020d}-{uuid.uuid4().hex[:12]}.json"
        _write_durable(os.path.join(directory, new), _encode(kept))
    for n in names:
        try:
            os.unlink(os.path.join(directory, n))
        except FileNotFoundError:
            pass  # another writer's prune removed it first
    fsync_path(directory)
    with _lock:
        _records.pop(os.path.abspath(root), None)


def load(root: str) -> dict[str, Digest] | None:
    """Every recorded digest of the dataset at ``root`` (None when it records none: remote,
    or written before digests existed). Record files are parsed once per process."""
    directory = os.path.join(root, DIGEST_DIR)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except FileNotFoundError:
        return None
    key = os.path.abspath(root)
    with _lock:
        cache = dict(_records.get(key, {}))
    fresh: dict[str, dict[str, Digest]] = {}
    for n in names:
        if n in cache:
            fresh[n] = cache[n]
            continue
        path = os.path.join(directory, n)
        try:
            with open(path, "rb") as f:
                fresh[n] = _decode(path, f.read())
        except FileNotFoundError:
            continue  # merged away by a concurrent cleanup; its entries live on in the merge
    with _lock:
        _records[key] = fresh
    out: dict[str, Digest] = {}
    for entries in fresh.values():
        out.update(entries)
    return out


def check_file(root: str, rel: str, expected: Digest, *, cache: bool = True) -> str | None:
    """None if the file has its recorded size and digest, else what is wrong with it."""
    path = os.path.abspath(os.path.join(root, rel))
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return f"file {path} is missing"
    if cache:
        with _lock:
            if (path, size) in _verified:
                return None
    if size != expected[0]:
        return f"file {path} has {size} bytes, {expected[0]} were committed (truncated or overwritten)"
    if expected[1].startswith(SEGMENTED):
        if not check_segmented(path, expected[1]):
            return f"file {path} fails its xxh3-128 payload digests: its bytes changed after commit"
    elif digest_file(path)[1] != expected[1]:
        return f"file {path} fails its xxh3-128 digest: its bytes changed after commit"
    if cache:
        with _lock:
            _verified.add((path, size))
    return None


def version_files(ds: lance.LanceDataset) -> list[str]:
    """Files (relative to the dataset root) that reading this version touches, blobs aside."""
    out = []
    for frag in ds.get_fragments():
        meta = frag.metadata
        out.extend("data/" + f.path for f in meta.files)
        if meta.deletion_file is not None:
            out.append(meta.deletion_file.path(meta.id))
    return out


def _recorded(uri: str, ds: lance.LanceDataset | None) -> tuple[str, dict[str, Digest]] | None:
    """(local root, recorded digests) of an opened local dataset that records any; else None."""
    if ds is None or not is_local(uri):
        return None
    root = local_path(uri)
    recorded = load(root)
    return (root, recorded) if recorded else None


def check_dataset(uri: str, ds: lance.LanceDataset | None) -> None:
    """Raise CorruptionError if a file the opened version reads fails its recorded digest, or a
    recorded manifest newer than this version is gone (the newest commit was lost)."""
    found = _recorded(uri, ds)
    if found is None:
        return
    root, recorded = found
    version = ds.version
    mine: list[str] = []
    for rel in recorded:
        v = manifest_version(rel)
        if v is None:
            continue
        if v == version:
            mine.append(rel)
        elif v > version and not os.path.exists(os.path.join(root, rel)):
            raise CorruptionError(
                f"table {uri}: the manifest for version {v} is missing ({rel}), but version {v} was "
                f"committed; opening would silently serve version {version}. Restore the file from a backup",
                path=os.path.join(root, rel), version=v)
    for rel in mine + version_files(ds):
        expected = recorded.get(rel)
        if expected is None:
            continue  # committed before digests, or the newest commit's record was cut by a crash
        problem = check_file(root, rel, expected)
        if problem is not None and not os.path.exists(os.path.join(root, rel)) and _moved_on(ds):
            continue  # a writer committed since and its cleanup removed this version: not damage
        if problem is not None:
            raise CorruptionError(f"table {uri}: {problem}; restore it from a backup or drop the table",
                                  path=os.path.join(root, rel))


def _moved_on(ds: lance.LanceDataset) -> bool:
    try:
        return bool(ds.latest_version > ds.version)
    except Exception:  # noqa: BLE001 - cannot tell: treat the missing file as damage
        return False


def check_blob_files(uri: str, ds: lance.LanceDataset | None) -> None:
    """Raise CorruptionError if a blob file of this version fails its digest. Called before
    blob bytes are served by reads that have no per-payload checksum of their own (once per
    file and process); the streaming path (``open_blobs``) leaves it to the stores' payload
    checksums, so a KV hit or a checkpoint load never hashes more than it reads."""
    found = _recorded(uri, ds)
    if found is None:
        return
    root, recorded = found
    stems = tuple("data/" + f.path.removesuffix(".lance") + "/" for frag in ds.get_fragments()
                  for f in frag.metadata.files)
    for rel in sorted(recorded):
        if rel.startswith(stems):
            problem = check_file(root, rel, recorded[rel])
            if problem is not None:
                raise CorruptionError(f"table {uri}: {problem}; restore it from a backup or drop the table",
                                      path=os.path.join(root, rel))


def describe(recorded: dict[str, Any] | None) -> str:
    """A short summary for inspect: how many files carry digests."""
    return "none (remote or written before digests)" if not recorded else f"{len(recorded)} files"
