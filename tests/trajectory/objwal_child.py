"""Child processes for the ``wal="object"`` tests: each plays a separate node (its own TMPDIR,
no directory shared with the others; the parent passes the S3 storage options as JSON in
``PERSISTING_TEST_S3``). Run with sys.executable, never forked. One line per event on stdout.

writer <uri> <tag> <episodes> <start> [pause]: wait until wall-clock ``start``, open the store,
    write ``episodes`` episodes (lengths vary), after each one sync, print ``ep <id> <length>``
    and sleep ``pause`` s; close, print ``done``.
crash <uri>: write 2 complete episodes (``ep`` lines), then one open episode: after every 24
    steps sync and print ``ack <id> <steps>``; never returns (the parent kills it).
open <uri>: open the store as a writer, print ``recovered <ids>``, close.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from persisting.engine import TableOptions
from persisting.trajectory import TrajectoryStore

LEASE = 2.0  # seconds: a killed writer is noticed this long after its last renewal


def _options() -> dict[str, str]:
    return json.loads(os.environ["PERSISTING_TEST_S3"])


def step_fields(episode: int, t: int) -> dict[str, object]:
    """The deterministic content of step ``t`` of episode ``episode``."""
    return {"obs": np.full(3, episode * 1000 + t, np.float32), "action": t % 3, "reward": float(t % 5)}


def open_store(uri: str) -> TrajectoryStore:
    return TrajectoryStore(uri, storage_options=_options(), wal="object", step_buffer=8,
                           options=TableOptions(wal_lease_seconds=LEASE))


def say(line: str) -> None:
    print(line, flush=True)


def _sleep_until(start: float) -> None:
    time.sleep(max(0.0, start - time.time()))


def writer(uri: str, tag: str, episodes: str, start: str, pause: str = "0") -> None:
    _sleep_until(float(start))
    store = open_store(uri)
    for n in range(int(episodes)):
        with store.episode(writer=tag) as ep:
            for t in range(5 + 7 * n % 23):
                ep.add_step(step_fields(ep.id, t))
        store.sync()
        say(f"ep {ep.id} {ep.length}")
        time.sleep(float(pause))
    store.close()
    say("done")


def crash(uri: str) -> None:
    store = open_store(uri)
    for _ in range(2):
        with store.episode(writer="crash") as ep:
            for t in range(11):
                ep.add_step(step_fields(ep.id, t))
        store.sync()
        say(f"ep {ep.id} {ep.length}")
    ep = store.begin_episode(writer="crash")
    t = 0
    while True:
        ep.add_step(step_fields(ep.id, t))
        t += 1
        if t % 24 == 0:
            store.sync()
            say(f"ack {ep.id} {t}")
            time.sleep(0.01)


def open_once(uri: str) -> None:
    with open_store(uri) as store:
        say("recovered " + " ".join(map(str, store.recovered)))


if __name__ == "__main__":
    {"writer": writer, "crash": crash, "open": open_once}[sys.argv[1]](*sys.argv[2:])
