"""Ray actors logging into one TrajectoryStore, and ray.data reading it back.

1. Writing: N Ray actors (``--actors 1,4``) each log ``--episodes`` episodes of ``--steps``
   steps (``add_step`` with an 8-float observation and a reward, a flush every 4 episodes)
   into one store at once; aggregate steps/s, timed from the first ``run`` call to the last
   return (actors are started and their stores opened before the clock starts).
2. Reading: ``read_steps(path)`` materialised (rows/s) against the anchor, a bare
   ``ray.data.read_lance`` of the same steps table, in the same run.

Both on local disk and on S3 (a moto server on loopback, started here; ``--no-s3`` skips it).
Run: ``python benchmarks/ray_trajectory.py [--actors 1,4 --episodes 20 --steps 200]``.
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # benchmarks/queue*.py must not shadow the stdlib ``queue``

import argparse
import shutil
import tempfile
import time
import uuid
from typing import Any

import numpy as np
import ray
import ray.data

from persisting.trajectory.ray import SharedStore, read_steps, steps_uri


@ray.remote(num_cpus=0)
class Logger:
    def __init__(self, shared: SharedStore, actor: int) -> None:
        self.store = shared.open()
        self.actor = actor

    def ready(self) -> None:
        return None

    def run(self, episodes: int, steps: int) -> int:
        obs = np.arange(8, dtype=np.float32)
        for e in range(episodes):
            with self.store.episode(actor=self.actor) as ep:
                for t in range(steps):
                    ep.add_step(obs=obs + t, reward=float(t))
            if (e + 1) % 4 == 0:
                self.store.flush()
        self.store.flush()
        return episodes * steps

    def close(self) -> None:
        self.store.close()


def write(shared: SharedStore, actors: int, episodes: int, steps: int) -> float:
    loggers = [Logger.options(**shared.actor_options()).remote(shared, a) for a in range(actors)]
    ray.get([lg.ready.remote() for lg in loggers])
    t = time.perf_counter()
    total = sum(ray.get([lg.run.remote(episodes, steps) for lg in loggers]))
    elapsed = time.perf_counter() - t
    ray.get([lg.close.remote() for lg in loggers])
    for lg in loggers:
        ray.kill(lg)
    return total / elapsed


def read(shared: SharedStore) -> tuple[float, float]:
    rates = []
    for make in (lambda: read_steps(shared.path, storage_options=shared.storage_options),
                 lambda: ray.data.read_lance(steps_uri(shared.path), storage_options=shared.storage_options)):
        best = 0.0
        for _ in range(2):
            t = time.perf_counter()
            n = make().materialize().count()
            best = max(best, n / (time.perf_counter() - t))
        rates.append(best)
    return rates[0], rates[1]


def s3_store(tmp: str) -> tuple[Any, dict[str, str], str]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                 aws_secret_access_key="k").create_bucket(Bucket=bucket)
    options = {"aws_access_key_id": "k", "aws_secret_access_key": "k", "aws_endpoint": endpoint,
               "aws_region": "us-east-1", "allow_http": "true"}
    return server, options, bucket


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--actors", default="1,4")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--no-s3", action="store_true")
    args = p.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024, log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    tmp = tempfile.mkdtemp(prefix="ray-traj-bench-")
    server = None
    try:
        backends = ["local"] + ([] if args.no_s3 else ["s3"])
        print(f"{args.episodes} episodes x {args.steps} steps per actor; load average {os.getloadavg()[0]:.1f}")
        print("| storage | actors | write steps/s | x one actor | read_steps rows/s | read_lance rows/s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for backend in backends:
            base = None
            options: dict[str, str] | None = None
            bucket = ""
            if backend == "s3":
                server, options, bucket = s3_store(tmp)
            for n in [int(x) for x in args.actors.split(",")]:
                name = f"run-{backend}-{n}"
                path = os.path.join(tmp, name) if backend == "local" else f"s3://{bucket}/{name}"
                shared = SharedStore.create(path, wal_dir=os.path.join(tmp, name + ".wal"), storage_options=options)
                rate = write(shared, n, args.episodes, args.steps)
                base = base or rate
                ours, anchor = read(shared)
                print(f"| {backend} | {n} | {rate:,.0f} | {rate / base:.2f}x | {ours:,.0f} | {anchor:,.0f} |", flush=True)
    finally:
        ray.shutdown()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
