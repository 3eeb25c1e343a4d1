"""A second writer process logs into a store another process has open: no LockedError, no id
collisions, and the first writer sees the second's episodes without reopening."""

from __future__ import annotations

from persisting.trajectory import TrajectoryStore


def test_second_writer_process_while_the_first_is_open(tmp_path, spawn_child):
    path = str(tmp_path / "two")
    store = TrajectoryStore(path)
    mine = []
    for _ in range(3):
        with store.episode(writer="parent") as ep:
            for t in range(5):
                ep.add_step(action=t)
        mine.append(ep.id)
    child = spawn_child("writer", path)
    assert child.stdout is not None
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert out.splitlines()[0] == "open"
    theirs = [int(x) for x in out.splitlines()[-1].split()[1:]]
    assert len(theirs) == 3 and not set(theirs) & set(mine)
    # the open writer sees the other process's flushed episodes, with their steps
    rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
    assert sorted(rows) == sorted(mine + theirs)
    assert all(rows[i]["writer"] == "child" and rows[i]["length"] == 7 for i in theirs)
    assert all(store.episode(i)["step"].tolist() == list(range(7)) for i in theirs)
    with store.episode(writer="parent") as later:
        later.add_step(action=9)
    assert later.id not in theirs + mine
    store.close()
    with TrajectoryStore(path, read_only=True) as reader:
        eps = reader.episodes()
        assert sorted(eps.column("episode_id").to_pylist()) == sorted(mine + theirs + [later.id])
        assert reader.num_steps() == 3 * 5 + 3 * 7 + 1
