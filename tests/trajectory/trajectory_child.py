"""Child processes for the trajectory crash and second-writer tests (run with sys.executable,
never forked: Lance is not fork-safe). Protocol: one line per event on stdout.

crash <path>: write 5 complete episodes, begin one long open episode and then one that never
    gets a step (``ghost <id>``); to the long one, after every 40 steps
    hand off + sync and print ``ack <episode_id> <steps>``; never returns (the parent kills it).
writer <path>: try to open the store as a writer; print ``locked`` on LockedError and retry
    every 50 ms; once open, write 3 episodes of 7 steps and print ``wrote <ids>``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from persisting.errors import LockedError
from persisting.trajectory import TrajectoryStore


def step_fields(episode: int, t: int) -> dict[str, object]:
    """The deterministic content of step ``t`` of episode ``episode``."""
    return {
        "obs": np.full(3, episode * 1000 + t, np.float32),
        "action": (episode + t) % 3,
        "reward": float(t % 5),
        "terminated": False,
        "truncated": False,
    }


def say(line: str) -> None:
    print(line, flush=True)


def crash(path: str) -> None:
    store = TrajectoryStore(path, step_buffer=16)
    for e in range(5):
        with store.episode(kind="done", n=e) as ep:
            for t in range(30 + e):
                ep.add_step(step_fields(ep.id, t))
    store.sync()
    say("complete " + " ".join(str(i) for i in range(5)))
    ep = store.begin_episode(kind="open")
    ghost = store.begin_episode(kind="ghost")  # the newest id; gets no step, so leaves no trace
    say(f"ghost {ghost.id}")
    t = 0
    while True:
        ep.add_step(step_fields(ep.id, t))
        t += 1
        if t % 40 == 0:
            store.sync()
            say(f"ack {ep.id} {t}")
            time.sleep(0.002)


def writer(path: str) -> None:
    while True:
        try:
            store = TrajectoryStore(path)
            break
        except LockedError:
            say("locked")
            time.sleep(0.05)
    ids = []
    for _ in range(3):
        with store.episode(writer="child") as ep:
            for t in range(7):
                ep.add_step(step_fields(ep.id, t))
        ids.append(ep.id)
    store.close()
    say("wrote " + " ".join(map(str, ids)))


if __name__ == "__main__":
    {"crash": crash, "writer": writer}[sys.argv[1]](sys.argv[2])
