"""Ray actors log episodes into one TrajectoryStore (moto S3 or local disk); ray.data reads it.

One local Ray cluster for the module (2 CPUs). Each actor is a real Ray worker process with
its own writer session; one is killed with ``ray.kill`` in the middle of an episode.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray[data] is not installed")
pytest.importorskip("ray.data", reason="ray[data] is not installed")

from persisting.errors import ConfigError, NotFoundError  # noqa: E402
from persisting.trajectory.ray import SharedStore, read_steps  # noqa: E402

ACTORS = 4
EPISODES = 4  # per actor
STEPS = 25  # per episode
FLUSH_EVERY = 2  # episodes


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the killed actor's process {pid} is still alive after {timeout} s")


def obs_of(actor: int, step: int) -> np.ndarray:
    return np.array([[actor, step, 1.0], [actor * step, -step, 2.0]], dtype=np.float32)


@ray.remote(num_cpus=0)
class Logger:
    """A Ray actor that owns one writer session of the shared store."""

    def __init__(self, shared: SharedStore, actor: int) -> None:
        self.store = shared.open()
        self.actor = actor

    def run(self, episodes: int, steps: int, flush_every: int) -> list[int]:
        ids = []
        for e in range(episodes):
            with self.store.episode(actor=self.actor) as ep:
                for t in range(steps):
                    ep.add_step(obs=obs_of(self.actor, t), reward=float(t), actor=self.actor)
            ids.append(ep.id)
            if (e + 1) % flush_every == 0:
                self.store.flush()
        return ids

    def half_episode(self) -> tuple[int, int]:
        """Begin an episode, commit 30 steps, sync 20 more (WAL only), add 7 unacknowledged ones;
        return its id and how many steps are acknowledged."""
        ep = self.store.begin_episode(actor=self.actor)
        for t in range(57):
            ep.add_step(obs=obs_of(self.actor, t), reward=float(t), actor=self.actor)
            if t == 29:
                self.store.flush()
            elif t == 49:
                self.store.sync()
        return ep.id, 50

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.store.close()


@pytest.fixture(params=["s3", "local"])
def shared(request: pytest.FixtureRequest, tmp_path: os.PathLike[str], ray_cluster: None) -> SharedStore:
    wal = os.path.join(tmp_path, "wal")
    if request.param == "local":
        return SharedStore.create(os.path.join(tmp_path, "runs"), wal_dir=wal)
    bucket, options = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_options")
    return SharedStore.create(f"s3://{bucket}/runs", wal_dir=wal, storage_options=options)


def check_steps(shared: SharedStore, expected: dict[int, tuple[int, int]]) -> None:
    """ray.data reads every step exactly once, with its values: expected maps episode id to
    (actor, length)."""
    ds = read_steps(shared.path, storage_options=shared.storage_options).materialize()
    batch = ds.take_batch(batch_size=1 << 20, batch_format="numpy")
    eids, steps = batch["episode_id"], batch["step"]
    keys = set(zip(eids.tolist(), steps.tolist()))
    assert len(keys) == len(eids), "a step was read twice"
    want = {(e, t) for e, (_, n) in expected.items() for t in range(n)}
    assert keys == want, f"missing {sorted(want - keys)[:10]}, extra {sorted(keys - want)[:10]}"
    assert len(eids) == ds.count()
    assert batch["obs"].shape == (len(eids), 2, 3) and batch["obs"].dtype == np.float32
    actors = np.array([expected[e][0] for e in eids.tolist()])
    want = np.stack([obs_of(a, t) for a, t in zip(actors.tolist(), steps.tolist())])
    np.testing.assert_array_equal(batch["obs"], want)
    np.testing.assert_array_equal(batch["actor"], actors)


def test_actors_share_a_store_and_a_killed_actor_is_recovered(shared: SharedStore) -> None:
    loggers = [Logger.options(**shared.actor_options()).remote(shared, a) for a in range(ACTORS)]
    runs = ray.get([lg.run.remote(EPISODES, STEPS, FLUSH_EVERY) for lg in loggers], timeout=120)
    ray.get([lg.close.remote() for lg in loggers], timeout=60)
    expected = {eid: (a, STEPS) for a, ids in enumerate(runs) for eid in ids}
    assert len(expected) == ACTORS * EPISODES, "episode ids collided across actors"
    check_steps(shared, expected)
    episodes = shared.read_episodes().take_all()
    assert sorted(r["episode_id"] for r in episodes) == sorted(expected)
    assert {r["status"] for r in episodes} == {"complete"} and {r["length"] for r in episodes} == {STEPS}

    # an actor killed mid-episode: what it acknowledged comes back once, the rest is gone
    victim = Logger.options(**shared.actor_options()).remote(shared, ACTORS)
    pid = ray.get(victim.pid.remote(), timeout=60)
    eid, acked = ray.get(victim.half_episode.remote(), timeout=60)
    ray.kill(victim, no_restart=True)
    # ray.kill only sends the kill: a method called now could still run first (a close()
    # would hand the unacknowledged steps over), so wait until the process is gone
    wait_gone(pid)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(victim.pid.remote(), timeout=60)
    with shared.open() as store:
        assert store.recovered == [eid]
    expected[eid] = (ACTORS, acked)
    check_steps(shared, expected)
    recovered = read_steps(shared.path, storage_options=shared.storage_options, status="incomplete", columns=["step"])
    assert sorted(recovered.take_batch(1 << 20, batch_format="numpy")["step"].tolist()) == list(range(acked))
    [row] = shared.read_episodes(status="incomplete").take_all()
    assert (row["episode_id"], row["length"]) == (eid, acked)

    with shared.open() as store:  # a second open recovers nothing again
        assert store.recovered == []


def test_refusals(tmp_path: os.PathLike[str], ray_cluster: None) -> None:
    """A writer on the wrong node, a remote store without wal_dir, blobs and a missing store."""
    path = os.path.join(tmp_path, "runs")
    elsewhere = SharedStore(path, os.path.join(tmp_path, "wal"), node_id="ff" * 28)
    with pytest.raises(ConfigError, match="actor_options"):
        elsewhere.open()
    with pytest.raises(ConfigError, match="wal_dir"):
        SharedStore.create("s3://bucket/runs")
    with pytest.raises(NotFoundError, match="no steps table"):
        read_steps(path)
    shared = SharedStore.create(path, wal_dir=os.path.join(tmp_path, "wal"), blob_threshold=64)
    with shared.open() as store, store.episode() as ep:
        ep.add_step(image=np.zeros(100, np.uint8), reward=1.0)
    with pytest.raises(ConfigError, match="blob"):
        read_steps(path, columns=["image"])
    with pytest.raises(NotFoundError, match="nope"):
        read_steps(path, columns=["nope"])
    rows: list[dict[str, Any]] = read_steps(path).take_all()
    assert [sorted(r) for r in rows] == [["episode_id", "reward", "step"]]
