"""KVCacheStore: round trips, prefixes, namespaces, restarts, corruption, eviction, bad input."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from persisting.errors import ClosedError, InvalidNameError, InvalidRecordError, PersistingError, SchemaError
from persisting.kvcache import KVCacheStore

torch = pytest.importorskip("torch")

CS = 4  # chunk size used throughout


def make_kv(seed: int, n: int, dtype: str = "float32", layers: int = 2, heads: int = 2, dim: int = 8) -> np.ndarray:
    """Deterministic [layers, 2, heads, n, dim] KV for a prompt; the same in every process."""
    return np.random.default_rng(seed).standard_normal((layers, 2, heads, n, dim)).astype(dtype)


def prompt(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(10_000 + seed).integers(0, 50_000, n)]


def sample(name: str, ns: str) -> float:
    return REGISTRY.get_sample_value(name, {"namespace": ns}) or 0.0


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("form", ["list", "numpy", "torch"])
def test_numpy_round_trip(tmp_path: Path, dtype: str, form: str) -> None:
    toks = prompt(0, 3 * CS + 2)
    kv = make_kv(0, len(toks), dtype)
    tok_in = {"list": toks, "numpy": np.array(toks), "torch": torch.tensor(toks)}[form]
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CS) as store:
        assert store.put(tok_in, kv) == 3 * CS
        assert store.lookup(tok_in) == 3 * CS
        out = store.get(tok_in)
        assert isinstance(out, np.ndarray) and out.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out, kv[..., : 3 * CS, :])
        assert out.flags.writeable


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_torch_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    toks = torch.tensor(prompt(1, 2 * CS))
    kv = torch.from_numpy(make_kv(1, 2 * CS)).to(dtype)
    before = kv.clone()
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CS) as store:
        assert store.put(toks, kv) == 2 * CS
        out = store.get(toks)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == kv.shape
    assert torch.equal(out, kv) and torch.equal(kv, before)  # the caller's tensor is untouched


def test_other_token_axis_and_framework_override(tmp_path: Path) -> None:
    toks = prompt(2, 2 * CS)
    kv = np.random.default_rng(2).standard_normal((2 * CS, 3, 5)).astype(np.float32)  # tokens first
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CS) as store:
        store.put(toks, kv, token_axis=0)
        np.testing.assert_array_equal(store.get(toks, token_axis=0), kv)
        t = store.get(toks, token_axis=0, framework="torch")
        assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), kv)
        with pytest.raises(SchemaError):
            store.get(toks, token_axis=-2)


def test_prefix_lookup_and_incremental_put(tmp_path: Path) -> None:
    toks = prompt(3, 4 * CS)
    kv = make_kv(3, len(toks))
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CS) as store:
        assert store.lookup(toks) == 0 and store.get(toks) is None
        assert store.put(toks[: 2 * CS + 1], kv[..., : 2 * CS + 1, :]) == 2 * CS
        assert store.lookup(toks) == 2 * CS
        diverged = toks[: CS + 1] + [7] + toks[CS + 2 :]
        assert store.lookup(diverged) == CS  # chunk 1 differs, so nothing after chunk 0 matches
        np.testing.assert_array_equal(store.get(diverged), kv[..., :CS, :])
        assert store.put(toks, kv) == 2 * CS  # only chunks 2 and 3 are new
        assert store.put(toks, kv) == 0
        assert len(store) == 4
        np.testing.assert_array_equal(store.get(toks + [1, 2]), kv)
        st = store.stats()
        assert st["hits"] == 2 and st["misses"] == 1 and st["hit_rate"] == pytest.approx(2 / 3)
        assert st["entries"] == 4 and st["bytes"] == kv.nbytes


def test_namespaces_are_isolated(tmp_path: Path) -> None:
    toks = prompt(4, 2 * CS)
    a = KVCacheStore(tmp_path, namespace="model-a.bf16", chunk_size=CS)
    b = KVCacheStore(tmp_path, namespace="model-b.fp32", chunk_size=CS)  # open together: separate tables
    a.put(toks, make_kv(4, len(toks)))
    assert b.lookup(toks) == 0 and b.get(toks) is None
    b.put(toks, make_kv(5, len(toks), "float16", layers=3))  # another layout is fine in another namespace
    np.testing.assert_array_equal(a.get(toks), make_kv(4, len(toks)))
    np.testing.assert_array_equal(b.get(toks), make_kv(5, len(toks), "float16", layers=3))
    a.close(), b.close()


def test_metrics(tmp_path: Path) -> None:
    ns = "metrics-test"
    toks = prompt(6, 2 * CS)
    h0, m0, w0 = (sample(f"persisting_kvcache_{n}_total", ns) for n in ("hits", "misses", "bytes_written"))
    with KVCacheStore(tmp_path, namespace=ns, chunk_size=CS) as store:
        store.put(toks, make_kv(6, len(toks)))
        store.get(toks), store.get(prompt(7, CS))
    assert sample("persisting_kvcache_hits_total", ns) == h0 + 1
    assert sample("persisting_kvcache_misses_total", ns) == m0 + 1
    assert sample("persisting_kvcache_bytes_written_total", ns) == w0 + make_kv(6, len(toks)).nbytes
    assert sample("persisting_kvcache_entries", ns) == 2


def test_closed_store(tmp_path: Path) -> None:
    store = KVCacheStore(tmp_path, namespace="m", chunk_size=CS)
    store.close()
    with pytest.raises(ClosedError):
        store.lookup([1, 2, 3, 4])


def test_reopen_in_new_processes_with_other_hash_seeds(tmp_path: Path, child) -> None:
    prompts = {i: prompt(i, 3 * CS + i) for i in range(5)}
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CS) as store:
        for i, toks in prompts.items():
            store.put(toks, torch.from_numpy(make_kv(i, len(toks))).to(torch.bfloat16))
    code = f"""
        import json, sys, numpy as np, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import make_kv, prompt
        from persisting.kvcache import KVCacheStore
        store = KVCacheStore({str(tmp_path)!r}, namespace="m", chunk_size={CS})
        out = {{}}
        for i in range(5):
            toks = prompt(i, 3 * {CS} + i)
            kv = store.get(toks)
            ok = torch.equal(kv, torch.from_numpy(make_kv(i, len(toks))).to(torch.bfloat16)[..., :kv.shape[-2], :])
            out[i] = [store.lookup(toks), kv.dtype == torch.bfloat16, bool(ok)]
        print(json.dumps(out))
    """
    expected = {str(i): [3 * CS + (CS if i >= CS else 0), True, True] for i in range(5)}
    assert child(code, env={"PYTHONHASHSEED": "3"}) == expected  # other seeds: test_hashing.py


def test_restart_with_10000_entries_looks_up_without_reading_payloads(tmp_path: Path) -> None:
    n_prompts, chunks = 100, 100
    kv = np.zeros((2, chunks * CS, 4), np.float16)
    with KVCacheStore(tmp_path, namespace="big", chunk_size=CS) as store:
        for i in range(n_prompts):
            store.put(prompt(i, chunks * CS), kv, token_axis=1)
        assert len(store) == n_prompts * chunks
        assert store.stats()["fragments"] < 64  # maintenance merged the per-put fragments
    read0 = sample("persisting_kvcache_bytes_read_total", "big")
    start = time.perf_counter()
    store = KVCacheStore(tmp_path, namespace="big", chunk_size=CS)
    reopen = time.perf_counter() - start
    assert len(store) == 10_000 and reopen < 5
    for i in range(n_prompts):
        assert store.lookup(prompt(i, chunks * CS)) == chunks * CS
    assert sample("persisting_kvcache_bytes_read_total", "big") == read0
    assert store.stats()["bytes_read"] == 0
    store.close()


def _flip_payload_bytes(dataset: Path, payload: bytes) -> None:
    """Flip a byte inside ``payload`` where it sits in the Lance data files on disk."""
    hits = 0
    for f in glob.glob(str(dataset / "data" / "*.lance")):
        data = bytearray(Path(f).read_bytes())
        at = data.find(payload)
        if at >= 0:
            data[at + len(payload) // 2] ^= 0xFF
            Path(f).write_bytes(bytes(data))
            hits += 1
    assert hits == 1, "payload not found exactly once on disk"


def test_corrupt_payload_is_a_counted_miss_and_removed(tmp_path: Path) -> None:
    toks = prompt(8, 4 * CS)
    kv = make_kv(8, len(toks))
    other = prompt(9, 2 * CS)
    with KVCacheStore(tmp_path, namespace="c", chunk_size=CS) as store:
        store.put(toks, kv)
        store.put(other, make_kv(9, len(other)))
    _flip_payload_bytes(tmp_path / "c.lance", np.ascontiguousarray(kv[..., 2 * CS : 3 * CS, :]).tobytes())
    c0 = sample("persisting_kvcache_corrupt_total", "c")
    with KVCacheStore(tmp_path, namespace="c", chunk_size=CS) as store:
        assert store.lookup(toks) == 4 * CS  # lookup does not read payloads
        out = store.get(toks)
        np.testing.assert_array_equal(out, kv[..., : 2 * CS, :])  # chunk 2 and its suffix are not served
        assert store.stats()["corrupt"] == 1 and len(store) == 4  # 2 + the other prompt's 2
        assert store.lookup(toks) == 2 * CS
        np.testing.assert_array_equal(store.get(other), make_kv(9, len(other)))
    assert sample("persisting_kvcache_corrupt_total", "c") == c0 + 1
    with KVCacheStore(tmp_path, namespace="c", chunk_size=CS) as store:  # removed on disk too
        assert store.lookup(toks) == 2 * CS and len(store) == 4


def test_corrupt_first_chunk_is_a_miss(tmp_path: Path) -> None:
    toks = prompt(10, 2 * CS)
    kv = make_kv(10, len(toks))
    with KVCacheStore(tmp_path, namespace="c", chunk_size=CS) as store:
        store.put(toks, kv)
    _flip_payload_bytes(tmp_path / "c.lance", np.ascontiguousarray(kv[..., :CS, :]).tobytes())
    with KVCacheStore(tmp_path, namespace="c", chunk_size=CS) as store:
        assert store.get(toks) is None
        st = store.stats()
        assert st["misses"] == 1 and st["corrupt"] == 1 and st["entries"] == 0


def test_damaged_blob_file_is_a_counted_miss_in_a_fresh_process(tmp_path: Path) -> None:
    """Real chunks (MiBs) live in Lance blob files: damage there is a miss, counted, not an error."""
    from persisting.engine import integrity

    toks = prompt(11, 2 * CS)
    kv = make_kv(11, len(toks), dim=16384)  # 1 MiB per chunk: Lance stores each in a blob file
    with KVCacheStore(tmp_path, namespace="b", chunk_size=CS) as store:
        store.put(toks, kv)
    blobs = sorted(glob.glob(str(tmp_path / "b.lance" / "data" / "*" / "*.blob")))
    assert blobs, "payloads were expected in Lance blob files"
    for path in blobs:
        with open(path, "r+b") as f:
            f.seek(1000)
            b = f.read(1)
            f.seek(1000)
            f.write(bytes([b[0] ^ 0x01]))
    integrity.forget()  # as a new process sees the files
    with KVCacheStore(tmp_path, namespace="b", chunk_size=CS, read_only=True) as store:
        assert store.get(toks) is None
        assert store.stats()["corrupt"] == 1 and store.stats()["misses"] == 1


def test_damaged_data_file_is_a_corruption_error_naming_it(tmp_path: Path) -> None:
    """The small columns (keys, shapes, inline payloads) carry no checksum of their own: their
    file's digest is checked when a process opens the store; damage is a typed error."""
    from persisting.engine import integrity
    from persisting.errors import CorruptionError

    toks = prompt(12, 2 * CS)
    kv = make_kv(12, len(toks))
    with KVCacheStore(tmp_path, namespace="d", chunk_size=CS) as store:
        store.put(toks, kv)
    _flip_payload_bytes(tmp_path / "d.lance", np.ascontiguousarray(kv[..., :CS, :]).tobytes())
    integrity.forget()
    with pytest.raises(CorruptionError, match=r"data/.*\.lance"):
        KVCacheStore(tmp_path, namespace="d", chunk_size=CS, read_only=True)


