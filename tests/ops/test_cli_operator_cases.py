"""What an operator meets: a writer killed before its first commit, large tables, a closed pipe,
an existing export file, compaction on a full disk, topics. Every command is a real subprocess."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from persisting.engine import Table, TableOptions

from .conftest import run_cli, run_json

KILLED_ROWS = 40

_KILLED_WRITER = """
import os, signal, sys
from persisting.engine import Table, TableOptions
t = Table(sys.argv[1], options=TableOptions(durability="always"))
for i in range(int(sys.argv[2])):
    t.append([{"i": i, "name": f"row {i}"}])
os.kill(os.getpid(), signal.SIGKILL)  # before any flush: the rows are only in its WAL
"""


def _kill_before_first_flush(uri: Path, rows: int) -> None:
    out = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(uri), str(rows)], capture_output=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def wal_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``new/events``: the per-writer WAL layout; ``old/events``: the single-writer one."""
    root = tmp_path_factory.mktemp("walonly")
    _kill_before_first_flush(root / "new" / "events.lance", KILLED_ROWS)
    _kill_before_first_flush(root / "old" / "events.lance", KILLED_ROWS)
    wal = root / "old" / "events.wal"
    (writer,) = (wal / "writers").iterdir()
    for seg in writer.glob("*.wal"):
        seg.rename(wal / seg.name)
    shutil.rmtree(wal / "writers")
    assert not (root / "new" / "events.lance").exists() and not (root / "old" / "events.lance").exists()
    return root


@pytest.mark.parametrize("layout", ["new", "old"])
def test_a_store_with_rows_only_in_the_wal_is_listed_inspected_verified_exported(
        wal_only: Path, layout: str, tmp_path: Path) -> None:
    before = sorted(str(p.relative_to(wal_only)) for p in wal_only.rglob("*"))
    store = wal_only / layout
    (table,) = run_json("ls", str(store))["stores"][0]["tables"]
    assert (table["rows"], table["committed_rows"], table["pending_rows"]) == (KILLED_ROWS, 0, KILLED_ROWS)
    assert table["has_dataset"] is False
    doc = run_json("inspect", str(store))
    assert doc["rows"] == KILLED_ROWS and doc["tables"][0]["schema"] == {"i": "int64", "name": "string"}
    report = run_json("verify", str(store))
    assert report["healthy"] and report["wal_frames"] == KILLED_ROWS
    out = tmp_path / "events.parquet"
    res = run_cli("export", str(store), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(pq.read_table(out).column("i").to_pylist()) == list(range(KILLED_ROWS))
    assert sorted(str(p.relative_to(wal_only)) for p in wal_only.rglob("*")) == before  # read-only


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A table of 5,000 rows in 50 commits (50 small fragments), version 10 tagged."""
    root = tmp_path_factory.mktemp("big")
    with Table(str(root / "t" / "events.lance"), options=TableOptions(durability="none")) as t:
        for c in range(50):
            t.append([{"i": c * 100 + i, "name": "x" * 200} for i in range(100)])
            t.flush()
            if c == 10:
                t.tag("keep")
    return root


def _progress_lines(stderr: str, title: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{title} [")]


def test_verify_and_export_report_progress_per_batch(big: Path, tmp_path: Path) -> None:
    res = run_cli("verify", str(big))
    assert res.returncode == 0, res.stderr
    lines = _progress_lines(res.stderr, "verify")
    assert len(lines) >= 4 and "/5000 rows" in lines[0] and any(" 5000/5000 rows" in line for line in lines)
    assert "healthy" in res.stdout and "verify [" not in res.stdout  # stdout stays the report
    res = run_cli("export", str(big / "t"), "--out", str(tmp_path / "e.parquet"))
    assert res.returncode == 0, res.stderr
    assert _progress_lines(res.stderr, "export") and "5000/5000 rows" in res.stderr


def test_compact_does_not_grow_the_store_and_keeps_tagged_versions(big: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(big, root)
    before = _tree_bytes(root)
    res = run_cli("compact", str(root))
    assert res.returncode == 0, res.stderr
    assert _progress_lines(res.stderr, "compact")
    after = _tree_bytes(root)
    assert after <= before, (before, after)
    with Table(str(root / "t" / "events.lance"), read_only=True) as t:
        assert t.count() == 5000
        assert "keep" in t.tags()
        with t.checkout("keep") as old:
            assert old.count() == 1100
    assert run_json("verify", str(root))["healthy"]


def test_export_refuses_to_overwrite_without_force(big: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.parquet"
    out.write_bytes(b"precious")
    res = run_cli("export", str(big / "t"), "--out", str(out))
    assert res.returncode == 2 and "--force" in res.stderr
    assert out.read_bytes() == b"precious"
    res = run_cli("export", str(big / "t"), "--out", str(out), "--force")
    assert res.returncode == 0, res.stderr
    assert pq.read_table(out).num_rows == 5000 and not list(tmp_path.glob("*.partial"))


def test_a_closed_pipe_ends_quietly(big: Path) -> None:
    """``persisting inspect ... | head``: the reader has gone when the output is written."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: a small pipe, as head leaves it
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "persisting.cli", "inspect", str(big / "t")],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


def test_topics_in_ls_inspect_and_export(tmp_path: Path) -> None:
    pul = pytest.importorskip("pulsing")
    from persisting.queue import write_queue

    root = tmp_path / "queues"

    async def go() -> None:
        system = await pul.actor_system()
        try:
            for topic in ("payments", "public-feed"):
                w = await write_queue(system, topic, num_buckets=2, storage_path=str(root), backend="persisting",
                                      backend_options={"enable_wal": True})
                for i in range(10):
                    await w.put({"id": f"k{i}", "seq": i})
                await w.flush()
        finally:
            await system.shutdown()
            await asyncio.sleep(0.3)
            gc.collect()

    asyncio.run(go())
    stores = run_json("ls", str(root))["stores"]
    assert sorted((s["kind"], s["topic"], s["rows"]) for s in stores) == [
        ("queue", "payments", 10), ("queue", "public-feed", 10)]
    assert "(topic payments)" in run_cli("ls", str(root)).stdout
    assert run_json("inspect", str(root / "payments"))["queue"]["topic"] == "payments"
    out = tmp_path / "payments.parquet"
    res = run_cli("export", str(root / "payments"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["seq"] for r in rows) == list(range(10)) and {r["topic"] for r in rows} == {"payments"}
    assert {r["bucket"] for r in rows} <= {"0", "1"}
