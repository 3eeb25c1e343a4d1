"""Child processes for the trajectory crash and second-writer tests (run with sys.executable,
never forked: Lance is not fork-safe). Protocol: one line per event on stdout.

crash <path> [obs size]: write 5 complete episodes, begin one long open episode and then one that never
    gets a step (``ghost <id>``); to the long one, after every 40 steps
    hand off + sync and print ``ack <episode_id> <steps>``; never returns (the parent kills it).
writer <path>: open the store as a writer while another process has it open (many writers
    share a store), write 3 episodes of 7 steps, print ``wrote <ids>`` and close.
actor <path> <k> [most]: a CartPole actor logging through RecordEpisodes; prints ``ready``,
    waits for the file ``<path>.go``, then logs episodes until the file ``<path>.stop`` exists
    (or ``most`` episodes, 60 by default), printing ``ep <id> <length> <sum of obs> <actions>`` after each one; closes and
    prints ``done``. Small step buffers and a low compaction threshold interleave its rows with
    the other actors' and compact while they append.
recover <path>: wait for ``<path>.go``, open the store as a writer, print ``recovered <ids>``.
stream <path> <episodes> <length>: write episodes of ``step_fields`` steps (varying lengths
    up to ``length``), flush after each and print ``flushed <id> <steps>``; then ``done``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from persisting.engine import TableOptions
from persisting.trajectory import TrajectoryStore


def step_fields(episode: int, t: int, dim: int = 3) -> dict[str, object]:
    """The deterministic content of step ``t`` of episode ``episode``."""
    return {
        "obs": np.full(dim, episode * 1000 + t, np.float32),
        "action": (episode + t) % 3,
        "reward": float(t % 5),
        "terminated": False,
        "truncated": False,
    }


def say(line: str) -> None:
    print(line, flush=True)


def crash(path: str, dim: str = "3") -> None:
    store = TrajectoryStore(path, step_buffer=16)
    for e in range(5):
        with store.episode(kind="done", n=e) as ep:
            for t in range(30 + e):
                ep.add_step(step_fields(ep.id, t, int(dim)))
    store.sync()
    say("complete " + " ".join(str(i) for i in range(5)))
    ep = store.begin_episode(kind="open")
    ghost = store.begin_episode(kind="ghost")  # the newest id; gets no step, so leaves no trace
    say(f"ghost {ghost.id}")
    t = 0
    while True:
        ep.add_step(step_fields(ep.id, t, int(dim)))
        t += 1
        if t % 40 == 0:
            store.sync()
            say(f"ack {ep.id} {t}")
            time.sleep(0.002)


def writer(path: str) -> None:
    store = TrajectoryStore(path)
    say("open")
    ids = []
    for _ in range(3):
        with store.episode(writer="child") as ep:
            for t in range(7):
                ep.add_step(step_fields(ep.id, t))
        ids.append(ep.id)
    store.close()
    say("wrote " + " ".join(map(str, ids)))


def _wait_for(name: str) -> None:
    while not os.path.exists(name):
        time.sleep(0.005)


def actor(path: str, k: str, most: str = "60") -> None:
    import gymnasium as gym

    from persisting.trajectory.gym import RecordEpisodes

    store = TrajectoryStore(path, step_buffer=8, options=TableOptions(compact_fragments=6, flush_rows=64))
    env = RecordEpisodes(gym.make("CartPole-v1"), store, actor=int(k))
    rng = np.random.default_rng(int(k))
    say("ready")
    _wait_for(path + ".go")
    for n in range(int(most)):
        if os.path.exists(path + ".stop"):
            break
        obs, _ = env.reset(seed=int(k) * 1000 + n)
        ep = env.episode
        total, actions, done = 0.0, [], False
        while not done:
            total += float(np.asarray(obs, np.float64).sum())
            action = int(rng.integers(2))
            actions.append(str(action))
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
        if n % 3 == 2:
            store.flush()
        say(f"ep {ep.id} {len(actions)} {total!r} {''.join(actions)}")
    env.close()
    store.close()
    say("done")


def recover(path: str) -> None:
    _wait_for(path + ".go")
    with TrajectoryStore(path) as store:
        say("recovered " + " ".join(map(str, store.recovered)))


def stream(path: str, episodes: str, length: str) -> None:
    with TrajectoryStore(path, step_buffer=16) as store:
        for n in range(int(episodes)):
            with store.episode(kind="stream") as ep:
                for t in range(int(length) - n % 7):
                    ep.add_step(step_fields(ep.id, t))
            store.flush()
            say(f"flushed {ep.id} {ep.length}")
    say("done")


if __name__ == "__main__":
    {"crash": crash, "writer": writer, "actor": actor, "recover": recover, "stream": stream}[sys.argv[1]](*sys.argv[2:])
