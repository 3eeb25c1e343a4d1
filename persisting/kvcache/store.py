"""KVCacheStore: save the attention KV cache of prompt prefixes and find it again after a restart.

One Lance table per namespace (``<path>/<namespace>.lance``), one row per chunk of
``chunk_size`` tokens: its chained key (see :mod:`persisting.kvcache.hashing`), its parent's key,
its depth, dtype, shape, checksum and the payload in a blob column. Payloads skip the WAL
(durability ``"none"``): each ``put`` ends with one fsynced Lance commit, which is the
durability point, so a crash leaves whole committed chunks or nothing. The key index lives in
memory, built from the small columns at open; ``lookup`` never reads a payload.

Many processes (and many stores in one process) may put into and read one namespace. Each
keeps its own index in step with the table: before a lookup or get (at most every
``refresh_interval`` seconds, and always on a miss) it checks whether the table version moved,
then reads only the rows appended since when others only appended, or every key again after
deletes or compaction (row positions changed). A read that races another process's eviction
is a miss, never an error or wrong bytes: payloads carry checksums and vanished rows or files
send the read back to the index. Capacity with several writers: each writer evicts after its
own put, least recently used first by what it knows (recency is per process; chunks other
processes wrote count as used when first seen). The namespace holds at most
``capacity_bytes`` plus the new chunks of puts still in flight in other processes, and at most
``capacity_bytes`` once no put is in flight; two writers evicting at once may evict more than
needed, never less.

Every 64 puts a maintenance pass drops old Lance versions and, while the store is small enough
for it to be cheap, merges the per-put fragments: both would otherwise make opening slow.
Evicted and corrupt chunks are deleted at once; their space comes back with compaction.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from persisting.engine import RowFollower
from persisting.engine.shell import StoreShell, check_choice, check_int, check_seconds
from persisting.engine.codec import COMPRESSIONS, check_framework, checksum, decode_tensor, dtype_name, encode_tensor
from persisting.engine.options import TableOptions
from persisting.engine.table import Table
from persisting.errors import ConfigError, InvalidRecordError, PersistingError, SchemaError
from persisting.engine.payloads import read_into
from persisting.kvcache.chunks import META_COLUMNS, PAYLOADS, SCHEMA, Layout, copy_chunk, is_torch, itemsize, proxy
from persisting.kvcache.hashing import as_token_array, iter_chunk_keys, namespace_seed
from persisting.kvcache.index import ChunkIndex, Entry
from persisting.kvcache.metrics import KVCacheMetrics
from persisting.kvcache.namespaces import check_namespace, storage_name

__all__ = ["KVCacheStore", "Layout"]

Framework = Literal["numpy", "torch"]

_APPEND_BYTES = 64 * 1024 * 1024  # rows are handed to the table in groups of about this size
_MAINTAIN_EVERY = 64  # puts between maintenance passes (drop old versions, merge fragments)
_COMPACT_MAX_BYTES = 1024 * 1024 * 1024  # merge fragments only while the store holds at most this
_READ_ATTEMPTS = 4  # a get that keeps racing other processes' evictions gives up as a miss


class KVCacheStore:
    """A persistent, namespaced, chunked store of attention KV caches.

    ``namespace`` names model, weights revision, dtype and layout; namespaces never see each
    other's entries (their keys start from different seeds and live in different tables).
    ``capacity_bytes`` bounds the payload bytes held: least recently used chunks are evicted,
    suffixes before their prefixes. ``compression`` is None, ``"zstd"``, ``"lz4"`` or
    ``"snappy"``. ``storage_options`` go to the engine; ``wal_dir`` is a local parent
    directory for the writer locks (the namespace's under ``<wal_dir>/<name>.wal``, as for
    every store), required when ``path`` is an object store. ``refresh_interval``
    bounds how stale this handle's view of other processes' chunks may be: lookup and get check
    the table version at most this often (0: every call, ~10 us locally, one listing on S3) and
    always on a miss.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str,
        chunk_size: int = 256,
        capacity_bytes: int | None = None,
        compression: str | None = None,
        storage_options: dict[str, str] | None = None,
        read_only: bool = False,
        wal_dir: str | None = None,
        refresh_interval: float = 0.0,
    ) -> None:
        check_namespace(namespace)
        self._shell = StoreShell("KVCacheStore", path, read_only=read_only, wal_dir=wal_dir, label=namespace)
        where = str(self._shell)
        self.chunk_size = check_int("chunk_size", chunk_size, store=where, minimum=1)
        self.capacity_bytes = check_int("capacity_bytes", capacity_bytes, store=where, optional=True)
        self.compression = check_choice("compression", compression, COMPRESSIONS, store=where)
        refresh_interval = check_seconds("refresh_interval", refresh_interval, store=where)
        self.path = self._shell.path
        self.namespace = namespace
        self.read_only = self._shell.read_only
        self.refresh_interval = float(refresh_interval)
        self._orphans: set[str] = set()  # keys of rows whose parent is gone, for the writer to delete
        self._foreign: dict[str, int] = {}  # key -> position of rows of chains from another chunk_size
        self._checked = time.monotonic()
        self._seed = namespace_seed(namespace, chunk_size)
        self._lock = threading.RLock()
        self._metrics = KVCacheMetrics(namespace)
        self._counts = {"hits": 0, "misses": 0, "hit_tokens": 0, "evictions": 0, "corrupt": 0,
                        "bytes_written": 0, "bytes_read": 0}
        self._dead_bytes = 0
        self._commits = 0
        self._stages: list[np.ndarray | None] = [None, None]  # reused staging buffers, one per group in flight
        self._committer: ThreadPoolExecutor | None = None  # commits one group while the next is staged
        self._layout: Layout | None = None
        self._index = ChunkIndex(self._seed.hex())
        name = storage_name(namespace)
        self._shell.make_root()
        self._table = Table(
            self._shell.table_uri(name),
            options=TableOptions(durability="none", compact_fragments=0, flush_bytes=2 * _APPEND_BYTES),
            schema=SCHEMA,
            storage_options=storage_options,
            read_only=read_only,
            wal_dir=self._shell.table_wal_dir(name),
            store="kvcache",
            exclusive=False,  # any number of processes share a namespace
            follow=False,  # the index's positions hold for one version: the store moves on when it syncs
            name=namespace,
            payloads=PAYLOADS,  # new blob files are recorded from the payload checksums, not re-read
        )
        self._rows = RowFollower(self._table, ["key", "parent", "depth", "nbytes"], track_moves=True)
        try:
            self._sync()
            self._check_chunk_size()
            if self._orphans and not read_only:
                self._drop_orphans()
        except BaseException:
            self._table.close()
            raise

    # -- index -------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Bring the index to the table's current version: the engine's row follower reads the
        rows appended since; after deletes, the rows of the fragments deleted from (positions
        of the others shift), or every row's small columns when rows this index holds vanished
        (another process evicted them) or a compaction moved them. Orphans (parent gone) are left
        out and noted for the writer."""
        change = self._rows.changes()
        if change is None:
            return
        keys, parents, depths = change.column("key"), change.column("parent"), change.column("depth")
        if change.moves is not None:
            # rows were deleted in place (evictions): shift positions, read only what moved
            orphans = None if self._foreign else self._index.remap(
                change.moves, keys, parents, depths, change.column("nbytes"), change.positions)
            if orphans is None:  # rows this index held vanished (or foreign chains hold positions): read all
                self._rows.invalidate()
                self._sync()
                return
        else:
            orphans = self._index.merge(keys, parents, depths, change.column("nbytes"), start=change.start,
                                        replace=change.replaced)
        if change.replaced:
            self._orphans, self._foreign = set(), {}
        for i in sorted(orphans, key=lambda i: depths[i]):
            # chains from another seed (another chunk_size) are not ours to delete
            if depths[i] == 0 or parents[i] in self._foreign:
                self._foreign[keys[i]] = change.position(i)
            else:
                self._orphans.add(keys[i])
        self._orphans.difference_update(self._index.entries.keys())
        if not self._index.entries:
            self._layout = None
        elif self._layout is None:
            first = min(self._index.entries.values(), key=lambda e: e.position)
            row = self._table.take([first.position], columns=["dtype", "shape", "token_axis"]).to_pylist()[0]
            axis = int(row["token_axis"])
            shape = list(row["shape"])
            del shape[axis]
            self._layout = Layout(row["dtype"], axis, tuple(shape))
        self._update_gauges()

    def _check_chunk_size(self) -> None:
        """A namespace holds one chunk size: refuse to open it with another (its chains would
        look like orphans, and deleting them would destroy another process's cache)."""
        if not self._foreign:
            return
        row = self._table.take([min(self._foreign.values())], columns=["shape", "token_axis"]).to_pylist()[0]
        n = row["shape"][row["token_axis"]]
        raise ConfigError(
            f"namespace {self.namespace!r} at {self._table.uri} holds chunks of {n} tokens, not "
            f"{self.chunk_size}: open it with chunk_size={n}, or use another namespace",
            namespace=self.namespace,
        )

    def _catch_up(self, *, force: bool = False) -> bool:
        """Follow other processes' commits (at most every refresh_interval unless forced);
        return whether the table moved."""
        now = time.monotonic()
        if not force and now - self._checked < self.refresh_interval:
            return False
        self._checked = now
        before = self._table.version
        self._table.refresh()
        if self._table.version == before and self._rows.version == before:
            return False
        self._sync()
        return True

    def _drop_orphans(self) -> None:
        """Delete rows no lookup can reach: a chunk put while another process evicted its parent."""
        orphans = sorted(self._orphans)
        self._orphans = set()
        self._delete_keys(orphans, 0)

    def _update_gauges(self) -> None:
        self._metrics.entries.set(len(self._index))
        self._metrics.bytes.set(self._index.nbytes)

    def _keys(self, toks: np.ndarray) -> Any:
        return (k.hex() for k in iter_chunk_keys(self._seed, toks, self.chunk_size))

    # -- public API --------------------------------------------------------------------------
    def lookup(self, tokens: Any) -> int:
        """Length in tokens of the longest cached prefix of ``tokens`` (a multiple of chunk_size)."""
        with self._lock:
            self._check_open()
            keys = list(self._keys(as_token_array(tokens)))
            chain = self._index.longest_prefix(keys)
            if self._catch_up(force=len(chain) < len(keys)):
                chain = self._index.longest_prefix(keys)
            return len(chain) * self.chunk_size

    def put(self, tokens: Any, kv: Any, *, token_axis: int = -2) -> int:
        """Store the KV of every full chunk of ``tokens`` not stored yet; return tokens newly stored.

        ``kv`` (torch tensor or numpy array) runs over ``tokens`` on ``token_axis``. Bad input
        raises before anything is written: InvalidRecordError for tokens or kv of the wrong kind,
        SchemaError when kv's length, dtype or shape disagrees with tokens or the namespace.
        """
        with self._lock:
            self._check_writable()
            toks = as_token_array(tokens)
            if toks.size == 0:
                raise InvalidRecordError("tokens is empty: there is nothing to store")
            self._catch_up(force=True)  # others' chunks are not written twice; their layout binds us
            layout, framework = self._check_kv(kv, token_axis, len(toks))
            keys = list(self._keys(toks))
            chain = self._index.longest_prefix(keys)
            new = [(i, k) for i, k in enumerate(keys) if i >= len(chain)]
            if not new:
                self._index.touch(chain)
                return 0
            try:
                written = self._write_chunks(kv, layout, framework, keys, new)
            except BaseException:
                self._stages = [None, None]  # rows left in the table's buffer may still point into it
                self._rows.invalidate()
                self._sync()  # rows committed (or still buffered) are indexed, no others
                raise
            self._sync()  # our rows and whatever other processes committed meanwhile
            self._layout = self._layout or layout
            self._index.touch(self._index.longest_prefix(keys))
            self._counts["bytes_written"] += sum(written)
            self._metrics.bytes_written.inc(sum(written))
            self._evict()
            self._commits += 1
            if self._commits % _MAINTAIN_EVERY == 0:
                self._maintain()
            self._update_gauges()
            return len(new) * self.chunk_size

    def get(self, tokens: Any, *, token_axis: int = -2, framework: Framework | None = None) -> Any:
        """KV of the longest cached prefix of ``tokens``, concatenated on the token axis, or None.

        Returned with the dtype and shape it was stored with, as the framework it was put as
        (torch in, torch out; numpy in, numpy out) unless ``framework`` says otherwise. A chunk
        that fails its checksum is counted, removed with everything after it, and not served.
        """
        check_framework(framework, allow_none=True)
        with self._lock:
            self._check_open()
            keys = list(self._keys(as_token_array(tokens)))
            chain = self._index.longest_prefix(keys)
            if self._catch_up(force=len(chain) < len(keys)):
                chain = self._index.longest_prefix(keys)
            for _ in range(_READ_ATTEMPTS):
                if not chain:
                    break
                assert self._layout is not None
                ndim = len(self._layout.other_dims) + 1
                if not -ndim <= token_axis < ndim or token_axis % ndim != self._layout.token_axis:
                    raise SchemaError(
                        f"namespace {self.namespace!r} stores tokens on axis {self._layout.token_axis}, "
                        f"not {token_axis}; pass token_axis={self._layout.token_axis}",
                    )
                out = self._read_chain(chain, framework)
                if out is not None:
                    break
                # a corrupt chunk was removed, or another process evicted or moved rows: the
                # index is in step with the table again, so the chain is what is left of it
                chain = self._index.longest_prefix(keys)
            else:
                chain = []
            if not chain:
                self._counts["misses"] += 1
                self._metrics.misses.inc()
                return None
            self._index.touch(chain)
            n = len(chain) * self.chunk_size
            self._counts["hits"] += 1
            self._counts["hit_tokens"] += n
            self._metrics.hits.inc()
            self._metrics.hit_tokens.inc(n)
            return out

    def stats(self) -> dict[str, Any]:
        """Entries and bytes the namespace holds (every process's), and this handle's hits,
        misses, hit rate, evictions and corrupt chunks."""
        with self._lock:
            if not self._shell.closed:
                self._catch_up()
            c = self._counts
            asked = c["hits"] + c["misses"]
            return {
                "namespace": self.namespace,
                "chunk_size": self.chunk_size,
                "entries": len(self._index),
                "bytes": self._index.nbytes,
                "capacity_bytes": self.capacity_bytes,
                **c,
                "hit_rate": c["hits"] / asked if asked else 0.0,
                "fragments": self._table.stats()["fragments"],
            }

    def refresh(self) -> None:
        """See the chunks every process committed (or removed) up to now; lookup and get do
        this on their own every ``refresh_interval`` seconds and on a miss."""
        with self._lock:
            self._check_open()
            self._catch_up(force=True)

    def compact(self) -> None:
        """Reclaim the disk space of evicted and removed chunks (rewrites live chunks)."""
        with self._lock:
            self._check_writable()
            self._table.compact()
            self._table.cleanup()
            self._dead_bytes = 0
            self._sync()

    def _maintain(self) -> None:
        """Every put commits a fragment and a version; thousands of them make opening slow
        (Lance lists every version, scans every fragment). Drop old versions always; merge
        fragments while that rewrites little. Engine gap: size-tiered compaction (merge only
        small fragments) would bound fragments for large stores too."""
        if self._index.nbytes <= _COMPACT_MAX_BYTES:
            self._table.compact()
            self._dead_bytes = 0
        self._table.cleanup()
        self._sync()

    def close(self) -> None:
        with self._lock:
            if self._shell.mark_closed():
                if self._committer is not None:
                    self._committer.shutdown(wait=True)
                self._table.close()

    def __enter__(self) -> KVCacheStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"KVCacheStore({self.path!r}, namespace={self.namespace!r}, entries={len(self._index)})"

    # -- internals ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        self._shell.check_open()

    def _check_writable(self) -> None:
        self._shell.check_writable("put")

    def _check_kv(self, kv: Any, token_axis: int, n_tokens: int) -> tuple[Layout, Framework]:
        if is_torch(kv):
            framework: Framework = "torch"
        elif isinstance(kv, np.ndarray):
            framework = "numpy"
        else:
            raise InvalidRecordError(f"kv must be a torch tensor or numpy array, got {type(kv).__name__}", value_type=type(kv).__name__)
        dtype = dtype_name(kv)
        shape = tuple(int(s) for s in kv.shape)
        if isinstance(token_axis, bool) or not isinstance(token_axis, int) or not -len(shape) <= token_axis < len(shape):
            raise SchemaError(f"token_axis {token_axis!r} is not an axis of kv with shape {shape}")
        axis = token_axis % len(shape)
        if shape[axis] != n_tokens:
            raise SchemaError(
                f"kv has {shape[axis]} positions on token axis {token_axis} (shape {shape}) but "
                f"{n_tokens} tokens were given; they must match",
                shape=shape,
            )
        layout = Layout(dtype, axis, shape[:axis] + shape[axis + 1 :])
        if self._layout is not None and layout != self._layout:
            raise SchemaError(
                f"namespace {self.namespace!r} holds {self._layout.describe()}; this kv has "
                f"{layout.describe()}. Use another namespace for another model, dtype or layout",
                namespace=self.namespace,
            )
        return layout, framework

    def _write_chunks(self, kv: Any, layout: Layout, framework: Framework, keys: list[str], new: list[tuple[int, str]]) -> list[int]:
        """Write the new chunks in groups of about _APPEND_BYTES, one fsynced commit per group
        (parents always commit before their children); return each chunk's stored byte size.

        Uncompressed chunks are copied once, from kv (where a chunk is a strided slice) into one
        of two staging buffers the store keeps and reuses: touching fresh pages costs more than
        the copy itself. The copy (and checksum) of a group overlaps the commit and fsyncs of
        the group before it, on a commit thread; both release the GIL. A buffer is reused two
        groups later, after the group staged in it was committed and Lance was done with it.
        """
        raw_nbytes = itemsize(layout.dtype) * int(np.prod(layout.shape(self.chunk_size), dtype=np.int64))
        per_group = max(1, _APPEND_BYTES // max(raw_nbytes, 1))
        sizes: list[int] = []
        inflight: Future[None] | None = None
        try:
            for n, g in enumerate(range(0, len(new), per_group)):
                batch = self._prepare_group(kv, layout, framework, keys, new[g : g + per_group], n % 2)
                if inflight is not None:
                    f, inflight = inflight, None
                    f.result()  # parents commit before their children
                self._table.append(batch)
                sizes.extend(batch.column("nbytes").to_pylist())
                del batch
                inflight = self._commit_thread().submit(self._table.flush)
            if inflight is not None:
                f, inflight = inflight, None
                f.result()
        finally:
            if inflight is not None:
                inflight.exception()  # never leave a commit running past a failed put
        return sizes

    def _commit_thread(self) -> ThreadPoolExecutor:
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="persisting-kv-commit")
        return self._committer

    def _staging(self, nbytes: int, slot: int) -> np.ndarray:
        stage = self._stages[slot]
        if stage is None or stage.nbytes < nbytes:
            stage = self._stages[slot] = np.empty(nbytes, dtype=np.uint8)
        return stage[:nbytes]

    def _prepare_group(
        self, kv: Any, layout: Layout, framework: Framework, keys: list[str], group: list[tuple[int, str]], slot: int,
    ) -> pa.Table:
        """The rows of one group of new chunks, payloads copied out of kv and checksummed."""
        cs = self.chunk_size
        chunk_shape = layout.shape(cs)
        raw_nbytes = itemsize(layout.dtype) * int(np.prod(chunk_shape, dtype=np.int64))
        direct = self.compression is None and (framework == "torch" or kv.dtype.isnative)
        rows: dict[str, Any] = {
            "key": [k for _, k in group],
            "parent": [keys[i - 1] if i else self._index.seed for i, _ in group],
            "depth": [i for i, _ in group],
            "dtype": [layout.dtype] * len(group),
            "shape": [list(chunk_shape)] * len(group),
            "token_axis": [layout.token_axis] * len(group),
            "framework": [framework] * len(group),
            "compression": [self.compression] * len(group),
        }
        if direct:
            data = self._staging(raw_nbytes * len(group), slot)
            sums = []
            for n, (i, _) in enumerate(group):
                dest = data[n * raw_nbytes : (n + 1) * raw_nbytes]
                copy_chunk(kv, layout.token_axis, i * cs, cs, dest, chunk_shape)
                sums.append(checksum(dest.data))
            payload_sizes = [raw_nbytes] * len(group)
        else:
            encoded = [self._encode_chunk(kv, layout.token_axis, i * cs, cs) for i, _ in group]
            payload_sizes = [len(e[0]) for e in encoded]
            data = np.empty(sum(payload_sizes), dtype=np.uint8)
            at = 0
            for e in encoded:
                data[at : at + len(e[0])] = np.frombuffer(e[0], dtype=np.uint8)
                at += len(e[0])
            sums = [e[1] for e in encoded]
        offsets = np.zeros(len(group) + 1, dtype=np.int64)
        np.cumsum(payload_sizes, out=offsets[1:])
        rows["checksum"] = sums
        rows["raw_nbytes"] = [raw_nbytes] * len(group)
        rows["nbytes"] = payload_sizes
        rows["payload"] = pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), len(group), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )
        return pa.table(rows, schema=SCHEMA)

    def _encode_chunk(self, kv: Any, axis: int, start: int, length: int) -> tuple[Any, bytes, int]:
        """(payload, checksum, raw byte size) of kv[start:start+length] on ``axis``, compressed."""
        if is_torch(kv):
            part = kv.narrow(axis, start, length)
        else:
            index = [slice(None)] * kv.ndim
            index[axis] = slice(start, start + length)
            part = kv[tuple(index)]
        enc = encode_tensor(part, compression=self.compression)
        return enc.data, enc.checksum, enc.raw_nbytes

    def _read_chain(self, chain: list[Entry], framework: Framework | None) -> Any:
        """Assemble the chain's KV; on a corrupt chunk, remove it and its suffix, return None.

        Each payload is read straight into its slice of the output (engine ``read_into``: one
        scattered read per chunk, chunks in parallel, checksum verified), with no staging copy.
        """
        assert self._layout is not None
        layout, cs = self._layout, self.chunk_size
        positions = [e.position for e in chain]
        try:
            meta = self._table.take(positions, columns=META_COLUMNS + ["framework"]).to_pylist()
        except PersistingError:
            if self._catch_up(force=True):
                return None  # another process removed or moved rows: the caller reads the index again
            raise
        if framework is None:
            framework = meta[0]["framework"]
        if any(m["key"] != e.key for e, m in zip(chain, meta)):
            self._rows.invalidate()  # out of step with the table: read every key again
            self._catch_up(force=True)
            return None
        shape = layout.shape(len(chain) * cs)
        as_bits = proxy(layout.dtype)
        out = np.empty(int(np.prod(shape, dtype=np.int64)) * as_bits.itemsize, dtype=np.uint8)
        out_view = out.view(as_bits).reshape(shape)
        index: list[Any] = [slice(None)] * len(shape)
        dests = []
        for n in range(len(chain)):
            index[layout.token_axis] = slice(n * cs, (n + 1) * cs)
            dests.append(out_view[tuple(index)])
        chunk_shape = layout.shape(cs)
        results = read_into(
            self._table, "payload", positions, dests, checksums=[m["checksum"] for m in meta],
            compressions=[m["compression"] for m in meta],
        )
        for e, m, r in zip(chain, meta, results):
            if r.ok and tuple(m["shape"]) == chunk_shape:
                continue
            # a vanished file or damage: another process's eviction and compaction may have
            # removed the file under this version, so only damage found on the newest version
            # is damage
            if not self._catch_up(force=True) and (r.status == "corrupt" or r.ok):
                self._remove_corrupt(e)
            return None
        read = sum(r.nbytes for r in results)
        self._counts["bytes_read"] += read
        self._metrics.bytes_read.inc(read)
        return decode_tensor(out.data, dtype=layout.dtype, shape=shape, framework=framework, copy=False)

    def _remove_corrupt(self, entry: Entry) -> None:
        removed = self._index.remove_subtree(entry.key)
        self._counts["corrupt"] += 1
        self._metrics.corrupt.inc()
        if not self.read_only:
            self._delete_keys([e.key for e in removed], sum(e.nbytes for e in removed))
        self._update_gauges()

    def _evict(self) -> None:
        """Delete orphans, then least recently used chunks until the namespace (as this
        process sees it after its put) fits capacity_bytes."""
        if self._orphans:
            self._drop_orphans()
        cap = self.capacity_bytes
        if cap is None or self._index.nbytes <= cap:
            return
        victims: list[Entry] = []
        while self._index.nbytes > cap:
            popped = self._index.pop_lru()
            if not popped:
                break
            victims.extend(popped)
        self._counts["evictions"] += len(victims)
        self._metrics.evictions.inc(len(victims))
        self._delete_keys([e.key for e in victims], sum(e.nbytes for e in victims))

    def _delete_keys(self, keys: list[str], nbytes: int) -> None:
        """Delete every row of ``keys`` (duplicates too), then bring the index in step."""
        if not keys:
            return
        self._table.delete_in("key", keys)
        self._dead_bytes += nbytes
        if self._dead_bytes >= max(self._index.nbytes // 2, 64 * 1024 * 1024):
            self.compact()
        else:
            self._sync()

