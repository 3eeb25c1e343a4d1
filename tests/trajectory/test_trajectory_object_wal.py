"""TrajectoryStore(wal="object"): writers on different "nodes" (processes with their own
TMPDIR and no shared local directory) log into one s3:// store on a moto server; one is
SIGKILLed mid-episode and recovered by another process, exactly once."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from persisting.engine.objstore import ObjectStore
from persisting.errors import ConfigError
from persisting.trajectory import TrajectoryStore

from .conftest import Children

_CHILD = Path(__file__).with_name("objwal_child.py")
_spec = importlib.util.spec_from_file_location("_persisting_objwal_child", _CHILD)
assert _spec is not None and _spec.loader is not None
_child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_child)
step_fields = _child.step_fields

Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def node(tmp_path: Path, s3_options: dict[str, str]) -> Iterator[Spawn]:
    """Start objwal_child.py as a separate node: its own TMPDIR, the S3 options in its env."""
    children = Children()

    def start(name: str, mode: str, *args: str) -> subprocess.Popen[str]:
        tmp = tmp_path / f"node-{name}"
        tmp.mkdir()
        env = {**os.environ, "TMPDIR": str(tmp), "PERSISTING_TEST_S3": json.dumps(s3_options),
               "PYTHONPATH": os.pathsep.join(sys.path)}
        return children.start([str(_CHILD), mode, *args], env=env)

    yield start
    children.reap()


def _lines(p: subprocess.Popen[str], timeout: float = 120) -> list[list[str]]:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return [line.split() for line in out.splitlines()]


def _reader(uri: str, s3_options: dict[str, str]) -> TrajectoryStore:
    return TrajectoryStore(uri, storage_options=s3_options, wal="object", read_only=True)


def _check_steps(store: TrajectoryStore, eid: int, length: int) -> None:
    ep = store.episode(eid)
    assert ep["step"].tolist() == list(range(length)), eid  # each step once, in order
    expect = np.stack([step_fields(eid, t)["obs"] for t in range(length)])
    np.testing.assert_array_equal(ep["obs"], expect)


def test_writers_on_three_nodes(node: Spawn, s3_bucket: str, s3_options: dict[str, str]) -> None:
    uri = f"s3://{s3_bucket}/runs"
    start = time.time() + 4.0  # all three open (and create the tables) at once
    procs = [node(tag, "writer", uri, tag, "6", str(start)) for tag in ("a", "b", "c")]
    written: dict[int, int] = {}
    for p in procs:
        lines = _lines(p)
        assert lines[-1] == ["done"]
        for word, eid, length in (line for line in lines if line[0] == "ep"):
            assert int(eid) not in written, f"episode id {eid} handed out twice"
            written[int(eid)] = int(length)
    assert len(written) == 18
    with _reader(uri, s3_options) as store:
        rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
        assert set(rows) == set(written)
        for eid, length in written.items():
            assert rows[eid]["status"] == "complete" and rows[eid]["length"] == length
            _check_steps(store, eid, length)
        assert store.num_steps() == sum(written.values())
    # clean closes leave no session or WAL lease behind (opens would list and read each one)
    s3 = ObjectStore(uri, s3_options)
    leases = [k for k in s3.list() if k.endswith("/LEASE") and "/_persisting/create/" not in "/" + k]
    assert leases == [] and "_persisting/sessions/NEXT_ID" in s3.list()


def test_sigkilled_node_is_recovered_once_elsewhere(node: Spawn, s3_bucket: str, s3_options: dict[str, str]) -> None:
    uri = f"s3://{s3_bucket}/runs"
    crash = node("crash", "crash", uri)
    survivor = node("survivor", "writer", uri, "s", "6", "0", "1.5")  # writes through the recovery
    assert crash.stdout is not None
    complete: dict[int, int] = {}
    open_id, acked = -1, 0
    for line in crash.stdout:
        word, eid, n = line.split()
        if word == "ep":
            complete[int(eid)] = int(n)
        elif word == "ack":
            open_id, acked = int(eid), int(n)
            if acked >= 96:
                break
    os.kill(crash.pid, signal.SIGKILL)
    crash.wait(timeout=30)
    assert acked >= 96, crash.stderr.read() if crash.stderr else ""
    time.sleep(_child.LEASE + 1.0)  # its leases expire: it is dead to everyone

    first = _lines(node("next", "open", uri))
    second = _lines(node("after", "open", uri))
    assert first == [["recovered", str(open_id)]]
    assert second == [["recovered"]]
    survived = {int(e): int(n) for word, e, n in (line for line in _lines(survivor) if line[0] == "ep")}
    assert len(survived) == 6 and not set(survived) & (set(complete) | {open_id})

    with _reader(uri, s3_options) as store:
        rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
        for eid, length in {**complete, **survived}.items():
            assert rows[eid]["status"] == "complete" and rows[eid]["length"] == length
            _check_steps(store, eid, length)
        row = rows[open_id]
        assert row["status"] == "incomplete" and row["writer"] == "crash"
        assert row["length"] >= acked  # every acknowledged step, each once
        _check_steps(store, open_id, row["length"])
        revisions = store._episodes.scan(columns=["episode_id", "status"], filter=f"episode_id = {open_id}")
        assert revisions.column("status").to_pylist().count("incomplete") == 1  # recovered exactly once


@pytest.mark.parametrize("kwargs, needle", [
    ({"wal": "remote"}, "wal must be one of"),
    ({"wal": None}, "wal must be one of"),
    ({"wal": "object", "wal_dir": "/tmp/x"}, "wal='object'"),
])
def test_bad_wal_option(kwargs: dict[str, Any], needle: str, s3_bucket: str, s3_options: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        TrajectoryStore(f"s3://{s3_bucket}/runs", storage_options=s3_options, **kwargs)
    assert "wal" in str(info.value)


def test_object_wal_needs_an_s3_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wal='object'"):
        TrajectoryStore(str(tmp_path / "local"), wal="object")
