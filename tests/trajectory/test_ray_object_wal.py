"""Ray actors on no particular node (``wal="object"``): four actors, each with its own TMPDIR
(no directory shared between them), log into one s3:// store on moto; one is killed mid-episode
and a later writer on any node recovers it; ray.data reads every step once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray[data] is not installed")
pytest.importorskip("ray.data", reason="ray[data] is not installed")

from persisting.engine import TableOptions  # noqa: E402
from persisting.errors import ConfigError  # noqa: E402
from persisting.trajectory.ray import SharedStore, read_steps  # noqa: E402

ACTORS = 4
EPISODES = 3
STEPS = 20
LEASE = 2.0


def obs_of(actor: int, step: int) -> np.ndarray:
    return np.array([actor, step, 0.5], dtype=np.float32)


@ray.remote(num_cpus=0)
class Logger:
    """One writer session of the shared store, in a worker with its own TMPDIR."""

    def __init__(self, shared: SharedStore, actor: int) -> None:
        import tempfile

        self.tmp = tempfile.gettempdir()
        self.store = shared.open()
        self.actor = actor

    def where(self) -> tuple[str, int]:
        return self.tmp, os.getpid()

    def run(self, episodes: int, steps: int) -> list[int]:
        ids = []
        for _ in range(episodes):
            with self.store.episode(actor=self.actor) as ep:
                for t in range(steps):
                    ep.add_step(obs=obs_of(self.actor, t), reward=float(t))
            ids.append(ep.id)
        return ids

    def half_episode(self) -> tuple[int, int]:
        """Begin an episode, sync 30 steps (acknowledged, in the object-store WAL only), add 5 more."""
        ep = self.store.begin_episode(actor=self.actor)
        for t in range(35):
            ep.add_step(obs=obs_of(self.actor, t), reward=float(t))
            if t == 29:
                self.store.sync()
        return ep.id, 30

    def close(self) -> None:
        self.store.close()


def logger(shared: SharedStore, actor: int, tmp: Path) -> object:
    own = tmp / f"node{actor}"
    own.mkdir()
    assert shared.actor_options() == {}
    return Logger.options(runtime_env={"env_vars": {"TMPDIR": str(own)}}).remote(shared, actor)


def test_unpinned_actors_with_the_wal_on_s3(ray_cluster: None, tmp_path: Path, s3_bucket: str,
                                            s3_options: dict[str, str]) -> None:
    shared = SharedStore.create(f"s3://{s3_bucket}/runs", storage_options=s3_options, wal="object",
                                step_buffer=8, options=TableOptions(wal_lease_seconds=LEASE))
    assert shared.node_id is None
    loggers = [logger(shared, a, tmp_path) for a in range(ACTORS)]
    places = ray.get([lg.where.remote() for lg in loggers], timeout=120)
    assert len({tmp for tmp, _ in places}) == ACTORS  # no local directory in common
    runs = ray.get([lg.run.remote(EPISODES, STEPS) for lg in loggers], timeout=120)
    expected = {eid: (a, STEPS) for a, ids in enumerate(runs) for eid in ids}
    assert len(expected) == ACTORS * EPISODES, "episode ids collided across actors"

    victim = loggers.pop()
    eid, acked = ray.get(victim.half_episode.remote(), timeout=60)
    pid = places[-1][1]
    ray.kill(victim, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    ray.get([lg.close.remote() for lg in loggers], timeout=60)
    time.sleep(LEASE + 1.0)  # the victim's leases expire
    with shared.open() as store:
        assert store.recovered == [eid]
    with shared.open() as store:
        assert store.recovered == []
    expected[eid] = (ACTORS - 1, acked)

    batch = read_steps(shared.path, storage_options=s3_options).materialize().take_batch(1 << 20, batch_format="numpy")
    keys = list(zip(batch["episode_id"].tolist(), batch["step"].tolist()))
    assert len(set(keys)) == len(keys), "a step was read twice"
    assert set(keys) == {(e, t) for e, (_, n) in expected.items() for t in range(n)}
    want = np.stack([obs_of(expected[e][0], t) for e, t in keys])
    np.testing.assert_array_equal(batch["obs"], want)
    statuses = {r["episode_id"]: r["status"] for r in shared.read_episodes().take_all()}
    assert statuses == {e: "incomplete" if e == eid else "complete" for e in expected}


def test_object_wal_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wal must be one of"):
        SharedStore.create("s3://bucket/runs", wal="nfs")
    with pytest.raises(ConfigError, match="wal_dir"):
        SharedStore.create("s3://bucket/runs", wal="object", wal_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="wal='object'"):
        SharedStore.create("s3://bucket/runs")
