from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = os.path.join(os.path.dirname(__file__), "trajectory_child.py")


@pytest.fixture
def spawn_child():
    """Start tests/trajectory/trajectory_child.py in a fresh interpreter; kill leftovers at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(mode: str, path: str, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, CHILD, mode, path, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
