"""TrajectoryStore on S3 (moto): two writers sharing a local WAL directory, and a reader."""

from __future__ import annotations

import os

import numpy as np

from persisting.trajectory import TrajectoryStore


def test_two_writers_and_a_reader_on_s3(s3_options: dict[str, str], s3_bucket: str, tmp_path: os.PathLike[str]) -> None:
    uri = f"s3://{s3_bucket}/runs"
    wal = os.path.join(tmp_path, "wal")
    a = TrajectoryStore(uri, storage_options=s3_options, wal_dir=wal)
    b = TrajectoryStore(uri, storage_options=s3_options, wal_dir=wal)
    ids = []
    for store, actor in ((a, 0), (b, 1), (a, 0)):
        with store.episode(actor=actor) as ep:
            for t in range(5):
                ep.add_step(obs=np.full(3, t + 10 * actor, dtype=np.float32), reward=float(t))
        ids.append(ep.id)
    a.close()
    b.close()
    assert len(set(ids)) == 3
    with TrajectoryStore(uri, storage_options=s3_options, wal_dir=wal, read_only=True) as r:
        table = r.episodes()
        assert sorted(table.column("episode_id").to_pylist()) == sorted(ids)
        for eid, actor in zip(ids, (0, 1, 0)):
            steps = r.episode(eid)
            assert steps["obs"].shape == (5, 3)
            assert steps["obs"][:, 0].tolist() == [t + 10 * actor for t in range(5)]
