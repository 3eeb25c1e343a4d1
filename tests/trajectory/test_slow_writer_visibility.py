"""A slow writer's steps reach other processes within about a second (the trajectory tables'
``flush_interval``), not after 10,000 of them: a reader handle opened once sees them grow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from persisting.trajectory import TrajectoryStore

CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from persisting.trajectory import TrajectoryStore
    store = TrajectoryStore(sys.argv[1], step_buffer=16)
    ep = store.begin_episode(env="slow")
    for i in range(100_000):
        ep.add_step(obs=np.full(3, i, np.float32), reward=1.0)
        if i % 16 == 15:
            print(i + 1, flush=True)  # handed to the table: acknowledged
        time.sleep(0.005)
""")


def test_a_reader_sees_a_slow_writer_within_seconds(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    child = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        first = int(child.stdout.readline())
        reader = TrajectoryStore(path, read_only=True)
        try:
            start = reader.num_steps()
            assert start >= first - 16 >= 0
            grown, deadline = [], time.monotonic() + 30
            while time.monotonic() < deadline and len(grown) < 3:
                acked = int(child.stdout.readline())
                n = reader.num_steps()
                if n > (grown[-1] if grown else start):
                    grown.append(n)
                assert n <= acked
            # three separate commits seen while the writer runs (~200 steps/s, far below 10,000)
            assert len(grown) >= 3, f"reader saw {grown} after {acked} steps were acknowledged"
            assert child.poll() is None
            steps = reader.sample_steps(8, seed=0)
            assert set(steps["obs"][:, 0].tolist()) <= set(map(float, range(grown[-1])))
        finally:
            reader.close()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
