"""ls, inspect, verify, compact, gc and export, each run as a subprocess against real stores."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

Stores = Any  # the ``stores`` fixture (tests/ops/conftest.py)


def _by_kind(doc: dict) -> dict[str, dict]:
    return {s["kind"]: s for s in doc["stores"]}


def test_help_on_every_command(cli: Any) -> None:
    for cmd in (["ls"], ["inspect"], ["verify"], ["compact"], ["gc"], ["export"], ["metrics"], ["metrics", "serve"]):
        out = cli.run(*cmd, "--help")
        assert out.returncode == 0, (cmd, out.stderr)
        assert "usage: persisting " + " ".join(cmd) in out.stdout


def test_usage_errors_exit_2(tmp_path: Path, stores: Stores) -> None:
    assert stores.run("ls", str(tmp_path / "missing")).returncode == 2
    assert stores.run("ls").returncode == 2  # no PATH
    empty = stores.run("verify", str(tmp_path))
    assert empty.returncode == 2 and "holds no Persisting tables" in empty.stderr
    several = stores.run("inspect", str(stores.root))
    assert several.returncode == 2 and "pass one of them" in several.stderr
    wrong = stores.run("export", str(stores.root / "ckpt"), "--out", str(tmp_path / "x.parquet"))
    assert wrong.returncode == 2 and ".safetensors" in wrong.stderr


def test_ls_lists_every_store_with_rows_on_disk(stores: Stores) -> None:
    doc = stores.json("ls", str(stores.root))
    kinds = _by_kind(doc)
    assert {"params", "trajectory", "queue", "table"} <= set(kinds)
    assert kinds["params"]["rows"] == 3 + 3  # 3 manifests, 3 distinct chunks (step 1 deduplicated)
    queue = kinds["queue"]
    assert queue["rows"] == 2 * stores.QUEUE_RECORDS + 1 and len(queue["tables"]) == 2
    plain = kinds["table"]["tables"][0]
    assert (plain["committed_rows"], plain["pending_rows"]) == (stores.PLAIN_COMMITTED, stores.PLAIN_PENDING)
    assert plain["wal_bytes"] > 0 and plain["versions"] >= 1 and plain["last_write"]
    for s in doc["stores"]:
        assert s["bytes"] > 0
    text = stores.run("ls", str(stores.root))
    assert text.returncode == 0
    assert "params" in text.stdout and "bucket_1" in text.stdout and "LAST WRITE" in text.stdout


def test_inspect_each_kind(stores: Stores) -> None:
    ckpt = stores.json("inspect", str(stores.root / "ckpt"))["params"]
    assert [c["step"] for c in ckpt["checkpoints"]] == [0, 1, 2]
    assert ckpt["checkpoints"][1]["tags"] == ["best"] and ckpt["checkpoints"][1]["new_bytes"] == 0
    assert ckpt["dedup_ratio"] == pytest.approx(ckpt["logical_bytes"] / ckpt["stored_bytes"], rel=1e-3) and ckpt["dedup_ratio"] > 1

    traj = stores.json("inspect", str(stores.root / "traj"))["trajectory"]
    assert traj["episodes"] == 3 and traj["steps"] == 4 + 5 + 6
    assert traj["status"] == {"complete": 3} and traj["length"]["max"] == 6

    queue = stores.json("inspect", str(stores.root / "queue" / "orders"))["queue"]
    assert [(b["bucket"], b["records"], b["next_offset"]) for b in queue["buckets"]] == [
        ("0", stores.QUEUE_RECORDS, stores.QUEUE_RECORDS), ("1", stores.QUEUE_RECORDS + 1, stores.QUEUE_RECORDS + 1)]

    plain = stores.json("inspect", str(stores.root / "plain" / "events.lance"))
    table = plain["tables"][0]
    assert table["schema"] == {"i": "int64", "name": "string"}
    assert table["pending_rows"] == stores.PLAIN_PENDING and table["wal_bytes"] > 0

    if (stores.root / "kv").exists():
        kv = stores.json("inspect", str(stores.root / "kv"))["kvcache"]
        assert kv["namespaces"][0]["namespace"] == "llama" and kv["namespaces"][0]["entries"] == 3
        assert kv["namespaces"][0]["chunk_tokens"] == 4

    text = stores.run("inspect", str(stores.root / "ckpt"))
    assert text.returncode == 0 and "dedup ratio" in text.stdout and "best" in text.stdout


def test_verify_healthy_tree(stores: Stores) -> None:
    doc = stores.json("verify", str(stores.root))
    assert doc["healthy"] and doc["problems"] == []
    kv_payloads = 3 if (stores.root / "kv").exists() else 0
    assert doc["payloads_checked"] == 3 + (4 + 5 + 6) + kv_payloads  # chunks, frames, KV chunks
    assert doc["wal_frames"] >= 1
    text = stores.run("verify", str(stores.root))
    assert text.returncode == 0 and text.stdout.startswith("healthy")


def _flip_in(root: Path, pattern: bytes) -> str:
    """Flip one byte of ``pattern`` where it is stored under ``root``; return the file."""
    for path in sorted(glob.glob(str(root / "**"), recursive=True)):
        if not os.path.isfile(path):
            continue
        data = Path(path).read_bytes()
        at = data.find(pattern)
        if at >= 0:
            with open(path, "r+b") as f:
                f.seek(at + 7)
                f.write(bytes([data[at + 7] ^ 0x01]))
            return path
    raise AssertionError("pattern not found on disk")


def test_verify_catches_a_flipped_byte_in_a_checkpoint_chunk(stores: Stores, tmp_path: Path) -> None:
    root = stores.copy(tmp_path / "damaged")
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(root / "**"), recursive=True)}
    # stores.STEP2_W's bytes from 4000 on occur only in step 2's chunk (step 0's array is shifted by 2.0)
    _flip_in(root / "ckpt" / "chunks.lance", stores.STEP2_W.tobytes()[40_000:40_064])
    out = stores.run("verify", str(root))
    assert out.returncode == 1, out.stdout
    assert "PROBLEM" in out.stdout and "chunks.lance row" in out.stdout and "fails its checksum" in out.stdout
    doc = stores.json("verify", str(root), expect=1)
    damaged_file, problem = sorted(doc["problems"], key=lambda p: p["row"] is not None)
    assert problem["path"].endswith("chunks.lance") and problem["row"] is not None
    assert "chunks.lance/data/" in damaged_file["path"] and "digest" in damaged_file["message"]
    after = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(root / "**"), recursive=True)}
    changed = [p for p in after if p in before and after[p] != before[p] and os.path.isfile(p)]
    assert len(changed) == 1  # only the file the test damaged: verify writes nothing


@pytest.mark.parametrize("kind", ["kvcache", "trajectory"])
def test_verify_catches_a_flipped_byte_in_kv_and_step_payloads(stores: Stores, tmp_path: Path, kind: str) -> None:
    root = stores.copy(tmp_path / "damaged")
    if kind == "kvcache":
        if not (root / "kv").exists():
            pytest.skip("persisting.kvcache is not importable")
        table, pattern = root / "kv" / "llama.lance", stores.KV[0, 0:4, :].tobytes()
    else:  # episode 2's frames are 70,000 bytes of 2
        table, pattern = root / "traj" / "steps.lance", bytes([2]) * 4096
    damaged = _flip_in(table, pattern)
    doc = stores.json("verify", str(root), expect=1)
    if str(damaged).endswith(".blob"):  # payload bytes only: rows are still scanned, the row is named
        damaged_file, problem = sorted(doc["problems"], key=lambda p: p["row"] is not None)
        assert problem["path"] == str(table) and problem["row"] is not None and "checksum" in problem["message"]
    else:  # a Lance data file fails its digest: it is never handed to Lance (lengths in it are trusted)
        damaged_file, skipped = doc["problems"]
        assert skipped["path"] == str(table) and "rows not scanned" in skipped["message"]
    assert damaged_file["path"] == str(damaged) and damaged_file["path"].startswith(str(table) + "/data/")
    assert "digest" in damaged_file["message"]


def test_verify_reports_a_torn_wal_tail_as_a_warning(stores: Stores, tmp_path: Path) -> None:
    root = stores.copy(tmp_path / "torn")
    wal = root / "plain" / "events.wal"
    seg = max(glob.glob(str(wal / "**" / "*.wal"), recursive=True))
    size = os.path.getsize(seg)
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00half a frame")  # a frame whose write a crash cut short
    doc = stores.json("verify", str(root))
    assert doc["healthy"]
    [torn] = doc["warnings"]
    assert torn["path"] == seg and torn["offset"] == size and "torn tail" in torn["message"]
    assert os.path.getsize(seg) == size + 16  # read-only: the tail is still there


def test_verify_reports_wal_corruption_before_the_tail(stores: Stores, tmp_path: Path) -> None:
    import shutil
    import struct

    from persisting.engine import Table, TableOptions

    live, root = tmp_path / "live", tmp_path / "walbad"
    with Table(str(live / "t.lance"), options=TableOptions(durability="always")) as t:
        t.append([{"i": 0}])
        t.flush()
        t.append([{"i": 1}])
        t.append([{"i": 2}])  # two frames above the applied LSN: damage in the first is not a tail
        t.sync()
        shutil.copytree(live, root)  # as a crash would leave it
    seg = max(glob.glob(str(root / "t.wal" / "**" / "*.wal"), recursive=True))
    data = bytearray(Path(seg).read_bytes())
    pos = 32  # segment header
    while True:
        length, _ = struct.unpack_from("<II", data, pos)
        (lsn,) = struct.unpack_from("<Q", data, pos + 8)
        if lsn == 2:
            break
        pos += 8 + length
    data[pos + 40] ^= 0xFF
    Path(seg).write_bytes(bytes(data))
    doc = stores.json("verify", str(root), expect=1)
    [problem] = doc["problems"]
    assert problem["path"] == seg and problem["offset"] == pos, doc
    text = stores.run("verify", str(root))
    assert text.returncode == 1 and f"{seg} offset {pos}" in text.stdout


def test_compact_and_gc_keep_every_row(stores: Stores, tmp_path: Path) -> None:
    root = stores.copy(tmp_path / "maint")
    before = {s["path"].replace(str(root), ""): s["rows"] for s in stores.json("ls", str(root))["stores"]}
    out = stores.json("compact", str(root))
    assert out["ok"] and sum(d["bytes_removed"] for d in out["done"]) > 0  # superseded versions went
    gc = stores.json("gc", str(root))
    assert gc["ok"] and any("chunks_removed" in d for d in gc["done"])
    after = {s["path"].replace(str(root), ""): s["rows"] for s in stores.json("ls", str(root))["stores"]}
    assert after == before
    assert stores.json("verify", str(root))["healthy"]


def test_compact_refuses_a_table_with_a_live_writer(stores: Stores) -> None:
    out = stores.run("compact", str(stores.root / "plain"))
    assert out.returncode == 1 and "FAILED" in out.stderr


def test_export_checkpoint_to_safetensors(stores: Stores, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    out = tmp_path / "step2.safetensors"
    res = stores.run("export", str(stores.root / "ckpt"), "--step", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr
    tensors = load_file(str(out))
    np.testing.assert_array_equal(tensors["w"], stores.STEP2_W)
    missing = stores.run("export", str(stores.root / "ckpt"), "--step", "7", "--out", str(tmp_path / "s7.safetensors"))
    assert missing.returncode == 1 and "7" in missing.stderr


def test_export_episodes_and_queue_to_parquet(stores: Stores, tmp_path: Path) -> None:
    eps = tmp_path / "episodes.parquet"
    assert stores.run("export", str(stores.root / "traj"), "--out", str(eps)).returncode == 0
    table = pq.read_table(eps)
    assert table.num_rows == 3 and table.column("length").to_pylist() == [4, 5, 6]
    q = tmp_path / "orders.parquet"
    assert stores.run("export", str(stores.root / "queue" / "orders"), "--out", str(q)).returncode == 0
    rows = pq.read_table(q).to_pylist()
    assert len(rows) == 2 * stores.QUEUE_RECORDS + 1
    assert sorted(r["seq"] for r in rows if r["bucket"] == "1") == list(range(stores.QUEUE_RECORDS + 1))



def test_verify_catches_a_flipped_string_and_a_lost_newest_manifest(stores: Stores, tmp_path: Path) -> None:
    """Columns without a payload checksum are covered by the digests recorded at commit."""
    import shutil

    from persisting.engine import Table, TableOptions

    uri = tmp_path / "a" / "names.lance"
    with Table(str(uri), options=TableOptions(durability="none")) as t:
        for i in range(3):
            t.append([{"k": i, "name": f"name-{i}"}])
            t.flush()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    path = _flip_in(uri, b"name-1")  # one byte of a string column: still a valid string
    doc = stores.json("verify", str(tmp_path / "a"), expect=1)
    assert [p["path"] for p in doc["problems"]] == [str(path), str(uri)] and "digest" in doc["problems"][0]["message"]
    assert "rows not scanned" in doc["problems"][1]["message"]

    other = tmp_path / "b" / "names.lance"
    newest = min(glob.glob(str(other / "_versions" / "*.manifest")))  # Lance's V2 names count down
    os.unlink(newest)
    doc = stores.json("verify", str(tmp_path / "b"), expect=1)
    assert any(p["path"] == newest and "missing" in p["message"] for p in doc["problems"])
