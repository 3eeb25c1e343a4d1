"""Corruption sweep: damage every file of every store and read it all back.

For each store (engine Table, KVCacheStore, ParamStore, TrajectoryStore, queue LanceBackend)
a small store is built once; then for each of its files (data, blob and deletion files,
manifests, transaction files, WAL segments, digest records), on a fresh copy: bit flips at a
few seeded offsets, truncation to half, deletion. The copy is opened and read in full through
the public API and checked with ``persisting verify``. Every outcome must be a typed error
(``PersistingError``), a clean KV miss, or exactly what was written (the damaged bytes were not
used by what is read); never a different value. ``verify`` must flag every damaged file.

CI samples files and offsets (seeded); ``-m soak`` sweeps every file at more offsets.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from persisting import KVCacheStore, LanceBackend, ParamStore, Table, TableOptions, TrajectoryStore
from persisting.errors import PersistingError
from persisting.ops.verify import verify

SEED = 1414
# files whose damage nothing reads and nothing can check: Lance's version hint (a cache it
# rebuilds by listing), lock files (empty; flock only) and a WAL's ACTIVE record (it only
# detects a deleted newest segment: a damaged one loses no data, it just stops detecting)
UNCHECKED = ("latest_version_hint.json", ".lock", "LOCK", "-lock", "ACTIVE")


class TornTail(Exception):
    """A damaged last frame of the last WAL segment: to recovery it looks exactly like a write
    torn by a crash, so point-in-time recovery cuts it and reports it (``recovery_report.torn``)
    and verify warns. Counted apart: a reported loss of unflushed rows, not a wrong value."""


# -- stores: build once, read back everything through the public API --------------------------
def build_table(root: Path) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: Lance keeps it in a blob file of its own
    schema = None
    t = Table(str(root / "t.lance"), options=TableOptions(durability="always"), schema=schema)
    for i in range(3):
        t.append([{"i": i * 10 + j, "s": f"row-{i}-{j}", "f": i + j / 4, "blob": big if j == 0 else b"small%d" % j}
                  for j in range(4)])
        t.flush()
    t.delete("i = 11")
    for k in range(3):  # stay in the WAL (three frames): the store is copied mid-run, as a crash leaves it
        t.append([{"i": 90 + k, "s": f"in-the-wal-{k}", "f": 0.5, "blob": b"wal"}])
    shutil.copytree(root / "t.lance", root / "snap" / "t.lance")
    shutil.copytree(root / "t.wal", root / "snap" / "t.wal")
    t.close()
    shutil.rmtree(root / "t.lance")
    shutil.rmtree(root / "t.wal")
    for name in ("t.lance", "t.wal"):
        shutil.move(root / "snap" / name, root / name)
    shutil.rmtree(root / "snap")


def read_table(root: Path) -> Any:
    with Table(str(root / "t.lance"), read_only=True) as t:
        if t.recovery_report.torn:
            raise TornTail(t.recovery_report.torn)
        rows = t.scan().to_pylist()
        taken = t.take(list(range(t.count()))).to_pylist()
        blobs = t.read_blobs("blob", list(range(t.count())))
        return rows, taken, blobs, t.count("i > 5")


def _kv(tokens: list[int]) -> np.ndarray:
    """KV that depends only on the prefix, as a model's does (shared prefixes share chunks)."""
    prefix = np.cumsum(np.asarray(tokens, np.float32) + 1)
    per_token = np.arange(1, 2 * 16384 + 1, dtype=np.float32).reshape(2, 1, 1, 16384)
    return (prefix[None, None, :, None] * per_token).repeat(2, 1)  # 1 MiB chunks: Lance blob files


PROMPTS = [list(range(16)), list(range(8)) + [50 + i for i in range(8)], [7] * 12]


def build_kv(root: Path) -> None:
    with KVCacheStore(root, namespace="ns", chunk_size=4) as kv:
        for p in PROMPTS:
            kv.put(p, _kv(p))


def read_kv(root: Path) -> Any:
    with KVCacheStore(root, namespace="ns", chunk_size=4, read_only=True) as kv:
        out = []
        for p in PROMPTS:
            got = kv.get(p)
            out.append(None if got is None else np.asarray(got))
        return out


def expected_kv() -> Any:
    return [_kv(p) for p in PROMPTS]


def build_params(root: Path) -> None:
    with ParamStore(root) as ps:
        for step in (1, 2):
            state = {"w": np.arange(64, dtype=np.float32) * step, "big": np.arange(1 << 18, dtype=np.float32) + step, "b": np.ones(3, np.int64) * step, "lr": 0.1 * step}
            ps.save(state, step=step, metadata={"note": f"step-{step}"})


def read_params(root: Path) -> Any:
    with ParamStore(root, read_only=True) as ps:
        out = []
        for info in ps.list():
            state = ps.load(info.step)
            out.append((info.step, dict(info.metadata), {k: np.asarray(v).tobytes() if hasattr(v, "shape") else v
                                                         for k, v in sorted(state.items())}))
        return out


def build_traj(root: Path) -> None:
    with TrajectoryStore(str(root / "s")) as store:
        for e in range(3):
            with store.episode(env=f"env-{e}") as ep:
                for t in range(5):
                    ep.add_step(obs=np.full(4, t + e, np.float32), action=t, reward=float(t) / 3)


