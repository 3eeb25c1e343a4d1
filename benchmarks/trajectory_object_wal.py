"""TrajectoryStore on S3 with its WALs on the object store (``wal="object"``) against the
anchor, the same store with a local ``wal_dir`` (``wal="local"``), side by side in one run.

On a moto S3 server on loopback started here, one writer process:

1. open: a writer open of an existing store (sessions, adoption check, first id block);
2. log: ``--episodes`` episodes of ``--steps`` steps (8-float observation, reward), each
   ended and made durable with ``sync()`` (every step acknowledged); steps/s and the p50/p99
   of one episode's ``sync()``; then the same without ``sync()`` (durability ``batch``: the
   WAL is written every ``wal_sync_interval`` in the background), steps/s;
3. close: commit everything and end the session.

Each configuration runs ``--repeat`` times, alternating, on fresh prefixes; medians are printed
with the ratio object/local. Run: ``python benchmarks/trajectory_object_wal.py``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import uuid
from typing import Any

import numpy as np

from persisting.trajectory import TrajectoryStore


def _moto() -> tuple[Any, dict[str, str], str]:
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                 aws_secret_access_key="k").create_bucket(Bucket="bench")
    opts = {"aws_access_key_id": "k", "aws_secret_access_key": "k", "aws_endpoint": endpoint,
            "aws_region": "us-east-1", "allow_http": "true"}
    return server, opts, "bench"


def run(wal: str, opts: dict[str, str], bucket: str, episodes: int, steps: int) -> dict[str, float]:
    uri = f"s3://{bucket}/{uuid.uuid4().hex[:8]}"
    kw: dict[str, Any] = {"wal": wal} if wal == "object" else {"wal_dir": tempfile.mkdtemp(prefix="bench-wal-")}
    with TrajectoryStore(uri, storage_options=opts, **kw) as store, store.episode() as ep:
        ep.add_step(obs=np.zeros(8, np.float32), reward=0.0)  # the tables exist before timing
    t = time.perf_counter()
    store = TrajectoryStore(uri, storage_options=opts, **kw)
    opened = time.perf_counter() - t
    obs = np.arange(8, dtype=np.float32)
    syncs = []
    t = time.perf_counter()
    for _ in range(episodes):
        with store.episode(kind="bench") as ep:
            for s in range(steps):
                ep.add_step(obs=obs + s, reward=float(s))
        t_sync = time.perf_counter()
        store.sync()
        syncs.append(time.perf_counter() - t_sync)
    logged = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(episodes):
        with store.episode(kind="bench") as ep:
            for s in range(steps):
                ep.add_step(obs=obs + s, reward=float(s))
    batch = time.perf_counter() - t
    t = time.perf_counter()
    store.close()
    closed = time.perf_counter() - t
    syncs.sort()
    return {"open_s": opened, "steps_per_s": episodes * steps / logged, "batch_steps/s": episodes * steps / batch, "sync_p50_ms": 1e3 * syncs[len(syncs) // 2],
            "sync_p99_ms": 1e3 * syncs[min(len(syncs) - 1, int(0.99 * len(syncs)))], "close_s": closed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    server, opts, bucket = _moto()
    try:
        results: dict[str, list[dict[str, float]]] = {"local": [], "object": []}
        for _ in range(a.repeat):
            for wal in ("local", "object"):
                results[wal].append(run(wal, opts, bucket, a.episodes, a.steps))
    finally:
        server.stop()
    med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in results.items()}
    print(f"{a.episodes} episodes x {a.steps} steps, sync after each episode, median of {a.repeat} (moto S3 on loopback)")
    print(f"{'metric':<14}{'wal=local':>12}{'wal=object':>12}{'object/local':>14}")
    for k in med["local"]:
        lo, ob = med["local"][k], med["object"][k]
        print(f"{k:<14}{lo:>12.3f}{ob:>12.3f}{ob / lo:>13.2f}x")


if __name__ == "__main__":
    main()