def _reachable(store: KVCacheStore) -> bool:
    idx = store._index
    return all(e.parent == idx.seed or e.parent in idx.entries for e in idx.entries.values())


def test_capacity_evicts_lru_suffixes_first(tmp_path: Path) -> None:
    chunk_bytes = make_kv(0, CS).nbytes
    cap = 10 * chunk_bytes
    prompts = [prompt(20 + i, 3 * CS) for i in range(8)]
    with KVCacheStore(tmp_path, namespace="e", chunk_size=CS, capacity_bytes=cap) as store:
        for i, toks in enumerate(prompts):
            store.put(toks, make_kv(20 + i, len(toks)))
            assert store.stats()["bytes"] <= cap and _reachable(store)
            if i >= 1:
                assert store.get(prompts[0]) is not None  # keep prompt 0 hot
        assert store.lookup(prompts[0]) == 3 * CS
        assert store.lookup(prompts[7]) == 3 * CS
        assert store.lookup(prompts[1]) == 0  # the oldest cold prompts went first
        assert store.stats()["evictions"] == 8 * 3 - 10
        kept = {i: store.lookup(t) for i, t in enumerate(prompts)}
        # a partially evicted prompt kept its prefix, never a suffix without it
        assert sum(kept.values()) == 10 * CS
    with KVCacheStore(tmp_path, namespace="e", chunk_size=CS, capacity_bytes=cap) as store:
        assert {i: store.lookup(t) for i, t in enumerate(prompts)} == kept
        assert _reachable(store) and store.stats()["bytes"] <= cap
        for i, t in enumerate(prompts):
            if kept[i]:
                np.testing.assert_array_equal(store.get(t), make_kv(20 + i, len(t))[..., : kept[i], :])


