"""ParamStore: versioned, deduplicated, crash-safe checkpoints for training loops.

A store is a directory (or object-store prefix) with two engine tables: ``chunks.lance``
(content-addressed tensor chunks, see :mod:`persisting.params.chunks`) and
``checkpoints.lance`` (one manifest row per checkpoint, see :mod:`persisting.params.manifest`).
``save`` writes the new chunks, commits them durably, and only then commits the manifest row:
a crash at any point leaves earlier checkpoints intact and the partial one invisible; its
chunks are orphans that :meth:`ParamStore.gc` reclaims. Nothing is pickled: the state tree is
JSON with tensors by reference (:mod:`persisting.params.tree`). A local store also keeps
``checkpoints.head.json`` (:mod:`persisting.params.head`), so a lost newest manifest raises
CorruptionError on open instead of silently rolling the store back a checkpoint.

Many processes may open one store: every writer appends its own chunks to the shared chunk
table, and a checkpoint appears when its manifest row commits, after every chunk it references
is durable and present (a multi-rank DCP save: each rank writes its chunks, the coordinator
commits the row, see :mod:`persisting.params.dcp`). Readers (evaluation jobs) pick up new
checkpoints on their own (``list``/``latest``/``load`` check the table version, ~10 us) and
never see a partial one. Not guarded: a ``gc`` in one process while another process is between
writing its chunks and committing its manifest can remove those chunks; that save then fails
(its manifest is not committed) rather than leave a checkpoint with missing chunks.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from persisting.engine.shell import StoreShell, check_int
from persisting.engine.codec import checksum, dtype_name, raw_view
from persisting.engine.names import check_name
from persisting.engine.options import TableOptions
from persisting.engine.table import Table
from persisting.errors import (
    AlreadyExistsError,
    CorruptionError,
    InvalidRecordError,
    NotFoundError,
    StorageError,
)
from persisting.params import manifest as mf
from persisting.params.chunks import ChunkTable
from persisting.params.head import HEAD_NAME, Head, check_head, read_head, write_head
from persisting.params.manifest import CheckpointInfo, Manifest, TensorEntry
from persisting.params.materialize import materialize, snapshot_tensor
from persisting.params.tree import (
    NUMPY_SCALAR,
    TORCH,
    Stored,
    TensorRef,
    decode_tree,
    encode_plain,
    encode_tree,
    is_dict_node,
    match_tensors,
    select,
    top_level,
    tree_tensor_indices,
)

__all__ = ["DEFAULT_CHUNK_BYTES", "GCReport", "ParamStore"]

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
# chunks per Lance commit: pending chunks are the caller's own tensor memory (no copy), so a
# larger unit costs no memory, and each commit costs a Lance write, fsyncs and a manifest (a
# 512 MiB save: 0.46 s in two commits of 256 MiB, 0.36 s in one)
DEFAULT_COMMIT_BYTES = 1024 * 1024 * 1024
Keys = str | Sequence[str]


@dataclass(frozen=True)
class GCReport:
    """What :meth:`ParamStore.gc` reclaimed: unreferenced chunks and the disk bytes freed."""

    chunks_removed: int
    bytes_removed: int
    bytes_freed: int


@dataclass(frozen=True)
class _Prepared:
    step: int
    tags: tuple[str, ...]
    metadata: Any
    tree: Any
    tensors: tuple[TensorRef, ...]


class ParamStore:
    """Versioned checkpoints of training state (model, optimizer, RNG, step...).

    ``keep_last`` keeps that many newest untagged checkpoints after each save (tagged ones and
    the newest are never deleted by retention). ``storage_options`` go to Lance for object
    stores; a remote ``path`` also needs ``wal_dir``, a local directory for the writer locks.
    ``chunk_bytes`` is the dedup granularity. Any number of processes may open a store; give
    each checkpoint step one committer (the DCP coordinator, or one trainer).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keep_last: int | None = None,
        storage_options: dict[str, str] | None = None,
        wal_dir: str | os.PathLike[str] | None = None,
        read_only: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        commit_bytes: int = DEFAULT_COMMIT_BYTES,
    ) -> None:
        self._shell = StoreShell("ParamStore", path, read_only=read_only, wal_dir=wal_dir)
        where = str(self._shell)
        self.keep_last = check_int("keep_last", keep_last, store=where, minimum=1, optional=True)
        self.chunk_bytes = check_int("chunk_bytes", chunk_bytes, store=where, minimum=1)
        check_int("commit_bytes", commit_bytes, store=where, minimum=1)
        self.path = self._shell.path
        self.read_only = self._shell.read_only
        root = self.path.rstrip("/")
        self._shell.make_root()
        # read before the table opens: a live writer can then only move the table past it
        self._head_path = os.path.join(root, HEAD_NAME) if "://" not in root else None
        head = read_head(self._head_path) if self._head_path is not None else None
        self._lock = threading.RLock()  # held by every write and read of the tables
        self._submit_lock = threading.Lock()  # guards _inflight, so save_async never waits on a write
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: dict[int, Future[CheckpointInfo]] = {}
        self._staging: dict[tuple[Any, tuple[int, ...]], list[Any]] = {}  # reusable snapshot buffers
        self._counts = {"saves": 0, "loads": 0, "bytes_written": 0, "chunks_written": 0,
                        "bytes_deduplicated": 0, "bytes_read": 0, "chunks_read": 0}
        self._chunks = ChunkTable(
            self._shell.table_uri("chunks"), storage_options=storage_options,
            wal_dir=self._shell.table_wal_dir("chunks"),
            read_only=read_only, commit_bytes=commit_bytes,
        )
        try:
            self._manifests = Table(
                self._shell.table_uri("checkpoints"),
                options=TableOptions(durability="none", compact_fragments=32),
                schema=mf.SCHEMA, storage_options=storage_options,
                wal_dir=self._shell.table_wal_dir("checkpoints"),
                read_only=read_only, store="params", name="checkpoints", exclusive=False, follow=False,
            )
        except BaseException:
            self._chunks.close()
            raise
        try:
            self._infos_version = self._manifests.version
            self._infos = self._read_infos()
            if self._head_path is not None:
                check_head(head, path=self._head_path, table=root + "/checkpoints.lance",
                           version=self._manifests.version, steps=list(self._infos))
        except BaseException:
            self._chunks.close()
            self._manifests.close()
            raise

    # -- reading the manifest table ---------------------------------------------------------
    def _read_infos(self) -> dict[int, CheckpointInfo]:
        t = self._manifests.scan(columns=mf.INFO_COLUMNS)
        return {i.step: i for i in (mf.info_from_row(r, _decode_plain) for r in t.to_pylist())}

    def _sync_infos(self) -> None:
        """Pick up checkpoints other processes committed or deleted (a version check)."""
        self._manifests.refresh()
        if self._manifests.version != self._infos_version:
            self._infos_version = self._manifests.version
            self._infos = self._read_infos()

    def refresh(self) -> None:
        """See every checkpoint committed by any process up to now (reads do this themselves)."""
        with self._lock:
            self._check_open()
            self._sync_infos()

    def _manifest(self, step: int) -> Manifest:
        t = self._manifests.scan(columns=["manifest"], filter=f"step = {int(step)}")
        if t.num_rows == 0:
            raise NotFoundError(f"checkpoint step {step} has no manifest in {self.path}", step=step)
        try:
            return Manifest.loads(t.column("manifest")[0].as_py())
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptionError(f"manifest of step {step} in {self.path} cannot be read: {exc}", step=step) from exc

    def _resolve(self, step: int | None, tag: str | None) -> CheckpointInfo:
        self._sync_infos()
        if tag is not None:
            check_name(tag, what="tag")
            tagged = [i for i in self._infos.values() if tag in i.tags and (step is None or i.step == step)]
            if not tagged:
                raise NotFoundError(f"no checkpoint in {self.path} has tag {tag!r}", tag=tag)
            return max(tagged, key=lambda i: i.step)
        if step is None:
            if not self._infos:
                raise NotFoundError(f"{self.path} holds no checkpoint yet; save one first", step=None)
            return self._infos[max(self._infos)]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or int(step) not in self._infos:
            have = sorted(self._infos)
            raise NotFoundError(
                f"{self.path} has no checkpoint at step {step!r}; steps stored: {have[-10:]}", step=step
            )
        return self._infos[int(step)]

    # -- public API ----------------------------------------------------------------------------
    def list(self) -> list[CheckpointInfo]:
        """Every complete checkpoint, oldest step first."""
        with self._lock:
            self._check_open()
            self._sync_infos()
            return [self._infos[s] for s in sorted(self._infos)]

    def info(self, step: int | None = None, *, tag: str | None = None) -> CheckpointInfo:
        """The checkpoint at ``step`` (newest by default, or the newest with ``tag``)."""
        with self._lock:
            self._check_open()
            return self._resolve(step, tag)

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint, or None when there is none."""
        with self._lock:
            self._check_open()
            self._sync_infos()
            return self._infos[max(self._infos)] if self._infos else None

    def save(
        self, state: Any, *, step: int, tags: Iterable[str] = (), metadata: Mapping[str, Any] | None = None
    ) -> CheckpointInfo:
        """Store ``state`` as checkpoint ``step``; it is visible once this returns, and durable.

        Bad input (an unsupported value, a key neither str nor int, a bad tag, a step that
        exists) raises before anything is written.
        """
        prepared = self._prepare(state, step, tags, metadata)
        with self._lock:
            return self._write(prepared)

    def save_async(
        self, state: Any, *, step: int, tags: Iterable[str] = (), metadata: Mapping[str, Any] | None = None
    ) -> Future[CheckpointInfo]:
        """Like :meth:`save`, but only validates and copies the tensors before returning; the
        write happens on a background thread. The caller may change its tensors at once."""
        prepared = self._prepare(state, step, tags, metadata)  # validation, outside the write lock
        with self._submit_lock:
            staging, self._staging = self._staging, {}
        snapshot = replace(prepared, tensors=tuple(snapshot_tensor(r, staging) for r in prepared.tensors))
        with self._submit_lock:
            self._check_new_step(snapshot.step)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="persisting-params-save")
            future = self._executor.submit(self._write_locked, snapshot)
            self._inflight[snapshot.step] = future
        future.add_done_callback(functools.partial(self._settled, snapshot.step))
        return future

    def _settled(self, step: int, _future: Future[CheckpointInfo]) -> None:
        with self._submit_lock:
            self._inflight.pop(step, None)

    def wait(self) -> None:
        """Block until every :meth:`save_async` has finished (errors stay on their futures)."""
        for f in list(self._inflight.values()):
            f.exception()

    def load(
        self, step: int | None = None, *, tag: str | None = None, keys: Keys | None = None, into: Any = None
    ) -> Any:
        """The state saved at ``step`` (newest by default, or newest with ``tag``).

        ``keys`` (a dotted prefix such as ``"model"`` or a glob such as ``"model.*.weight"``, or a
        list of them) returns only matching parts and reads only their chunks. Every chunk is
        checked against its checksum; a corrupt one raises CorruptionError.

        ``into`` (a state shaped like the saved one, e.g. the live ``{"model": ..., "optim": ...}``)
        lends its CPU tensors: a stored tensor whose position (key by key: ``"a.b"`` and nested
        ``a -> b`` are different places), dtype and shape match one of them is read straight
        into it (no new allocation) and that tensor is returned in its place. If a chunk turns
        out corrupt, those tensors may be left partly overwritten. (``keys`` match dotted paths,
        so ``"a.b"`` selects both of those places.)
        """
        with self._lock:
            self._check_open()
            info = self._resolve(step, tag)
            m = self._manifest(info.step)
            tree = m.tree if keys is None else select(m.tree, keys)
            wanted = sorted(set(tree_tensor_indices(tree)))
            dest = match_tensors(tree, into, _is_torch) if into is not None else {}
            self._chunks.ensure(k for i in wanted for k in m.tensors[i].chunks)
            values = materialize(self._chunks, {i: m.tensors[i] for i in wanted}, info.step, dest, self._counts)
            self._counts["loads"] += 1
        return decode_tree(tree, values.__getitem__)

    def load_into(
        self, module: Any, step: int | None = None, *, tag: str | None = None, key: str | None = None,
        strict: bool = True,
    ) -> Any:
        """Load a model's weights into ``module`` (``load_state_dict``). ``key`` names the part of
        the state that is the model's state dict; by default ``"model"`` if the checkpoint has
        one, else the whole state. Returns what ``load_state_dict`` returns."""
        with self._lock:
            self._check_open()
            info = self._resolve(step, tag)
            if key is None:
                top = top_level(self._manifest(info.step).tree)
                key = "model" if "model" in top and is_dict_node(top["model"]) else None
            # read straight into the module's own tensors; load_state_dict then copies nothing
            own = module.state_dict()
            state = self.load(info.step, keys=key, into=own if key is None else _nest(key, own))
        if key is not None:
            for part in key.split("."):
                state = state[part] if part in state else state[int(part)]
        return module.load_state_dict(state, strict=strict)

    def delete(self, step: int) -> None:
        """Remove checkpoint ``step`` (its unshared chunks go at the next :meth:`gc`)."""
        with self._lock:
            self._check_writable()
            info = self._resolve(step, None)
            self._manifests.delete_in("step", [info.step])
            del self._infos[info.step]
            self._record_head()

    def gc(self, *, compact: bool = False) -> GCReport:
        """Delete chunks no checkpoint references (orphans of crashed saves, chunks of deleted
        checkpoints) and free their disk space. Waits for running saves.

        Fragments left wholly dead are freed at once; ``compact=True`` also rewrites fragments
        that are only partly dead (it copies their live chunks, so it costs I/O).
        """
        with self._lock:
            self._check_writable()
            self._sync_infos()
            referenced: set[str] = set()
            for text in self._manifests.scan(columns=["manifest"]).column("manifest").to_pylist():
                referenced |= Manifest.loads(text).chunk_keys()
            removed, removed_bytes = self._chunks.remove_unreferenced(referenced)
            freed = self._chunks.reclaim(compact=compact) if removed or compact else 0
            return GCReport(removed, removed_bytes, freed)

    def export_safetensors(
        self, step: int | None, path: str | os.PathLike[str], *, tag: str | None = None, keys: Keys | None = None,
        strip_prefix: str | None = None,
    ) -> None:
        """Write checkpoint ``step`` as a safetensors file (flat dotted names); ``keys`` selects
        parts, ``strip_prefix`` drops a name prefix for Hugging Face (see safetensors_io)."""
        from persisting.params.safetensors_io import export_safetensors

        export_safetensors(self, step, os.fspath(path), tag=tag, keys=keys, strip_prefix=strip_prefix)

    def import_safetensors(
        self, path: str | os.PathLike[str], *, step: int, tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Store a safetensors file as checkpoint ``step``."""
        from persisting.params.safetensors_io import import_safetensors

        return import_safetensors(self, os.fspath(path), step=step, tags=tags, metadata=metadata)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "path": self.path,
                "checkpoints": len(self._infos),
                "chunks": len(self._chunks),
                "chunk_bytes_stored": self._chunks.stored_bytes,
                **self._counts,
            }

    def close(self) -> None:
        """Finish running saves, then close both tables; idempotent."""
        if self._shell.closed:
            return
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        with self._lock:
            if not self._shell.mark_closed():
                return
            try:
                self._chunks.close()
            finally:
                self._manifests.close()

    def __enter__(self) -> ParamStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ParamStore({self.path!r}, checkpoints={len(self._infos)})"

    # -- writing ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        self._shell.check_open()

    def _check_writable(self) -> None:
        self._shell.check_writable()

    def _prepare(
        self, state: Any, step: int, tags: Iterable[str], metadata: Mapping[str, Any] | None, *,
        allow_stored: bool = False,
    ) -> _Prepared:
        self._check_writable()
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise InvalidRecordError(f"step must be an int >= 0, got {step!r}", step=step)
        step = int(step)
        if isinstance(tags, str):
            tags = (tags,)
        tag_tuple = tuple(check_name(t, what="tag") for t in tags)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidRecordError(f"metadata must be a dict, got {type(metadata).__name__}")
        meta_tree = encode_plain(dict(metadata or {}), what="metadata")
        tree, tensors = encode_tree(state, allow_stored=allow_stored)
        for ref in tensors:
            if isinstance(ref.value, Stored):
                continue
            value = np.asarray(ref.value) if ref.kind == NUMPY_SCALAR else ref.value
            dtype_name(value)  # unsupported dtypes fail here, before any byte is written
        self._check_new_step(step)
        return _Prepared(step, tag_tuple, meta_tree, tree, tuple(tensors))

    def _check_new_step(self, step: int) -> None:
        if step in self._infos or step in self._inflight:
            raise AlreadyExistsError(
                f"{self.path} already holds a checkpoint at step {step}; delete it first or use another step",
                step=step,
            )

    def _write_locked(self, p: _Prepared) -> CheckpointInfo:
        with self._lock:
            info = self._write(p)
        # the write is committed, nothing references the snapshot now: keep its buffers for the
        # next save_async, whose copy then lands in memory that is already mapped (page faults
        # on fresh memory cost more than the copy itself)
        staging: dict[tuple[Any, tuple[int, ...]], list[Any]] = {}
        for ref in p.tensors:
            if ref.kind == TORCH and ref.value.device.type == "cpu":
                staging.setdefault((ref.value.dtype, tuple(ref.value.shape)), []).append(ref.value)
        with self._submit_lock:
            self._staging = staging
        return info

    def _save_stored(
        self, state: Any, *, step: int, tags: Iterable[str] = (), metadata: Mapping[str, Any] | None = None
    ) -> CheckpointInfo:
        """Commit a checkpoint whose tensors are :class:`Stored` placeholders (chunks other
        ranks already wrote, see :meth:`_store_tensors`) or plain tensors."""
        prepared = self._prepare(state, step, tags, metadata, allow_stored=True)
        with self._lock:
            return self._write(prepared)

    def _store_tensors(self, refs: Sequence[TensorRef]) -> list[tuple[TensorEntry, int, int]]:
        """Write the chunks of ``refs`` durably; return (entry, new chunks, new bytes) for each.
        A :class:`Stored` value (written earlier, maybe by another process) passes through."""
        with self._lock:
            self._check_writable()
            self._chunks.sync()  # dedup against what is stored now, not a stale view
            out: list[tuple[TensorEntry, int, int]] = []
            try:
                for ref in refs:
                    if isinstance(ref.value, Stored):
                        v = ref.value
                        out.append((replace(v.entry, name=ref.name, kind=v.kind), v.new_chunks, v.new_bytes))
                        continue
                    value = np.asarray(ref.value) if ref.kind == NUMPY_SCALAR else ref.value
                    raw, dtype, shape = raw_view(value)
                    put = self._chunks.put(raw, self.chunk_bytes)
                    digest = checksum("".join(put.hashes).encode()).hex()  # over the chunk keys: no second pass
                    entry = TensorEntry(ref.name, ref.kind, dtype, shape, raw.nbytes, digest, put.hashes)
                    out.append((entry, put.new_chunks, put.new_bytes))
                self._chunks.commit()  # every chunk durable before any manifest row refers to it
            except BaseException:
                # the pending chunks point into the caller's tensors, which training goes on
                # changing: a later commit would store those bytes under the old content keys,
                # and a later save deduplicating against them would reference corrupt chunks
                self._chunks.abandon()
                raise
            return out

    def _write(self, p: _Prepared) -> CheckpointInfo:
        self._check_writable()
        self._sync_infos()
        if p.step in self._infos:
            self._check_new_step(p.step)
        stored = self._store_tensors(p.tensors)
        entries = [e for e, _, _ in stored]
        new_chunks = sum(c for _, c, _ in stored)
        new_bytes = sum(b for _, _, b in stored)
        num_chunks = sum(len(e.chunks) for e in entries)
        nbytes = sum(e.nbytes for e in entries)
        self._check_chunks_present(p.step, entries)
        info = CheckpointInfo(
            step=p.step, created_at=time.time(), tags=p.tags, metadata=decode_tree(p.metadata, _no_tensor),
            nbytes=nbytes, new_bytes=new_bytes, num_tensors=len(entries), num_chunks=num_chunks,
            new_chunks=new_chunks,
        )
        row = {
            "step": info.step, "created_at": info.created_at, "tags": json.dumps(list(p.tags)),
            "metadata": json.dumps(p.metadata, allow_nan=False), "nbytes": nbytes, "new_bytes": new_bytes,
            "num_tensors": len(entries), "num_chunks": num_chunks, "new_chunks": new_chunks,
            "manifest": Manifest(p.tree, tuple(entries)).dumps(),
        }
        self._manifests.append(pa.RecordBatch.from_pylist([row], schema=mf.SCHEMA))
        self._manifests.flush()  # the commit point: the checkpoint exists from here on
        self._infos[p.step] = info
        self._counts["saves"] += 1
        self._counts["bytes_written"] += new_bytes
        self._counts["chunks_written"] += new_chunks
        self._counts["bytes_deduplicated"] += nbytes - new_bytes
        self._apply_retention()
        self._record_head()
        return info

    def _check_chunks_present(self, step: int, entries: Sequence[TensorEntry]) -> None:
        """Refuse to commit a manifest whose chunks are not all stored (another process's gc
        removed them meanwhile, or a rank's write never committed)."""
        keys = {k for e in entries for k in e.chunks}
        self._chunks.ensure(keys)
        missing = [k for k in keys if k not in self._chunks]
        if missing:
            raise StorageError(
                f"checkpoint step {step} of {self.path} is not committed: {len(missing)} of its chunks "
                f"(e.g. {missing[0]}) are not in {self._chunks.uri} (removed by a concurrent gc, or never "
                "written); save it again",
                step=step,
            )

    def _record_head(self) -> None:
        """After a commit of the checkpoint table: durably note its version (see head.py)."""
        if self._head_path is not None:
            write_head(self._head_path, Head(self._manifests.version, max(self._infos) if self._infos else None))

    def _apply_retention(self) -> None:
        if self.keep_last is None or len(self._infos) <= self.keep_last:
            return
        steps = sorted(self._infos, reverse=True)
        untagged = [s for s in steps if not self._infos[s].tags]
        keep = set(untagged[: self.keep_last]) | {steps[0]} | {s for s in steps if self._infos[s].tags}
        doomed = [s for s in steps if s not in keep]
        if not doomed:
            return
        self._manifests.delete_in("step", doomed)
        for s in doomed:
            del self._infos[s]
        self.gc()


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "is_contiguous")


def _nest(key: str, value: Any) -> Any:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _decode_plain(tree: Any) -> Any:
    return decode_tree(tree, _no_tensor)


def _no_tensor(i: int) -> Any:
    raise CorruptionError(f"metadata refers to tensor {i}; metadata holds plain values only")
