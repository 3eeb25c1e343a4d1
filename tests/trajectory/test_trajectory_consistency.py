"""Read-only handles see consistent snapshots while a live writer ends episodes.

A reader must never see an episode's end row (status ``complete``, its ``length``) without the
steps that row counts. The writer runs in its own interpreter (spawned, never forked: Lance is
not fork-safe) and ends many short episodes; this process opens read-only handles and refreshes
them over and over meanwhile.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


from persisting.trajectory import TrajectoryStore

_WRITER = textwrap.dedent(
    """
    import sys, time
    from persisting.trajectory import TrajectoryStore

    path, durability, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = TrajectoryStore(path, durability=durability, step_buffer=4)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        with store.episode(n=n) as ep:
            for t in range(10):
                ep.add_step(obs=float(t), reward=1.0, action=t % 3)
        n += 1
        if n % 25 == 0:
            store.flush()
    store.close()
    print(f"done {n}", flush=True)
    """
)


def _check(store: TrajectoryStore) -> int:
    """Assert every ended episode the reader sees has exactly ``length`` steps; count them."""
    ended = 0
    for row in store.episodes().to_pylist():
        if row["status"] == "open":
            continue
        steps = store.read_episode(row["episode_id"])
        assert len(steps["step"]) == row["length"], (
            f"episode {row['episode_id']} is {row['status']} with length {row['length']} "
            f"but the reader sees {len(steps['step'])} steps"
        )
        ended += 1
    return ended


def test_readers_never_see_an_episode_end_without_its_steps(tmp_path: object) -> None:
    durability = "batch"
    path = str(tmp_path) + "/traj"  # type: ignore[operator]
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, path, durability, "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read() if writer.stderr else ""
        opens = refreshes = seen = 0
        held = TrajectoryStore(path, read_only=True)  # one long-lived handle, refreshed
        try:
            while writer.poll() is None:
                with TrajectoryStore(path, read_only=True) as fresh:  # fresh opens
                    seen = max(seen, _check(fresh))
                    opens += 1
                held.refresh()
                seen = max(seen, _check(held))
                refreshes += 1
        finally:
            held.close()
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert opens >= 5 and refreshes >= 5 and seen > 0
    with TrajectoryStore(path, read_only=True) as final:
        total = int(out.split()[-1])
        assert _check(final) == total


def test_reader_hides_an_end_row_committed_before_its_steps(tmp_path: object) -> None:
    """With durability "none" each table commits on its own (a full buffer commits in the
    background), so the episodes table can be committed while the steps it counts are not.
    A reader then shows the episode as it was before its end row, never with missing steps."""
    path = str(tmp_path) + "/traj"  # type: ignore[operator]
    with TrajectoryStore(path, durability="none", step_buffer=4) as writer:
        with writer.episode(n=0) as first:
            for t in range(6):  # 4 handed off with the "open" row, 2 more at the end
                first.add_step(obs=float(t), reward=1.0)
        with writer.episode(n=1) as second:
            for t in range(3):  # ends before its first hand-off: no "open" row
                second.add_step(obs=float(t), reward=1.0)
        writer._steps.flush()
        with writer.episode(n=2) as third:
            third.add_step(obs=0.0, reward=1.0)
        writer._episodes.flush()  # what a background commit of the episodes table does
        with TrajectoryStore(path, read_only=True) as reader:
            rows = {r["episode_id"]: r for r in reader.episodes().to_pylist()}
            assert rows[first.id]["status"] == "complete" and rows[first.id]["length"] == 6
            assert rows[second.id]["status"] == "complete"
            assert third.id not in rows  # its end row counts a step the reader cannot see
            _check(reader)
            writer.flush()
            reader.refresh()
            assert reader.episodes().num_rows == 3
            assert _check(reader) == 3