def test_compaction_reclaims_space(tmp_path: Path) -> None:
    with KVCacheStore(tmp_path, namespace="e", chunk_size=CS, capacity_bytes=4 * make_kv(0, CS).nbytes) as store:
        for i in range(6):
            store.put(prompt(30 + i, 2 * CS), make_kv(30 + i, 2 * CS))
        store.compact()
        assert store.stats()["fragments"] == 1
        np.testing.assert_array_equal(store.get(prompt(35, 2 * CS)), make_kv(35, 2 * CS))


def test_compression_round_trip(tmp_path: Path) -> None:
    toks = prompt(11, 2 * CS)
    kv = np.zeros((2, 2, 2, 2 * CS, 64), np.float32)
    kv[..., 0] = 1.5
    with KVCacheStore(tmp_path, namespace="z", chunk_size=CS, compression="zstd") as store:
        store.put(toks, kv)
        assert store.stats()["bytes"] < kv.nbytes // 10
        np.testing.assert_array_equal(store.get(toks), kv)


def test_bad_input_raises_typed_errors_and_writes_nothing(tmp_path: Path) -> None:
    toks = prompt(12, 2 * CS)
    kv = make_kv(12, len(toks))
    with KVCacheStore(tmp_path, namespace="b", chunk_size=CS) as store:
        store.put(toks, kv)
        version = store._table.version
        fresh = prompt(13, 2 * CS)
        cases = [
            (SchemaError, fresh, make_kv(13, 2 * CS + 1)),  # kv length disagrees with tokens
            (InvalidRecordError, [float(t) for t in fresh], make_kv(13, 2 * CS)),  # non-integer tokens
            (InvalidRecordError, [-5] * 2 * CS, make_kv(13, 2 * CS)),
            (SchemaError, fresh, make_kv(13, 2 * CS, "float16")),  # wrong dtype for the namespace
            (SchemaError, fresh, make_kv(13, 2 * CS, heads=3)),  # wrong shape for the namespace
            (SchemaError, fresh, torch.from_numpy(make_kv(13, 2 * CS)).to(torch.bfloat16)),
            (InvalidRecordError, [], make_kv(13, 0)),  # empty tokens
            (InvalidRecordError, fresh, make_kv(13, 2 * CS).tolist()),  # not a tensor
            (SchemaError, fresh, make_kv(13, 2 * CS)[0, 0, 0]),  # tokens on another axis than asked
        ]
        for err, t, bad in cases:
            with pytest.raises(err):
                store.put(t, bad)
        with pytest.raises(SchemaError):
            store.put(fresh, make_kv(13, 2 * CS), token_axis=7)
        assert store._table.version == version and len(store) == 2 and store.lookup(fresh) == 0
        np.testing.assert_array_equal(store.get(toks), kv)
    for bad_ns in ["", "x\0y"]:  # model ids with "/" or ".." are fine: see test_namespaces.py
        with pytest.raises(InvalidNameError):
            KVCacheStore(tmp_path, namespace=bad_ns)
    # (the engine's creation lock for shared tables is a hidden file beside the dataset)
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == ["b.lance", "b.wal"]


