"""Crash: a child process writes through Pulsing with ``enable_wal=True, wal_sync_interval=0``,
reports what ``put`` acknowledged and is SIGKILLed at a random moment; a new process reads the
queue back through Pulsing and must find every acknowledged record exactly once.

The child uses ``flush_threshold=40`` and 8 KiB WAL segments, so Lance commits, WAL segment
drops and rotations all happen under the kills, and a second writer is killed after it
recovered what the first one left (recovery after recovery). What was attempted but never
acknowledged may or may not be there, but at most once, whole, and in order.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pulsing")

CHILD = Path(__file__).with_name("pulsing_queue_child.py")
TOPIC = "crashq"
BUCKETS = 3


def record(seq: int) -> dict[str, Any]:
    return {"id": f"user-{seq % 11}", "seq": seq, "payload": f"payload-{seq}-" + "z" * (seq % 17)}


def spawn(*args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(CHILD), *args], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def write_then_kill(storage: str, first: int, acks_before_kill: int, rng: random.Random) -> tuple[set[int], set[int]]:
    """Run a writer until it has acknowledged ``acks_before_kill`` records (plus a random
    moment more), SIGKILL it; return (attempted, acknowledged) seqs."""
    child = spawn("write", storage, TOPIC, str(BUCKETS), str(first))
    assert child.stdout is not None
    attempted: set[int] = set()
    acked: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        for line in child.stdout:
            kind, _, value = line.strip().partition(" ")
            if kind == "T":
                attempted.add(int(value))
            elif kind == "A":
                acked.add(int(value))
                if len(acked) == acks_before_kill:
                    time.sleep(rng.uniform(0, 0.05))  # land the kill anywhere in a put or a flush
                    break
            assert time.monotonic() < deadline, "writer too slow"
        else:
            pytest.fail(f"writer exited early: {child.stderr.read() if child.stderr else ''}")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        rest = child.stdout.read()  # what the iterator read ahead, and what the pipe still holds
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    for line in rest.splitlines():
        kind, _, value = line.strip().partition(" ")
        if kind == "T":
            attempted.add(int(value))
        elif kind == "A":
            acked.add(int(value))
    assert child.returncode == -signal.SIGKILL
    return attempted, acked


def read_back(storage: str) -> list[dict[str, Any]]:
    child = spawn("read", storage, TOPIC, str(BUCKETS))
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_sigkilled_writer_loses_no_acknowledged_record(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("PERSISTING_TEST_SEED", "7")))
    storage = str(tmp_path / "queues")
    attempted, acked = write_then_kill(storage, 0, rng.randint(60, 140), rng)
    more_attempted, more_acked = write_then_kill(storage, max(attempted) + 1, rng.randint(60, 140), rng)
    attempted |= more_attempted
    acked |= more_acked

    rows = read_back(storage)
    got = [r["seq"] for r in rows]
    assert len(got) == len(set(got)), "a record was applied twice"
    missing = acked - set(got)
    assert not missing, f"acknowledged records lost: {sorted(missing)[:20]}"
    assert set(got) <= attempted, "a record nobody wrote appeared"
    per_bucket: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        bucket = r.pop("bucket")
        assert r == record(r["seq"]), f"garbled record {r}"
        per_bucket[bucket].append(r["seq"])
    for bucket, seqs in per_bucket.items():
        assert seqs == sorted(seqs), f"bucket {bucket} out of write order"
    assert len(per_bucket) == BUCKETS


@pytest.mark.soak
def test_soak_many_kills_in_a_row(tmp_path: Path) -> None:
    """Ten writers killed in a row on the same queue, then one read."""
    rng = random.Random(int(os.environ.get("PERSISTING_TEST_SEED", "11")))
    storage = str(tmp_path / "queues")
    attempted: set[int] = set()
    acked: set[int] = set()
    for _ in range(10):
        a, k = write_then_kill(storage, max(attempted, default=-1) + 1, rng.randint(20, 400), rng)
        attempted |= a
        acked |= k
    got = [r["seq"] for r in read_back(storage)]
    assert len(got) == len(set(got))
    assert acked <= set(got) <= attempted
