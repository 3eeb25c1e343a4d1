"""``TableOptions.flush_interval``: buffered rows are committed once the oldest has waited that
long, so other processes see a slow writer's rows without waiting for ``flush_rows`` of them;
a killed writer still loses nothing it acknowledged."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from persisting.engine.options import TableOptions
from persisting.engine.table import Table
from persisting.errors import ConfigError


def committed_rows(uri: str) -> int:
    """Rows in Lance itself (what another process's reader sees), not this handle's buffer."""
    try:
        return lance.dataset(uri).count_rows()
    except (OSError, ValueError):
        return 0


def wait_for(cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_rows_are_committed_once_the_oldest_has_waited(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    t = Table(uri, options=TableOptions(flush_rows=1_000_000, flush_interval=1.5))
    try:
        start = time.monotonic()
        t.append(pa.table({"k": [1, 2]}))
        assert committed_rows(uri) == 0  # not by size: 2 rows of 1,000,000
        assert wait_for(lambda: committed_rows(uri) == 2, 20)
        assert time.monotonic() - start >= 1.4
        # a later trickle gets its own deadline, counted from its first row
        t.append(pa.table({"k": [3]}))
        assert wait_for(lambda: committed_rows(uri) == 3, 20)
        assert sorted(lance.dataset(uri).to_table().column("k").to_pylist()) == [1, 2, 3]
    finally:
        t.close()


def test_without_a_background_committer_an_append_commits_when_due(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    t = Table(uri, options=TableOptions(flush_rows=1_000_000, flush_interval=0.2, background_flush=False))
    try:
        t.append(pa.table({"k": [1]}))
        time.sleep(0.3)
        assert committed_rows(uri) == 0  # no timer: nothing happens between appends
        t.append(pa.table({"k": [2]}))  # the oldest row is 0.3 s old: this append commits both
        assert committed_rows(uri) == 2
    finally:
        t.close()


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "1", True, 10**9])
def test_bad_flush_interval_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="flush_interval"):
        TableOptions(flush_interval=bad)  # type: ignore[arg-type]


CHILD = textwrap.dedent("""
    import sys, time
    import pyarrow as pa
    from persisting.engine.options import TableOptions
    from persisting.engine.table import Table
    t = Table(sys.argv[1], options=TableOptions(flush_rows=1_000_000, flush_interval=0.3))
    for i in range(10_000):
        t.append(pa.table({"k": [i]}))
        print(i, flush=True)  # acknowledged
        time.sleep(0.02)
""")


def test_another_process_sees_a_slow_writer_and_a_kill_loses_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    child = subprocess.Popen([sys.executable, "-c", CHILD, uri], stdout=subprocess.PIPE, text=True)
    acked = -1
    try:
        assert child.stdout is not None
        # rows committed by the writer's timer while it keeps writing, far below flush_rows
        deadline = time.monotonic() + 60
        seen = 0
        while time.monotonic() < deadline and seen < 20:
            acked = int(child.stdout.readline())
            seen = committed_rows(uri)
        assert seen >= 20, f"another process saw {seen} committed rows after {acked + 1} acknowledged"
        assert child.poll() is None
        for _ in range(5):
            acked = int(child.stdout.readline())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    t = Table(uri)  # adopts the killed writer's WAL
    try:
        keys = sorted(t.scan().column("k").to_pylist())
        assert keys[: acked + 1] == list(range(acked + 1))
        assert len(set(keys)) == len(keys)
    finally:
        t.close()
