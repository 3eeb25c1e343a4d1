"""``persisting ls / inspect / export`` and ``search_topic`` on s3:// (moto), with explicit
``--storage-option`` flags (``storage_options=`` in Python) and ``--wal-dir``: a trajectory
store, a ParamStore, a queue topic and a plain table, including rows a SIGKILLed writer left only
in a WAL (the queue's object-store WAL, the table's local one). Before, every one of these
commands exited 2 with "does not exist; pass a directory" and search_topic took no options."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("boto3", reason="boto3 is not installed")

from persisting.errors import NotFoundError
from persisting.params import ParamStore
from persisting.queue import PersistingBackend
from persisting.queue.search import search_topic
from persisting.trajectory import TrajectoryStore

BUCKET = "persisting-cli-s3"

# a writer SIGKILLed after its acknowledgements: 3 queue records only in bucket 1's object-store
# WAL (never committed), and a plain table with 2 committed rows and 3 only in its local WAL
_KILLED = textwrap.dedent(
    """
    import asyncio, json, sys
    from persisting.engine import Table, TableOptions
    from persisting.queue import PersistingBackend
    a = json.loads(sys.argv[1])
    async def main():
        b = PersistingBackend(bucket_id=1, storage_path=a["node"], uri=a["queues"], storage_options=a["opts"],
                              wal="object", topic="t")
        for i in range(3):
            await b.put({"id": f"w{i}", "v": [10.0 + i, 1.0]})
        return b  # kept open: nothing commits its records before the kill
    bucket = asyncio.run(main())
    t = Table(a["table"], storage_options=a["opts"], wal_dir=a["wal"], options=TableOptions(durability="always"))
    t.append([{"x": 0}, {"x": 1}])
    t.flush()
    t.append([{"x": 2}, {"x": 3}, {"x": 4}])
    print("ready", flush=True)
    import time; time.sleep(120)
    """
)


def _flags(opts: dict[str, str]) -> list[str]:
    return [a for k, v in opts.items() for a in ("--storage-option", f"{k}={v}")]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "persisting.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture(scope="module")
def site(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Stores of every kind under s3://BUCKET, written and closed (or killed) before the tests."""
    boto3 = pytest.importorskip("boto3")
    key, region = "testing", "us-east-1"  # as tests/conftest.py's s3_options (a function-scoped fixture)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name=region, aws_access_key_id=key,
                 aws_secret_access_key=key).create_bucket(Bucket=BUCKET)
    opts = {"aws_access_key_id": key, "aws_secret_access_key": key, "aws_endpoint": s3_endpoint,
            "aws_region": region, "allow_http": "true"}
    wal = tmp_path_factory.mktemp("wal")
    root = f"s3://{BUCKET}"
    with TrajectoryStore(f"{root}/runs", storage_options=opts, wal_dir=str(wal / "runs")) as store:
        for e in range(2):
            with store.episode() as ep:
                for t in range(3):
                    ep.add_step(obs=np.full(4, e * 10 + t, np.float32), action=t, reward=1.0)
    weights = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(3, dtype=torch.bfloat16)}
    with ParamStore(f"{root}/ckpt", storage_options=opts, wal_dir=str(wal / "ckpt")) as ps:
        ps.save({"w": torch.zeros(3, 4), "b": torch.zeros(3, dtype=torch.bfloat16)}, step=1)
        ps.save(weights, step=2, tags=["best"])

    async def committed() -> None:
        b = PersistingBackend(bucket_id=0, storage_path=str(wal / "node-a"), uri=f"{root}/queues",
                              storage_options=opts, wal="object", topic="t")
        for i in range(4):
            await b.put({"id": f"c{i}", "v": [float(i), 0.0]})
        await b.flush()
        b.close()

    asyncio.run(committed())
    args = {"node": str(wal / "node-b"), "queues": f"{root}/queues", "opts": opts,
            "table": f"{root}/plain/events.lance", "wal": str(wal / "plain" / "events.wal")}
    child = subprocess.Popen([sys.executable, "-c", _KILLED, json.dumps(args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready", child.stderr
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    return {"root": root, "opts": opts, "wal": wal, "weights": weights}


def test_ls_lists_every_store_on_s3_with_rows_still_in_a_wal(site: dict[str, Any]) -> None:
    root, flags = site["root"], _flags(site["opts"])
    out = _cli("ls", root, *flags, "--wal-dir", str(site["wal"] / "plain"), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    listed = {s["path"]: s for s in json.loads(out.stdout)["stores"]}
    assert {p: s["kind"] for p, s in listed.items()} == {
        f"{root}/ckpt": "params", f"{root}/plain/events.lance": "table", f"{root}/queues/t": "queue",
        f"{root}/runs": "trajectory"}
    buckets = {t["name"]: (t["committed_rows"], t["pending_rows"], t["has_dataset"])
               for t in listed[f"{root}/queues/t"]["tables"]}
    assert buckets == {"bucket_0": (4, 0, True), "bucket_1": (0, 3, False)}  # acknowledged, never committed
    assert listed[f"{root}/queues/t"]["topic"] == "t"
    events = listed[f"{root}/plain/events.lance"]["tables"][0]
    assert (events["committed_rows"], events["pending_rows"]) == (2, 3) and events["wal_bytes"] > 0
    assert listed[f"{root}/runs"]["rows"] == 2 + 6 + 2  # episodes, steps, the id table's 2 commits
    assert all(s["last_write"] and s["bytes"] > 0 for s in listed.values())
    # without --wal-dir the local WAL is not on this machine's view: committed rows only
    text = _cli("ls", root + "/", *flags)
    assert text.returncode == 0, text.stderr
    assert "plain/events.lance" in text.stdout and "queues/t (topic t)" in text.stdout
    assert "bucket_1" in text.stdout and "rows only in its WAL" in text.stderr


def test_inspect_each_kind_on_s3(site: dict[str, Any]) -> None:
    root, flags = site["root"], _flags(site["opts"])
    queue = _cli("inspect", f"{root}/queues/t", *flags, "--json")
    assert queue.returncode == 0, queue.stderr
    doc = json.loads(queue.stdout)
    assert doc["queue"]["records"] == 7
    assert [(b["bucket"], b["committed"], b["pending_in_wal"]) for b in doc["queue"]["buckets"]] == [
        ("0", 4, 0), ("1", 0, 3)]
    assert doc["tables"][1]["schema"] == {"id": "string", "v": "list<item: double>"}  # replayed from its WAL
    ckpt = _cli("inspect", f"{root}/ckpt", *flags)
    assert ckpt.returncode == 0, ckpt.stderr
    assert "2 checkpoints" in ckpt.stdout and "best" in ckpt.stdout
    runs = _cli("inspect", f"{root}/runs", *flags, "--json")
    assert runs.returncode == 0, runs.stderr
    detail = json.loads(runs.stdout)["trajectory"]
    assert (detail["episodes"], detail["steps"]) == (2, 6) and detail["status"] == {"complete": 2}
    steps = _cli("inspect", f"{root}/runs/steps.lance", *flags, "--json")  # one table of it, as locally
    assert steps.returncode == 0, steps.stderr
    assert [(t["name"], t["rows"]) for t in json.loads(steps.stdout)["tables"]] == [("steps", 6)]
    events = _cli("inspect", f"{root}/plain/events.lance", *flags, "--wal-dir", str(site["wal"] / "plain"))
    assert events.returncode == 0, events.stderr
    assert "rows 5 (committed 2, in WAL 3)" in events.stdout


def test_export_each_kind_from_s3(site: dict[str, Any], tmp_path: Path) -> None:
    root, flags = site["root"], _flags(site["opts"])
    out = _cli("export", f"{root}/ckpt", *flags, "--tag", "best", "--out", str(tmp_path / "best.safetensors"))
    assert out.returncode == 0, out.stderr
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "best.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in site["weights"].items()) and set(got) == {"w", "b"}
    out = _cli("export", f"{root}/runs", *flags, "--what", "steps", "--out", str(tmp_path / "steps.parquet"))
    assert out.returncode == 0, out.stderr
    steps = pq.read_table(tmp_path / "steps.parquet")
    assert steps.num_rows == 6 and sorted(steps.column("action").to_pylist()) == [0, 0, 1, 1, 2, 2]
    out = _cli("export", f"{root}/queues/t", *flags, "--out", str(tmp_path / "q.parquet"))
    assert out.returncode == 0, out.stderr
    q = pq.read_table(tmp_path / "q.parquet")
    assert sorted(zip(q.column("bucket").to_pylist(), q.column("id").to_pylist())) == [
        ("0", "c0"), ("0", "c1"), ("0", "c2"), ("0", "c3"), ("1", "w0"), ("1", "w1"), ("1", "w2")]
    out = _cli("export", f"{root}/plain/events.lance", *flags, "--wal-dir", str(site["wal"] / "plain"),
               "--out", str(tmp_path / "events.parquet"))
    assert out.returncode == 0, out.stderr
    assert sorted(pq.read_table(tmp_path / "events.parquet").column("x").to_pylist()) == [0, 1, 2, 3, 4]


def test_bad_input_exits_2_with_a_message(site: dict[str, Any], tmp_path: Path) -> None:
    root, flags = site["root"], _flags(site["opts"])
    empty = _cli("ls", f"{root}/nothing-here", *flags)
    assert empty.returncode == 2 and "holds no Persisting tables" in empty.stderr
    bad = _cli("inspect", f"{root}/runs", "--storage-option", "aws_endpoint")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    local = _cli("export", str(tmp_path), "--storage-option", "a=b", "--out", str(tmp_path / "x.parquet"))
    assert local.returncode == 2 and "s3://" in local.stderr
    several = _cli("export", root, *flags, "--out", str(tmp_path / "x.parquet"))
    assert several.returncode == 2 and "holds 4 stores" in several.stderr


def test_search_topic_on_s3_finds_committed_and_wal_only_records(site: dict[str, Any]) -> None:
    root, opts = site["root"], site["opts"]
    got = search_topic(f"{root}/queues", "t", "v", [10.9, 1.0], 3, storage_options=opts)
    assert got.column("id").to_pylist() == ["w1", "w0", "w2"]  # bucket 1: only in its object-store WAL
    assert got.column("bucket").to_pylist() == [1, 1, 1]
    near = search_topic(f"{root}/queues", "t", "v", [0.9, 0.0], 2, storage_options=opts, columns=["id"])
    assert near.column("id").to_pylist() == ["c1", "c0"]
    with pytest.raises(NotFoundError, match="no buckets"):
        search_topic(f"{root}/queues", "absent", "v", [0.0, 0.0], storage_options=opts)
