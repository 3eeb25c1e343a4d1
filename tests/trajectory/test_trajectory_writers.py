"""Single writer per store: a second writer process gets LockedError until the first closes,
then writes without id collisions or lost steps."""

from __future__ import annotations

from persisting.trajectory import TrajectoryStore


def test_second_writer_process(tmp_path, spawn_child):
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
    assert child.stdout.readline().strip() == "locked"
    store.close()  # let the child in
    theirs = []
    for line in child.stdout:
        if line.startswith("wrote"):
            theirs = [int(x) for x in line.split()[1:]]
            break
    assert child.wait(timeout=60) == 0
    assert len(theirs) == 3 and not set(theirs) & set(mine)
    with TrajectoryStore(path, read_only=True) as reader:
        eps = reader.episodes()
        assert sorted(eps.column("episode_id").to_pylist()) == sorted(mine + theirs)
        lengths = dict(zip(eps.column("episode_id").to_pylist(), eps.column("length").to_pylist()))
        assert all(lengths[i] == 5 for i in mine) and all(lengths[i] == 7 for i in theirs)
        assert reader.num_steps() == 3 * 5 + 3 * 7
