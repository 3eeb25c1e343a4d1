"""The WAL on object storage (moto's S3 server, its own process on loopback) vs the local WAL.

    python benchmarks/queue_object_wal.py [--records N] [--threads N]
    (also run by: python benchmarks/queue_backends.py --object-wal)

1. Table.append of one small row from ``--threads`` threads at once (the shape a bucket actor
   with concurrent producers or an RL actor pool gives): per-append latency p50/p99 and
   records/s, durability ``always`` (acknowledged once durable) on the local WAL (fdatasync
   per append) and on S3 with group-commit windows 0/5/10/50 ms; local ``batch`` (1 s) as the
   no-wait anchor.
2. PersistingBackend.put called directly, one producer awaiting each put: local WAL fsynced
   per write vs ``wal="object"`` (bucket and WAL on S3).
3. Node-death recovery: a writer process is SIGKILLed after its acknowledged appends; time
   until a new owner of the same identity has opened (lease wait + replay), for a 2 s lease.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import boto3

from persisting.engine import Table, TableOptions
from persisting.engine.remote_wal import remote_wal_uri
from persisting.queue import PersistingBackend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    opts = {"aws_access_key_id": "k", "aws_secret_access_key": "k", "aws_endpoint": endpoint,
            "aws_region": "us-east-1", "allow_http": "true"}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="k")
    for _ in range(100):
        try:
            s3.create_bucket(Bucket="bench-wal")
            return proc, opts
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.1)
    raise RuntimeError("moto server did not start")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def threaded_appends(table: Table, records: int, threads: int) -> tuple[list[float], float]:
    lat: list[float] = []
    lock = threading.Lock()
    per = records // threads

    def work(k: int) -> None:
        mine = []
        for i in range(per):
            t0 = time.perf_counter()
            table.append([{"k": k, "i": i, "text": "event payload " + "x" * 64}])
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    start = time.perf_counter()
    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return lat, time.perf_counter() - start


def engine_rows(opts: dict[str, str], records: int, threads: int, root: str) -> list[tuple[str, list[float], float]]:
    out = []
    cases: list[tuple[str, dict[str, Any], bool]] = [
        ("local WAL, batch 1 s (ack before fsync)", dict(durability="batch"), False),
        ("local WAL, always (fdatasync per append)", dict(durability="always"), False),
    ] + [(f"S3 WAL, always, group window {w * 1000:.0f} ms", dict(durability="always", wal_group_interval=w), True)
         for w in (0.0, 0.005, 0.01, 0.05)]
    for n, (name, kw, remote) in enumerate(cases):
        options = TableOptions(flush_rows=1_000_000, **kw)
        if remote:
            uri = f"s3://bench-wal/t{n}.lance"
            table = Table(uri, storage_options=opts, wal_uri=remote_wal_uri(uri), writer_id="w", options=options)
        else:
            table = Table(os.path.join(root, f"t{n}.lance"), options=options)
        try:
            lat, secs = threaded_appends(table, records, threads)
        finally:
            table.close()
        out.append((name, lat, len(lat) / secs))
    return out


async def backend_rows(opts: dict[str, str], records: int, root: str) -> list[tuple[str, list[float], float]]:
    cases = [
        ("PersistingBackend, local WAL fsync per put", {"enable_wal": True, "wal_sync_interval": 0}),
        ("PersistingBackend, wal='object' on S3", {"uri": "s3://bench-wal/queues", "storage_options": opts, "wal": "object"}),
    ]
    out = []
    for n, (name, options) in enumerate(cases):
        backend = PersistingBackend(bucket_id=n, storage_path=os.path.join(root, f"q{n}"), **options)
        lat = []
        start = time.perf_counter()
        for i in range(records):
            t0 = time.perf_counter()
            await backend.put({"id": f"u{i}", "seq": i, "text": "event payload " + "x" * 64})
            lat.append(time.perf_counter() - t0)
        secs = time.perf_counter() - start
        backend.close()
        out.append((name, lat, records / secs))
    return out


CHILD = r"""
import json, sys
from persisting.engine import Table, TableOptions
from persisting.engine.remote_wal import remote_wal_uri
a = json.loads(sys.argv[1])
t = Table(a["uri"], storage_options=a["opts"], wal_uri=remote_wal_uri(a["uri"]), writer_id="dead",
          options=TableOptions(durability="always", wal_lease_seconds=a["lease"], flush_rows=1_000_000))
for i in range(a["n"]):
    t.append([{"i": i, "text": "x" * 64}])
print("acked", flush=True)
import time; time.sleep(600)
"""


def recovery(opts: dict[str, str], acked: int, lease: float) -> tuple[float, float]:
    uri = "s3://bench-wal/recover.lance"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps({"uri": uri, "opts": opts, "n": acked, "lease": lease})],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "acked"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.perf_counter()
    table = Table(uri, storage_options=opts, wal_uri=remote_wal_uri(uri), writer_id="dead",
                  options=TableOptions(durability="always", wal_lease_seconds=lease))
    took = time.perf_counter() - killed
    assert table.count() == acked, table.count()
    table.close()
    return took, lease


def show(rows: list[tuple[str, list[float], float]]) -> None:
    print(f"{'case':48} {'p50 ms':>8} {'p99 ms':>8} {'records/s':>10}")
    for name, lat, rate in rows:
        print(f"{name:48} {pct(lat, 0.5) * 1e3:8.2f} {pct(lat, 0.99) * 1e3:8.2f} {rate:10,.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=800, help="appends per engine case (default 800)")
    parser.add_argument("--threads", type=int, default=16, help="appending threads (default 16)")
    parser.add_argument("--puts", type=int, default=300, help="sequential backend puts per case (default 300)")
    args = parser.parse_args(argv)
    print(f"# {platform.node()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}; moto S3 server on loopback")
    moto, opts = start_moto()
    root = tempfile.mkdtemp(prefix="bench-objwal-")
    try:
        print(f"\n## Table.append from {args.threads} threads, {args.records} rows per case")
        show(engine_rows(opts, args.records, args.threads, root))
        print(f"\n## PersistingBackend.put, one producer, {args.puts} puts")
        show(asyncio.run(backend_rows(opts, args.puts, root)))
        took, lease = recovery(opts, 500, 2.0)
        print(f"\n## recovery: SIGKILL -> new owner open with 500 acknowledged rows replayed: {took:.2f} s "
              f"(lease {lease:.0f} s; in a Pulsing cluster add its ~15-30 s failure detection)")
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
