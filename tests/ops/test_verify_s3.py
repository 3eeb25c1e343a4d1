"""``verify`` on S3 (moto): it checks what an object store allows (rows, payload checksums,
checkpoint manifests, a given local WAL) and says, table by table, what it could not (file
digests are recorded only at local fsync time, an object-store WAL, a ParamStore's head
record): never a "healthy" over nothing. Before, an s3:// root verified 0 tables, healthy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pytest
import torch

from persisting.engine import Table, TableOptions
from persisting.engine.remote_wal import remote_wal_uri
from persisting.ops.verify import VerifyReport, verify
from persisting.params import ParamStore
from persisting.trajectory import TrajectoryStore


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    boto3 = pytest.importorskip("boto3")
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "persisting.cli", "verify", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def _flags(opts: dict[str, str]) -> list[str]:
    return [a for k, v in opts.items() for a in ("--storage-option", f"{k}={v}")]


def _warned(report: dict[str, Any], words: str) -> list[str]:
    return sorted(w["path"] for w in report["warnings"] if words in w["message"])


@pytest.fixture(scope="module")
def runs(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, dict[str, str]]:
    """A trajectory store on S3 (3 tables), its local WAL directory, and its storage options."""
    boto3 = pytest.importorskip("boto3")
    bucket = "persisting-verify-s3"
    key, region = "testing", "us-east-1"  # as tests/conftest.py's s3_options (a function-scoped fixture)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name=region, aws_access_key_id=key,
                 aws_secret_access_key=key).create_bucket(Bucket=bucket)
    opts = {"aws_access_key_id": key, "aws_secret_access_key": key, "aws_endpoint": s3_endpoint,
            "aws_region": region, "allow_http": "true"}
    uri, wal = f"s3://{bucket}/runs", str(tmp_path_factory.mktemp("wal"))
    with TrajectoryStore(uri, storage_options=opts, wal_dir=wal, blob_threshold=4096) as store:
        for e in range(2):
            with store.episode() as ep:
                for t in range(5):
                    ep.add_step(obs=np.full((32, 32, 4), e * 10 + t, np.float32), action=t)
    return uri, wal, opts


def test_cli_verifies_an_s3_store_and_says_what_it_could_not_check(runs: tuple[str, str, dict[str, str]]) -> None:
    uri, wal, opts = runs
    out = _cli(uri, *_flags(opts), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    tables = [f"{uri}/{n}.lance" for n in ("episodes", "ids", "steps")]
    assert report["healthy"] and report["tables"] == 3 and report["rows"] >= 10
    assert report["payloads_checked"] == 10 and report["files_hashed"] == 0  # every obs, no file digest
    assert _warned(report, "file digests") == tables
    assert _warned(report, "wal_dir") == tables  # its WAL is on the writers' disks: not checked
    with_wal = _cli(uri, *_flags(opts), "--wal-dir", wal)
    assert with_wal.returncode == 0, with_wal.stdout + with_wal.stderr
    assert "0 file digests checked" in with_wal.stdout and "wal_dir" not in with_wal.stdout
    assert "healthy: 1 stores, 3 tables" in with_wal.stdout


def test_cli_refuses_what_it_cannot_verify(runs: tuple[str, str, dict[str, str]]) -> None:
    uri, _, opts = runs
    empty = _cli(uri.rsplit("/", 1)[0] + "/nothing-here", *_flags(opts))
    assert empty.returncode == 2 and "holds no Persisting tables" in empty.stderr
    bad = _cli(uri, "--storage-option", "aws_endpoint")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    local = _cli(str(Path(uri.replace("s3://", "/nonexistent-"))))
    assert local.returncode == 2


_KILLED = textwrap.dedent(
    """
    import json, sys, time
    from persisting.engine import Table, TableOptions
    from persisting.engine.remote_wal import remote_wal_uri
    uri = sys.argv[1]
    t = Table(uri, storage_options=json.loads(sys.argv[2]), wal_uri=remote_wal_uri(uri), writer_id="k",
              options=TableOptions(durability="always"))
    for i in range(3):
        t.append([{"x": i}])  # acknowledged once its segment object is stored
    print("ready", flush=True)
    time.sleep(120)
    """
)


def test_verify_reads_an_object_store_wal_and_finds_a_damaged_segment(s3: Any, s3_bucket: str,
                                                                      s3_options: dict[str, str]) -> None:
    uri = f"s3://{s3_bucket}/t.lance"
    with Table(uri, storage_options=s3_options, wal_uri=remote_wal_uri(uri), writer_id="w",
               options=TableOptions(durability="always")) as t:
        t.append([{"x": 1}])
        t.flush()
        t.append([{"x": 2}])  # acknowledged: a segment object, not committed to the dataset
        report = verify(uri, storage_options=s3_options)
        assert report.healthy and report.tables == 1 and report.rows == 1 and report.wal_frames == 1, report.to_json()
        assert not any("WAL" in w.message for w in report.warnings), report.to_json()
    # a writer killed before its table's first commit: only its object-store WAL exists
    other = f"s3://{s3_bucket}/unborn.lance"
    child = subprocess.Popen([sys.executable, "-c", _KILLED, other, json.dumps(s3_options)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready", child.stderr
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    report = verify(f"s3://{s3_bucket}", storage_options=s3_options)
    assert report.healthy and report.tables == 2 and report.wal_frames == 3, report.to_json()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="unborn.lance/_persisting/wal/k/")["Contents"]]
    segment = sorted(k for k in keys if not k.endswith("LEASE"))[-1]
    body = bytearray(s3.get_object(Bucket=s3_bucket, Key=segment)["Body"].read())
    body[-3] ^= 0xFF  # inside the last frame's payload
    s3.put_object(Bucket=s3_bucket, Key=segment, Body=bytes(body))
    damaged = verify(f"s3://{s3_bucket}", storage_options=s3_options)
    assert not damaged.healthy
    assert any("object-store WAL" in p.message and segment.split("/", 1)[1] in p.path + p.message
               for p in damaged.problems), damaged.to_json()


def test_verify_a_remote_param_store_checks_manifests_not_the_head(s3_bucket: str, s3_options: dict[str, str],
                                                                   tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/ckpt"
    with ParamStore(uri, storage_options=s3_options, wal_dir=str(tmp_path / "locks")) as store:
        store.save({"w": torch.arange(1000.0), "b": torch.zeros(3)}, step=1)
    report: VerifyReport = verify(uri, storage_options=s3_options)
    assert report.healthy, report.to_json()
    assert report.tables == 2 and report.payloads == 2
    assert any("newest checkpoint" in w.message for w in report.warnings)
    lance.dataset(f"{uri}/chunks.lance", storage_options=s3_options).delete("true")  # chunks lost
    broken = verify(uri, storage_options=s3_options)
    assert any("references 2 chunk(s) that are not stored" in p.message for p in broken.problems), broken.to_json()


def test_local_verify_counts_the_files_it_hashed(tmp_path: Path) -> None:
    with ParamStore(str(tmp_path / "ckpt")) as store:
        store.save({"w": torch.ones(8)}, step=1)
    report = verify(str(tmp_path))
    assert report.healthy and report.files_hashed > 0
    assert not any("not checked" in w.message for w in report.warnings)
