"""Search benchmark: Table.search over a vector index vs numpy brute force, and BTREE lookups.

Measured side by side in one run:

* Vectors: ``--rows`` (default 200,000; ``--big`` 1,000,000) clustered float32 vectors of
  ``--dim`` (64) values (``--clusters`` Gaussian blobs), stored through ``Table`` with a declared
  ``pa.list_(pa.float32(), dim)`` column and committed. Index build time (``create_index``,
  IVF_PQ, the defaults) is reported. ``--queries`` (200) queries are stored vectors plus noise.
  Anchor: numpy brute force over the same vectors held in memory (``|x|^2 - 2 x.q`` with the
  norms precomputed, then ``argpartition``), which also gives the exact top 10. We report
  recall@10 of ``Table.search`` against it and per-query latency p50/p95 of both, with the
  ratio p50(search) / p50(numpy).
* Scalar: ``--scalar-rows`` (default 10,000,000; 0 skips) rows (id int64, value float64), one
  BTREE index on id; p50 of ``Table.scan(filter="id = X")`` point lookups, next to the same
  lookup on the same table before the index existed (a filtered full scan).

    python benchmarks/search.py [--big] [--rows N] [--scalar-rows N] [--queries 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from persisting.engine import Table  # noqa: E402
from persisting.engine.options import TableOptions  # noqa: E402


def clustered(rows: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Gaussian blobs around random centres: the shape embeddings usually have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 4
    labels = rng.integers(0, clusters, rows)
    return (centres[labels] + rng.standard_normal((rows, dim)).astype(np.float32)).astype(np.float32)


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p))


def bench_vectors(root: str, rows: int, dim: int, clusters: int, queries: int, nprobes: int | None,
                  refine: int | None) -> None:
    x = clustered(rows, dim, clusters)
    rng = np.random.default_rng(1)
    qs = x[rng.integers(0, rows, queries)] + rng.standard_normal((queries, dim)).astype(np.float32) * 0.5
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("emb", pa.list_(pa.float32(), dim))])
    t = Table(os.path.join(root, "vectors.lance"), schema=schema, options=TableOptions(durability="none"))
    step = 100_000
    for lo in range(0, rows, step):
        hi = min(rows, lo + step)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[lo:hi].ravel()), dim)
        t.append(pa.table({"id": pa.array(np.arange(lo, hi)), "emb": emb}, schema=schema))
        t.flush()
    t.compact()
    start = time.perf_counter()
    info = t.create_index("emb", kind="vector", metric="l2")
    build = time.perf_counter() - start

    norms = np.einsum("ij,ij->i", x, x)
    truth, brute = [], []
    for q in qs:
        s = time.perf_counter()
        d = norms - 2.0 * (x @ q)
        top = np.argpartition(d, 10)[:10]
        top = top[np.argsort(d[top])]
        brute.append(time.perf_counter() - s)
        truth.append(set(top.tolist()))
    for q in qs[:5]:  # warm the index cache
        t.search("emb", q, 10, columns=["id"], nprobes=nprobes, refine_factor=refine)
    lat, recall = [], []
    for q, want in zip(qs, truth):
        s = time.perf_counter()
        got = t.search("emb", q, 10, columns=["id"], nprobes=nprobes, refine_factor=refine)
        lat.append(time.perf_counter() - s)
        recall.append(len(want & set(got.column("id").to_pylist())) / 10)
    t.close()
    print(f"vectors: {rows:,} x {dim}-d float32, {clusters} clusters, {queries} queries; index {info.index_type} "
          f"({info.metric}), built in {build:.2f} s; nprobes={nprobes or 'default'} refine={refine or 'default'}")
    print(f"  {'':24}{'p50 ms':>10}{'p95 ms':>10}{'recall@10':>12}")
    print(f"  {'Table.search':24}{pct(lat, 50) * 1e3:>10.3f}{pct(lat, 95) * 1e3:>10.3f}{statistics.mean(recall):>12.4f}")
    print(f"  {'numpy brute force':24}{pct(brute, 50) * 1e3:>10.3f}{pct(brute, 95) * 1e3:>10.3f}{1.0:>12.4f}")
    print(f"  ratio p50 search / brute force: {pct(lat, 50) / pct(brute, 50):.3f}x")


def bench_scalar(root: str, rows: int, lookups: int) -> None:
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("value", pa.float64())])
    t = Table(os.path.join(root, "scalar.lance"), schema=schema, options=TableOptions(durability="none"))
    step = 1_000_000
    for lo in range(0, rows, step):
        hi = min(rows, lo + step)
        ids = np.arange(lo, hi)
        t.append(pa.table({"id": pa.array(ids), "value": pa.array(ids * 0.5)}, schema=schema))
        t.flush()
    rng = np.random.default_rng(2)
    keys = rng.integers(0, rows, lookups).tolist()

    def lookup_times(n: int) -> list[float]:
        out = []
        for key in keys[:n]:
            s = time.perf_counter()
            got = t.scan(filter=f"id = {key}")
            out.append(time.perf_counter() - s)
            assert got.num_rows == 1 and got.column("id")[0].as_py() == key
        return out

    scan = lookup_times(min(lookups, 10))
    start = time.perf_counter()
    t.create_index("id", kind="btree")
    build = time.perf_counter() - start
    lookup_times(5)
    indexed = lookup_times(lookups)
    t.close()
    print(f"scalar: {rows:,} rows, BTREE on id built in {build:.2f} s; point lookups Table.scan(filter='id = X')")
    print(f"  {'':24}{'p50 ms':>10}{'p95 ms':>10}")
    print(f"  {'with BTREE index':24}{pct(indexed, 50) * 1e3:>10.3f}{pct(indexed, 95) * 1e3:>10.3f}")
    print(f"  {'without (full scan)':24}{pct(scan, 50) * 1e3:>10.3f}{pct(scan, 95) * 1e3:>10.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--big", action="store_true", help="1,000,000 vectors")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=256)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nprobes", type=int, default=None)
    p.add_argument("--refine", type=int, default=None)
    p.add_argument("--scalar-rows", type=int, default=10_000_000)
    p.add_argument("--lookups", type=int, default=200)
    p.add_argument("--skip-vectors", action="store_true")
    p.add_argument("--tmp", default=None)
    a = p.parse_args()
    root = tempfile.mkdtemp(prefix="persisting-search-", dir=a.tmp)
    try:
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        if not a.skip_vectors:
            bench_vectors(root, 1_000_000 if a.big else a.rows, a.dim, a.clusters, a.queries, a.nprobes, a.refine)
        if a.scalar_rows:
            bench_scalar(root, a.scalar_rows, a.lookups)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
