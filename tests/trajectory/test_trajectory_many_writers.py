"""Many writer processes on one TrajectoryStore.

Three CartPole actor processes (spawned interpreters: Lance is not fork-safe) log episodes
through RecordEpisodes at once, with small buffers and a low compaction threshold so their rows
interleave and fragments are compacted while others append. A reader samples meanwhile and
afterwards checks every episode against a replay of CartPole from its seed and actions. One
writer is SIGKILLed mid-episode while others go on: two processes open the store at once
afterwards, and the dead writer's open episode comes back ``incomplete`` exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from persisting.trajectory import TrajectoryStore

ACTORS = 3
CHILD = Path(__file__).with_name("trajectory_child.py")


def _replay(seed: int, actions: str) -> np.ndarray:
    """CartPole's observations (before each action) for ``seed`` and ``actions``."""
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    out = []
    for a in actions:
        out.append(obs)
        obs, *_ = env.step(int(a))
    env.close()
    return np.stack(out).astype(np.float32)


def _read_lines(proc: Any, until: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith(until):
            break
    return lines


def _check_slices(batch: dict[str, np.ndarray], length: int) -> None:
    ids, steps = batch["episode_id"], batch["step"]
    assert (ids == ids[:, :1]).all(), "a slice crossed episodes"
    assert (np.diff(steps, axis=1) == 1).all(), "a slice skipped or repeated steps"


@pytest.fixture(scope="module")
def actors_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the three actors once for the module; sample while they log."""
    path = str(tmp_path_factory.mktemp("many") / "traj")
    procs = [subprocess.Popen([sys.executable, str(CHILD), "actor", path, str(k)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(ACTORS)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        Path(path + ".go").touch()
        live_slices = live_steps = 0
        deadline = time.monotonic() + 6
        with TrajectoryStore(path, read_only=True) as reader:  # one handle, following the writers
            while time.monotonic() < deadline:
                try:
                    _check_slices(reader.sample_slices(32, 4, seed=live_slices), 4)
                    live_slices += 1
                    batch = reader.sample_steps(64, seed=live_steps)
                    has = batch["has_next"] & ~np.isnan(batch["next_obs"]).any(axis=1)
                    live_steps += int(has.sum())
                except Exception as exc:  # noqa: BLE001 - only "nothing to sample yet" is expected
                    if "no episode has" not in str(exc) and "no steps" not in str(exc):
                        raise
                time.sleep(0.01)
        Path(path + ".stop").touch()
        logs = {}
        for k, p in enumerate(procs):
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            logs[k] = out.splitlines()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    episodes = {}
    for k, lines in logs.items():
        assert lines[-1] == "done"
        for line in lines:
            if line.startswith("ep "):
                _, eid, n, total, actions = line.split()
                episodes[int(eid)] = (k, int(n), float(total), actions)
    return {"path": path, "episodes": episodes, "logs": logs, "live_slices": live_slices}


def test_three_actor_processes_log_at_once(actors_run: dict[str, Any]) -> None:
    episodes = actors_run["episodes"]
    per_actor = [sum(1 for v in episodes.values() if v[0] == k) for k in range(ACTORS)]
    assert min(per_actor) >= 3, per_actor
    assert len(episodes) == sum(len([x for x in lines if x.startswith("ep ")]) for lines in actors_run["logs"].values())
    with TrajectoryStore(actors_run["path"], read_only=True) as reader:
        rows = {r["episode_id"]: r for r in reader.episodes().to_pylist()}
        assert sorted(rows) == sorted(episodes)  # every episode, ids unique across processes
        starts = []
        for eid, (k, n, _total, actions) in episodes.items():
            row = rows[eid]
            assert row["actor"] == k and row["length"] == n and row["status"] in ("complete", "truncated")
            got = reader.episode(eid)
            assert got["step"].tolist() == list(range(n))
            assert "".join(map(str, got["action"].tolist())) == actions
            np.testing.assert_array_equal(got["obs"], _replay(row["seed"], actions))
            starts.append((row["start_time"], row["end_time"], k))
        assert reader.num_steps() == sum(v[1] for v in episodes.values())
    # the actors really ran at once: some episode of one overlaps in time with another's
    assert any(a0 < b1 and b0 < a1 and ka != kb for a0, a1, ka in starts for b0, b1, kb in starts)


def test_sampling_never_crosses_episodes_with_interleaved_writers(actors_run: dict[str, Any]) -> None:
    assert actors_run["live_slices"] > 0  # sampled while the actors wrote and compacted
    with TrajectoryStore(actors_run["path"], read_only=True) as reader:
        index = reader._reads.catch_up()
        positions = index.positions[np.argsort(index.positions)]
        ids = reader._steps.take(positions.tolist(), columns=["episode_id"]).column("episode_id").to_numpy()
        assert (np.diff(ids) != 0).sum() > len(actors_run["episodes"]), "rows of different episodes never interleaved"
        for seed in range(5):
            _check_slices(reader.sample_slices(64, 8, seed=seed), 8)
            batch = reader.sample_steps(256, seed=seed)
            for i in np.flatnonzero(batch["has_next"]):
                ep = reader.episode(int(batch["episode_id"][i]))
                s = int(batch["step"][i])
                expect = ep["obs"][s + 1] if s + 1 < len(ep["step"]) else None
                if expect is not None:
                    np.testing.assert_array_equal(batch["next_obs"][i], expect)
            for ep in reader.sample_episodes(4, seed=seed):
                assert ep["step"].tolist() == list(range(len(ep["step"])))
                assert len(set(ep["episode_id"].tolist())) == 1


def test_sigkilled_writer_recovered_once_while_others_go_on(tmp_path: Path, spawn_child: Any) -> None:
    path = str(tmp_path / "kill")
    steady = [spawn_child("actor", path, str(k), "100000") for k in range(2)]  # until told to stop
    for p in steady:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    Path(path + ".go").touch()
    crash = spawn_child("crash", path, "4")  # CartPole's observations have 4 values
    acked, ghost = (None, 0), None
    for line in crash.stdout:
        word, *rest = line.split()
        if word == "ghost":
            ghost = int(rest[0])
        elif word == "ack":
            acked = (int(rest[0]), int(rest[1]))
            if acked[1] >= 200:
                break
    os.kill(crash.pid, signal.SIGKILL)
    crash.wait(timeout=30)
    open_id, n_acked = acked
    assert open_id is not None, crash.stderr.read()
    assert all(p.poll() is None for p in steady)  # the others go on meanwhile

    os.remove(path + ".go")
    openers = [spawn_child("recover", path) for _ in range(2)]
    Path(path + ".go").touch()  # both open the store at once
    reports = []
    for p in openers:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        reports.append([int(x) for x in out.split()[1:]])
    assert sorted(reports, key=len) == [[], [open_id]], reports  # exactly once, only the dead one's
    assert all(p.poll() is None for p in steady)

    Path(path + ".stop").touch()
    done: dict[int, tuple[int, str]] = {}
    for p in steady:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        for line in out.splitlines():
            if line.startswith("ep "):
                _, eid, n, _t, actions = line.split()
                done[int(eid)] = (int(n), actions)
    with TrajectoryStore(path) as store:
        assert store.recovered == []  # recorded once, never redone
        rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
        assert rows[open_id]["status"] == "incomplete" and rows[open_id]["length"] >= n_acked
        got = store.episode(open_id)
        assert got["step"].tolist() == list(range(rows[open_id]["length"]))
        assert ghost not in rows
        incomplete = sorted(e for e, r in rows.items() if r["status"] == "incomplete")
        assert incomplete == [open_id]  # the live writers' episodes were never touched
        for eid, (n, actions) in done.items():
            assert rows[eid]["length"] == n
            assert "".join(map(str, store.episode(eid)["action"].tolist())) == actions
        assert len(rows) == len(done) + 5 + 1  # the steady actors', the crashed one's 5 complete + open
        with store.episode() as fresh:
            fresh.add_step(action=0)
        assert fresh.id not in rows and fresh.id != ghost


def test_two_stores_on_one_path_in_one_process(tmp_path: Path) -> None:
    path = str(tmp_path / "pair")
    a = TrajectoryStore(path, step_buffer=3)
    b = TrajectoryStore(path, step_buffer=3)
    try:
        ea, eb = a.begin_episode(who="a"), b.begin_episode(who="b")
        for t in range(40):
            ea.add_step(obs=np.full(2, t, np.float32), action=t)
            eb.add_step(obs=np.full(2, 100 + t, np.float32), action=t)
            if t % 7 == 6:
                a.flush()
                b.flush()
            if t == 20:
                a.compact()  # moves rows b appended: b's reads must not use stale positions
        ea.end()
        eb.end()
        assert ea.id != eb.id
        assert b.episodes(f"episode_id = {ea.id}").column("status").to_pylist() == ["open"]  # a's end row: not flushed
        a.flush()
        b.flush()
        for store in (a, b):
            for ep, base in ((ea, 0), (eb, 100)):
                got = store.episode(ep.id)
                assert got["action"].tolist() == list(range(40))
                assert got["obs"][:, 0].tolist() == [float(base + t) for t in range(40)]
            _check_slices(store.sample_slices(50, 5, seed=1), 5)
            assert sorted(store.episodes().column("episode_id").to_pylist()) == sorted([ea.id, eb.id])
    finally:
        a.close()
        b.close()
    with TrajectoryStore(path) as again:
        assert again.recovered == []


def test_writer_coordination_errors_are_typed_and_name_the_path(tmp_path: Path) -> None:
    from persisting.errors import ConfigError, StorageError

    with pytest.raises(ConfigError, match="s3://bucket/traj.*wal_dir"):
        TrajectoryStore("s3://bucket/traj", storage_options={"region": "us-east-1"})
    blocker = tmp_path / "wal"
    blocker.write_text("a file where the writers' directory should be")
    with pytest.raises(StorageError, match=str(blocker)):
        TrajectoryStore(str(tmp_path / "s"), wal_dir=str(blocker))