def read_traj(root: Path) -> Any:
    with TrajectoryStore(str(root / "s"), read_only=True) as store:
        eps = store.episodes()
        ids = eps.column("episode_id").to_pylist()
        steps = {i: {k: np.asarray(v).tobytes() for k, v in sorted(store.episode(i).items())} for i in ids}
        return eps.to_pylist(), steps


def build_queue(root: Path) -> None:
    async def go() -> None:
        b = LanceBackend(bucket_id=0, storage_path=str(root / "q"), batch_size=4)
        await b.put_batch([{"seq": i, "text": f"message {i}", "score": i / 7} for i in range(10)])
        await b.flush()
        await b.put_batch([{"seq": 10 + i, "text": f"late {i}", "score": 1.0} for i in range(3)])
        b.close()

    asyncio.run(go())


def read_queue(root: Path) -> Any:
    async def go() -> Any:
        b = LanceBackend(bucket_id=0, storage_path=str(root / "q"), batch_size=4)
        try:
            return await b.get(100, 0)
        finally:
            b.close()

    return asyncio.run(go())


STORES: dict[str, tuple[Callable[[Path], None], Callable[[Path], Any], Callable[[], Any] | None]] = {
    "table": (build_table, read_table, None),
    "kvcache": (build_kv, read_kv, expected_kv),
    "params": (build_params, read_params, None),
    "trajectory": (build_traj, read_traj, None),
    "queue": (build_queue, read_queue, None),
}


# -- damage ------------------------------------------------------------------------------------
def files_of(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def damage(path: Path, kind: str, offset: int) -> None:
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    else:
        with open(path, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0x10]))


def cases(root: Path, rng: random.Random, flips: int, max_files: int | None) -> list[tuple[str, str, int]]:
    files = files_of(root)
    if max_files is not None and len(files) > max_files:
        # keep every kind of file: one of each directory first, then a seeded sample
        by_dir: dict[str, list[str]] = {}
        for f in files:
            by_dir.setdefault(os.path.dirname(f), []).append(f)
        picked = {rng.choice(v) for v in by_dir.values()}
        rest = [f for f in files if f not in picked]
        picked.update(rng.sample(rest, max(0, min(len(rest), max_files - len(picked)))))
        files = sorted(picked)
    out = []
    for f in files:
        size = (root / f).stat().st_size
        if size:
            for off in sorted({rng.randrange(size) for _ in range(flips)}):
                out.append((f, "flip", off))
            out.append((f, "truncate", 0))
        out.append((f, "delete", 0))
    return out


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def classify(store: str, got: Any, expected: Any) -> str:
    if equal(got, expected):
        return "unaffected"
    if store == "kvcache" and all(g is None or equal(g, e[:, :, : g.shape[2]]) for g, e in zip(got, expected)):
        return "miss"  # a damaged chunk is not served: None, or the KV of the prefix before it
    return "wrong"


def sweep(tmp_path: Path, store: str, flips: int, max_files: int | None) -> Counter[str]:
    build, read, expect = STORES[store]
    base = tmp_path / "base"
    base.mkdir()
    build(base)
    expected = read(base)
    if expect is not None:
        assert equal(expected, expect()), "the undamaged store must read back what was written"
    assert verify(str(base)).healthy, "the undamaged store must verify healthy"
    rng = random.Random(f"{SEED}-{store}")
    counts: Counter[str] = Counter()
    failures: list[str] = []
    for i, (rel, kind, off) in enumerate(cases(base, rng, flips, max_files)):
        copy = tmp_path / f"c{i}"
        shutil.copytree(base, copy)
        damage(copy / rel, kind, off)
        what = f"{store}: {kind} {rel} @ {off}"
        counts["cases"] += 1
        try:
            outcome = classify(store, read(copy), expected)
        except PersistingError:
            outcome = "typed"
        except TornTail:
            outcome = "wal_tail_cut"
        except BaseException as exc:  # noqa: BLE001 - the point is to see everything that escapes
            if isinstance(exc, KeyboardInterrupt):
                raise
            outcome = "untyped"
            failures.append(f"{what}: untyped {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:160]}")
        if outcome == "wrong":
            failures.append(f"{what}: served wrong values")
        counts[outcome] += 1
        if not os.path.basename(rel).endswith(UNCHECKED):
            counts["verify_cases"] += 1
            try:
                report = verify(str(copy))
                # a damaged WAL segment whose frames are all applied, or its cut tail, is a
                # warning naming the file: what a crash leaves looks the same
                flagged = not report.healthy or (
                    rel.endswith(".wal") and any(os.path.basename(rel) in w.path for w in report.warnings))
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt):
                    raise
                flagged = False
                failures.append(f"{what}: verify raised {type(exc).__name__}: {exc}")
            counts["verify_flags" if flagged else "verify_missed"] += 1
            if not flagged and outcome != "wal_tail_cut":
                failures.append(f"{what}: verify called it healthy")
        shutil.rmtree(copy)
    print(f"\n{store}: {dict(counts)}")
    for f in failures[:40]:
        print("  " + f)
    assert not failures, f"{len(failures)} bad outcomes in {store}: {failures[:10]}"
    return counts


@pytest.mark.parametrize("store", list(STORES))
def test_corruption_sweep(tmp_path: Path, store: str) -> None:
    sweep(tmp_path, store, flips=2, max_files=12)


@pytest.mark.soak
@pytest.mark.parametrize("store", list(STORES))
def test_corruption_sweep_full(tmp_path: Path, store: str) -> None:
    sweep(tmp_path, store, flips=6, max_files=None)
