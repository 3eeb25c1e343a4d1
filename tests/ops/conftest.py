"""Stores the operator-command tests run against, built once per module in this process;
every command runs as a real subprocess (``python -m persisting.cli``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from persisting.engine import Table, TableOptions

STEP2_W = (np.arange(20_000, dtype=np.float32) + 2.0)  # the tensor that is new in step 2
QUEUE_RECORDS = 25
PLAIN_COMMITTED, PLAIN_PENDING = 30, 7
KV = np.random.default_rng(1).random((2, 12, 8)).astype(np.float32)


@dataclass
class Stores:
    root: Path
    writer: Table  # holds PLAIN_PENDING rows in its WAL only, for the module's lifetime

    QUEUE_RECORDS: ClassVar[int] = QUEUE_RECORDS
    PLAIN_COMMITTED: ClassVar[int] = PLAIN_COMMITTED
    PLAIN_PENDING: ClassVar[int] = PLAIN_PENDING
    STEP2_W: ClassVar[np.ndarray] = STEP2_W
    KV: ClassVar[np.ndarray] = KV

    @staticmethod
    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, timeout=timeout)

    @staticmethod
    def json(*args: str, expect: int = 0) -> Any:
        return run_json(*args, expect=expect)

    def copy(self, dest: Path) -> Path:
        """A copy of the tree to damage or maintain (the copied lock file is not held)."""
        shutil.copytree(self.root, dest)
        return dest


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persisting.cli", *args], capture_output=True, text=True, timeout=timeout, check=False,
    )


def run_json(*args: str, expect: int = 0) -> Any:
    out = run_cli(*args, "--json")
    assert out.returncode == expect, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return json.loads(out.stdout)


def _params(path: str) -> None:
    from persisting.params.store import ParamStore

    base = np.arange(20_000, dtype=np.float32)
    with ParamStore(path) as ps:
        for step in range(3):
            w = STEP2_W if step == 2 else base
            ps.save({"w": w, "b": np.ones(10, np.float32), "step": step}, step=step,
                    tags=["best"] if step == 1 else [])


def _trajectory(path: str) -> None:
    from persisting.trajectory.store import TrajectoryStore

    rng = np.random.default_rng(0)
    with TrajectoryStore(path) as ts:
        for e in range(3):
            with ts.episode(env="cartpole") as ep:
                for i in range(4 + e):
                    ep.add_step(obs=rng.random(4).astype(np.float32), action=i % 2, reward=1.0,
                                frame=np.full(70_000, e, np.uint8))  # above blob_threshold: checksummed


def _queue(path: str) -> None:
    from persisting.queue import PersistingBackend

    async def write() -> None:
        for bucket in (0, 1):
            b = PersistingBackend(bucket_id=bucket, storage_path=path, batch_size=10, enable_wal=True)
            try:
                for i in range(QUEUE_RECORDS + bucket):
                    await b.put({"id": f"user-{i}", "seq": i})
                await b.flush()
            finally:
                b.close()

    asyncio.run(write())


def _kvcache(path: str) -> bool:
    try:
        from persisting.kvcache import KVCacheStore
    except Exception:  # noqa: BLE001 - the KV store is optional here; the rest still runs
        return False
    with KVCacheStore(path, namespace="llama", chunk_size=4) as kv:
        kv.put(list(range(12)), KV)
    return True


@pytest.fixture
def cli() -> type[Stores]:
    """``cli.run(...)`` / ``cli.json(...)`` for tests that need no stores."""
    return Stores


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    root = tmp_path_factory.mktemp("stores")
    _params(str(root / "ckpt"))
    _trajectory(str(root / "traj"))
    _queue(str(root / "queue" / "orders"))
    _kvcache(str(root / "kv"))
    os.makedirs(root / "plain")
    writer = Table(str(root / "plain" / "events.lance"), options=TableOptions(durability="always"), exclusive=True)
    writer.append([{"i": i, "name": f"e{i}"} for i in range(PLAIN_COMMITTED)])
    writer.flush()
    writer.append([{"i": i, "name": f"e{i}"} for i in range(PLAIN_COMMITTED, PLAIN_COMMITTED + PLAIN_PENDING)])
    writer.sync()
    try:
        yield Stores(root, writer)
    finally:
        writer.close()
