"""A two-node Pulsing cluster on 127.0.0.1, in two processes: this test's process is the seed
node and writes; a child process joins, and both register the backends and run a
StorageManager. Buckets land on both nodes, and a reader on the child reads every record,
including those in buckets the writer's node owns."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pul = pytest.importorskip("pulsing")
streaming = pytest.importorskip("pulsing.streaming")

import persisting.queue

CHILD = Path(__file__).with_name("pulsing_queue_child.py")
TOPIC = "clustered"
BUCKETS = 16  # with two nodes, every bucket on one node has odds 2 / 2**16
RECORDS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record(seq: int) -> dict[str, Any]:
    return {"id": f"user-{seq}", "seq": seq, "payload": f"payload-{seq}-" + "z" * (seq % 17)}


def spawn_node(storage: str, addr: str, seed: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), "node", storage, TOPIC, str(BUCKETS), addr, seed],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def readline(child: subprocess.Popen[str], timeout: float) -> str:
    assert child.stdout is not None
    line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, child.stdout.readline), timeout)
    if not line:
        err = child.stderr.read() if child.stderr else ""
        raise AssertionError(f"cluster child exited: {err[-3000:]}")
    return line.strip()


def test_two_node_cluster_spreads_buckets_and_reads_everywhere(tmp_path: Path) -> None:
    persisting.queue.register()
    storage = str(tmp_path / "queues")
    seed = f"127.0.0.1:{free_port()}"
    other = f"127.0.0.1:{free_port()}"
    options = {"enable_wal": True, "flush_threshold": 40}

    async def go() -> None:
        system = await pul.actor_system(addr=seed)
        child = await asyncio.to_thread(spawn_node, storage, other, seed)
        try:
            assert await readline(child, 60) == "READY"
            for _ in range(200):
                alive = [m for m in await system.members() if (m.get("status") or m.get("state")) == "Alive"]
                if len(alive) >= 2:
                    break
                await asyncio.sleep(0.1)
            assert len(alive) == 2, alive
            await asyncio.sleep(1.1)  # StorageManager caches the member list for one second

            writer = await streaming.write_queue(system, TOPIC, num_buckets=BUCKETS, storage_path=storage,
                                                 backend="persisting", backend_options=options)
            for seq in range(RECORDS):
                await writer.put(record(seq))
            manager = await streaming.get_storage_manager(system)
            here = sorted(b["bucket_id"] for b in await manager.list_buckets() if b["topic"] == TOPIC)

            assert child.stdin is not None
            child.stdin.write("READ\n")
            child.stdin.flush()
            report = json.loads(await readline(child, 120))
            there = report["owned"]
            assert here and there, f"buckets all on one node: here={here} there={there}"
            assert sorted(here + there) == list(range(BUCKETS))
            rows = report["rows"]
            assert sorted(r["seq"] for r in rows) == list(range(RECORDS))
            for r in rows:
                bucket = r.pop("bucket")
                assert r == record(r["seq"])
                assert writer.queue.get_bucket_id(r["id"]) == bucket
            child.stdin.write("EXIT\n")
            child.stdin.flush()
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
            child.communicate()
            await system.shutdown()
            await asyncio.sleep(0.3)
            gc.collect()

    asyncio.run(go())
