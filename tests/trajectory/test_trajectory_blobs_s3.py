"""TrajectoryStore blob fields on S3 (moto), WAL on local disk: write, reopen, sample and read
back, from this process and another one; a writer killed with -9 loses no synced blob step;
a damaged blob object is a typed error naming the field, and ``verify`` finds it."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from persisting.errors import CorruptionError
from persisting.ops.verify import verify
from persisting.trajectory import TrajectoryStore

SHAPE = (160, 160, 3)  # 75 KiB: Lance keeps payloads this size in .blob files (27 KiB ones inline)


def frame(episode: int, t: int) -> np.ndarray:
    """Step ``t`` of ``episode``: the same content in every process."""
    return np.random.default_rng(episode * 1000 + t).integers(0, 255, (160, 160, 3), dtype=np.uint8)


_COMMON = "import numpy as np\n" + inspect.getsource(frame)  # the children define the same frame()


def _log(store: TrajectoryStore, episodes: int, steps: int) -> list[int]:
    ids = []
    for _ in range(episodes):
        with store.episode() as ep:
            for t in range(steps):
                ep.add_step(obs=frame(ep.id, t), half=torch.full((8, 64), float(t), dtype=torch.bfloat16), action=t)
        ids.append(ep.id)
    return ids


def _check(batch: dict[str, Any]) -> None:
    assert batch["obs"].shape == (len(batch["step"]), *SHAPE)
    for i, (e, t) in enumerate(zip(batch["episode_id"].tolist(), batch["step"].tolist())):
        np.testing.assert_array_equal(batch["obs"][i], frame(e, t))
        assert float(batch["half"][i][0, 0]) == float(t)


_READER = _COMMON + textwrap.dedent(
    """
    import json, sys
    from persisting.trajectory import TrajectoryStore
    with TrajectoryStore(sys.argv[1], storage_options=json.loads(sys.argv[2]), read_only=True) as r:
        batch = r.sample_steps(24, seed=5, fields=["obs", "half"])
        bad = [i for i, (e, t) in enumerate(zip(batch["episode_id"].tolist(), batch["step"].tolist()))
               if not (batch["obs"][i] == frame(e, t)).all() or float(batch["half"][i][0, 0]) != float(t)]
        ep = r.episode(int(sys.argv[3]))
        ok = all((ep["obs"][t] == frame(int(sys.argv[3]), t)).all() for t in range(len(ep["obs"])))
        print(json.dumps({"sampled": len(batch["step"]), "bad": bad, "steps": len(ep["obs"]), "episode_ok": ok}))
    """
)

_KILLED = _COMMON + textwrap.dedent(
    """
    import json, sys, time, torch
    from persisting.trajectory import TrajectoryStore
    store = TrajectoryStore(sys.argv[1], storage_options=json.loads(sys.argv[2]), wal_dir=sys.argv[3],
                            blob_threshold=4096)
    with store.episode() as ep:
        for t in range(6):
            ep.add_step(obs=frame(ep.id, t), half=torch.full((8, 64), float(t), dtype=torch.bfloat16), action=t)
    ep = store.begin_episode()
    for t in range(5):
        ep.add_step(obs=frame(ep.id, t), half=torch.full((8, 64), float(t), dtype=torch.bfloat16), action=t)
    store.sync()  # handed to the table and fsynced in the local WAL, nothing committed to S3
    print("ack", ep.id, flush=True)
    time.sleep(120)
    """
)


def _read_in_child(uri: str, opts: dict[str, str], episode: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _READER, uri, json.dumps(opts), str(episode)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _blob_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".blob"))


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    boto3 = pytest.importorskip("boto3")
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def test_blob_fields_on_s3_write_reopen_sample_and_read_in_another_process(
        s3_bucket: str, s3_options: dict[str, str], tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/runs"
    wal = str(tmp_path / "wal")
    with TrajectoryStore(uri, storage_options=s3_options, wal_dir=wal, blob_threshold=4096) as store:
        ids = _log(store, 3, 8)
        _check(store.sample_steps(16, seed=1, fields=["obs", "half"]))  # rows not yet committed
        store.flush()
        # another process reads while this writer is still open
        seen = _read_in_child(uri, s3_options, ids[1])
        assert seen == {"sampled": 24, "bad": [], "steps": 8, "episode_ok": True}
    # reopened as a writer with another threshold: the stored fields keep their kind
    with TrajectoryStore(uri, storage_options=s3_options, wal_dir=wal, blob_threshold=1 << 20) as store:
        batch = store.sample_steps(32, seed=2, fields=["obs", "half"])
        assert batch["half"].dtype == torch.bfloat16
        _check(batch)
        ep = store.episode(ids[2])
        np.testing.assert_array_equal(ep["obs"], np.stack([frame(ids[2], t) for t in range(8)]))
        more = _log(store, 1, 4)
    with TrajectoryStore(uri, storage_options=s3_options, read_only=True) as reader:
        assert sorted(reader.episodes().column("episode_id").to_pylist()) == sorted(ids + more)
        _check(reader.sample_steps(40, seed=3, fields=["obs", "half"]))


def test_writer_killed_with_blob_steps_in_its_wal_loses_none(s3_bucket: str, s3_options: dict[str, str],
                                                              tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/killed"
    wal = str(tmp_path / "wal")
    child = subprocess.Popen([sys.executable, "-c", _KILLED, uri, json.dumps(s3_options), wal],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line[:1] == ["ack"], child.stderr.read() if child.stderr else ""
        open_id = int(line[1])
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    report = verify(uri, storage_options=s3_options, wal_dir=wal)  # the dead writer's WAL, read-only
    assert report.healthy, report.to_json()
    assert report.wal_frames >= 1
    with TrajectoryStore(uri, storage_options=s3_options, wal_dir=wal) as store:  # adopts and replays it
        assert store.recovered == [open_id]
        ep = store.episode(open_id)
        np.testing.assert_array_equal(ep["obs"], np.stack([frame(open_id, t) for t in range(5)]))
    seen = _read_in_child(uri, s3_options, open_id)
    assert seen["bad"] == [] and seen["steps"] == 5 and seen["episode_ok"]


def test_damaged_blob_object_is_a_typed_error_and_verify_finds_it(s3: Any, s3_bucket: str,
                                                                   s3_options: dict[str, str], tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/damaged"
    with TrajectoryStore(uri, storage_options=s3_options, wal_dir=str(tmp_path / "wal"), blob_threshold=4096) as store:
        _log(store, 2, 6)
    assert verify(uri, storage_options=s3_options).healthy
    key = _blob_keys(s3, s3_bucket, "damaged/steps.lance/")[0]
    body = bytearray(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[1000] ^= 0xFF
    s3.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    with TrajectoryStore(uri, storage_options=s3_options, read_only=True) as reader:
        with pytest.raises(CorruptionError, match="obs|half"):
            for seed in range(20):  # until a sample includes the damaged step
                reader.sample_steps(32, seed=seed, fields=["obs", "half"])
    report = verify(uri, storage_options=s3_options)
    assert not report.healthy
    assert any("fails its checksum" in f.message and f.row is not None for f in report.problems), report.to_json()


def test_reopening_with_another_blob_threshold_keeps_each_fields_kind(tmp_path: Path) -> None:
    """Local twin of the reopen above: ``blob_threshold`` is a per-open setting, a field's kind
    is stored; a blob field stays blob and a fixed one fixed (before: SchemaError)."""
    path = str(tmp_path / "s")
    with TrajectoryStore(path, blob_threshold=4096) as store:
        with store.episode() as ep:
            ep.add_step(obs=frame(0, 0), small=np.ones(4, np.float32))
    for threshold in (64 * 1024 * 1024, 8):
        with TrajectoryStore(path, blob_threshold=threshold) as store:
            with store.episode() as ep:
                ep.add_step(obs=frame(ep.id, 0), small=np.full(4, ep.id, np.float32))
            store.flush()
            got = store.episode(ep.id)
            np.testing.assert_array_equal(got["obs"][0], frame(ep.id, 0))
            assert got["small"][0].tolist() == [float(ep.id)] * 4
    with TrajectoryStore(path, read_only=True) as reader:
        assert reader.sample_steps(3, seed=0, fields=["obs", "small"])["obs"].shape == (3, *SHAPE)