CRASH_CHILD = """
    import sys
    sys.path.insert(0, {here!r})
    from test_store import make_kv, prompt
    from persisting.kvcache import KVCacheStore
    store = KVCacheStore({path!r}, namespace="crash", chunk_size={cs})
    i = 0
    while True:
        toks = prompt(100 + i, 8 * {cs})
        store.put(toks, make_kv(100 + i, len(toks), dim=512))
        print(i, flush=True)
        i += 1
"""


def test_sigkill_during_puts_serves_only_whole_valid_entries(tmp_path: Path) -> None:
    code = textwrap.dedent(CRASH_CHILD.format(here=str(Path(__file__).parent), path=str(tmp_path), cs=CS))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        done = -1
        while done < 4:
            line = proc.stdout.readline()
            assert line, "the writer died before it was killed"
            done = int(line)
        time.sleep(0.05)  # land the kill somewhere inside a later put
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with KVCacheStore(tmp_path, namespace="crash", chunk_size=CS) as store:
        assert len(store) >= 5 * 8 and len(store) % 8 == 0  # each put is one commit: all or nothing
        for i in range(len(store) // 8):
            toks = prompt(100 + i, 8 * CS)
            assert store.lookup(toks) == 8 * CS
            np.testing.assert_array_equal(store.get(toks), make_kv(100 + i, len(toks), dim=512))
        assert store.stats()["corrupt"] == 0


KILL_POINT_CHILD = """
    import sys
    sys.path.insert(0, {here!r})
    from test_store import make_kv, prompt
    from persisting.kvcache import KVCacheStore
    store = KVCacheStore({path!r}, namespace="crash", chunk_size={cs})
    toks = prompt(201, 3 * {cs})
    store.put(toks, make_kv(201, len(toks)))  # the engine kills us between commit and fsync
    print("not killed", flush=True)
"""


def test_kill_between_commit_and_fsync(tmp_path: Path) -> None:
    first = prompt(200, 2 * CS)
    with KVCacheStore(tmp_path, namespace="crash", chunk_size=CS) as store:
        store.put(first, make_kv(200, len(first)))
    code = textwrap.dedent(KILL_POINT_CHILD.format(here=str(Path(__file__).parent), path=str(tmp_path), cs=CS))
    proc = subprocess.run([sys.executable, "-c", code], check=False, env={**os.environ, "PERSISTING_KILL_POINT": "after_commit"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    with KVCacheStore(tmp_path, namespace="crash", chunk_size=CS) as store:
        np.testing.assert_array_equal(store.get(first), make_kv(200, len(first)))
        second = prompt(201, 3 * CS)
        assert store.lookup(second) in (0, 3 * CS)  # the whole put or none of it
        if store.lookup(second):
            np.testing.assert_array_equal(store.get(second), make_kv(201, len(second)))


def test_read_only_open(tmp_path: Path) -> None:
    toks = prompt(210, 2 * CS)
    with KVCacheStore(tmp_path, namespace="ro", chunk_size=CS) as store:
        store.put(toks, make_kv(210, len(toks)))
    with KVCacheStore(tmp_path, namespace="ro", chunk_size=CS, read_only=True) as reader:
        np.testing.assert_array_equal(reader.get(toks), make_kv(210, len(toks)))
        with pytest.raises(PersistingError):
            reader.put(prompt(211, CS), make_kv(211, CS))


def test_large_put_commits_in_groups_and_reuses_its_staging_buffer(tmp_path: Path, monkeypatch) -> None:
    import persisting.kvcache.store as store_module

    monkeypatch.setattr(store_module, "_APPEND_BYTES", 2 * make_kv(0, CS).nbytes)  # two chunks per commit
    a, b = prompt(220, 5 * CS), prompt(221, 3 * CS)
    with KVCacheStore(tmp_path, namespace="g", chunk_size=CS) as store:
        assert store.put(a, make_kv(220, len(a))) == 5 * CS
        assert store.put(b, make_kv(221, len(b))) == 3 * CS  # overwrites the staging buffer
        np.testing.assert_array_equal(store.get(a), make_kv(220, len(a)))
        np.testing.assert_array_equal(store.get(b), make_kv(221, len(b)))
        assert store.stats()["corrupt"] == 0


def test_constructor_checks_read_only_and_wal_dir_layout(tmp_path: Path) -> None:
    """Constructor arguments raise ConfigError naming the argument; a put through a read-only
    handle raises ReadOnlyError; ``wal_dir`` is a parent: each namespace's WAL directory sits
    under it as ``<name>.wal``, so two namespaces can share one ``wal_dir``."""
    from persisting.errors import ConfigError, ReadOnlyError

    for kwargs, name in (({"chunk_size": 0}, "chunk_size"), ({"chunk_size": True}, "chunk_size"),
                         ({"capacity_bytes": -1}, "capacity_bytes"), ({"compression": "brotli"}, "compression"),
                         ({"refresh_interval": float("nan")}, "refresh_interval"),
                         ({"wal_dir": "s3://b/w"}, "wal_dir")):
        with pytest.raises(ConfigError, match=name):
            KVCacheStore(tmp_path / "never", namespace="m", **kwargs)
    assert not (tmp_path / "never").exists()
    with pytest.raises(ConfigError, match="wal_dir"):
        KVCacheStore("s3://bucket/kv", namespace="m")
    toks, kv = prompt(1, CS), make_kv(1, CS)
    wal = tmp_path / "wal"
    with KVCacheStore(tmp_path / "kv", namespace="a", chunk_size=CS, wal_dir=str(wal)) as a, \
            KVCacheStore(tmp_path / "kv", namespace="b", chunk_size=CS, wal_dir=str(wal)) as b:
        a.put(toks, kv)
        assert b.lookup(toks) == 0
        assert sorted(p.name for p in wal.iterdir()) == ["a.wal", "b.wal"]
    with KVCacheStore(tmp_path / "kv", namespace="a", chunk_size=CS, read_only=True) as r:
        assert r.lookup(toks) == CS
        with pytest.raises(ReadOnlyError, match=f"KVCacheStore {tmp_path / 'kv'} \\(a\\) is open read-only"):
            r.put(toks, kv)


def _positions_hold_their_keys(store: KVCacheStore) -> None:
    keys = store._table.scan(columns=["key"]).column("key").to_pylist()
    for e in store._index.entries.values():
        assert keys[e.position] == e.key


@pytest.mark.parametrize("where", ["local", "s3"])
def test_evictions_at_capacity_shift_positions_without_reading_every_row(tmp_path: Path, where: str,
                                                                        request: pytest.FixtureRequest) -> None:
    """At capacity every put evicts (deletes rows in place): the index follows by shifting
    positions and reading only the fragments deleted from, never every row, and every position
    still holds its key and every kept prompt reads back its own bytes; another handle's
    evictions (rows this one indexed vanish) fall back to reading every row. On local disk and
    on S3 (moto)."""
    chunk_bytes = make_kv(0, CS).nbytes
    cap = 12 * chunk_bytes
    prompts = [prompt(200 + i, 2 * CS) for i in range(40)]
    if where == "s3":
        where_kw: dict = {"storage_options": request.getfixturevalue("s3_options")}
        path: Any = f"s3://{request.getfixturevalue('s3_bucket')}/kv"

        def opened(capacity: int, wal: str) -> KVCacheStore:
            return KVCacheStore(path, namespace="v", chunk_size=CS, capacity_bytes=capacity,
                                wal_dir=str(tmp_path / wal), **where_kw)
    else:
        def opened(capacity: int, wal: str) -> KVCacheStore:
            return KVCacheStore(tmp_path, namespace="v", chunk_size=CS, capacity_bytes=capacity)
    with opened(cap, "wal-a") as store:
        follower = store._rows
        reads = []
        changes = follower.changes

        def counted():  # the rows each change read
            c = changes()
            if c is not None:
                reads.append((c.replaced, c.moves is not None, c.rows.num_rows))
            return c

        follower.changes = counted
        for i, toks in enumerate(prompts):
            store.put(toks, make_kv(200 + i, len(toks)))
            _positions_hold_their_keys(store)
            np.testing.assert_array_equal(store.get(toks), make_kv(200 + i, len(toks)))

        moved = [n for replaced, moves, n in reads if moves]
        assert len(moved) >= 20 and max(moved) < 12  # evictions: a fragment or two read, not the table
        assert not any(replaced for replaced, _, _ in reads[1:])  # no full read in steady state
        with opened(cap // 2, "wal-b") as other:
            other.put(prompt(999, 2 * CS), make_kv(999, 2 * CS))  # evicts rows the first handle indexed
        reads.clear()
        store.put(prompt(998, 2 * CS), make_kv(998, 2 * CS))
        assert any(replaced for replaced, _, _ in reads)  # rows vanished: every row read again
        _positions_hold_their_keys(store)
        for i, toks in enumerate(prompts):
            got = store.get(toks)
            if got is not None:
                np.testing.assert_array_equal(got, make_kv(200 + i, len(toks))[..., : got.shape[-2], :])
