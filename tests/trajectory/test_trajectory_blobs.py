"""Blob step fields (images, bfloat16) sampled through the engine's payload path: straight into
one (n, *shape) array, checksums verified, damage a typed error naming the field; steps that
lack the field and rows not committed yet still read correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from persisting.errors import CorruptionError
from persisting.trajectory import TrajectoryStore

SHAPE = (160, 160, 3)  # 75 KiB: Lance keeps blobs this size in their own .blob files (not 27 KiB ones)


def _log(store: TrajectoryStore, episodes: int, steps: int, seed: int = 0) -> dict[tuple[int, int], np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = {}
    for _ in range(episodes):
        with store.episode() as ep:
            for t in range(steps):
                img = rng.integers(0, 255, SHAPE, dtype=np.uint8)
                frames[(ep.id, t)] = img
                ep.add_step(obs=img, half=torch.full((8, 64), float(t), dtype=torch.bfloat16), action=t)
    return frames


def _check(batch: dict, frames: dict) -> None:
    assert isinstance(batch["obs"], np.ndarray) and batch["obs"].shape == (len(batch["step"]), *SHAPE)
    for i, (e, t) in enumerate(zip(batch["episode_id"].tolist(), batch["step"].tolist())):
        np.testing.assert_array_equal(batch["obs"][i], frames[(e, t)])
        assert float(batch["half"][i][0, 0]) == float(t)


def test_blob_fields_sampled_through_the_payload_path(tmp_path: Path) -> None:
    with TrajectoryStore(str(tmp_path / "s"), blob_threshold=4096) as store:
        frames = _log(store, 6, 20)
        store.flush()
        assert list((tmp_path / "s" / "steps.lance").rglob("*.blob")), "payloads are not in blob files"
        batch = store.sample_steps(128, seed=1, fields=["obs", "half"])
        assert batch["half"].dtype == torch.bfloat16 and tuple(batch["half"].shape) == (128, 8, 64)
        _check(batch, frames)
        ep = store.episode(2)
        np.testing.assert_array_equal(ep["obs"], np.stack([frames[(2, t)] for t in range(20)]))
        clips = store.sample_slices(4, 5, seed=2, fields=["obs"])
        assert clips["obs"].shape[:2] == (4, 5) or clips["obs"].shape[0] == 20
        # rows handed to the table but not committed, and a field some steps lack
        with store.episode() as ep:
            for t in range(3):
                img = np.full(SHAPE, t, np.uint8)
                frames[(ep.id, t)] = img
                ep.add_step(obs=img, half=torch.full((8, 64), float(t), dtype=torch.bfloat16), action=t)
            ep.add_step(action=3)  # no obs, no half
        new = store.episode(ep.id)  # a step without the field: an object array with None there
        np.testing.assert_array_equal(np.stack(new["obs"][:3]), np.stack([frames[(ep.id, t)] for t in range(3)]))
        assert new["obs"][3] is None and new["half"][3] is None and float(new["half"][2][0, 0]) == 2.0


def test_damaged_blob_payload_is_a_typed_error_naming_the_field(tmp_path: Path) -> None:
    with TrajectoryStore(str(tmp_path / "s"), blob_threshold=4096) as store:
        _log(store, 2, 10)
    blob = sorted((tmp_path / "s" / "steps.lance").rglob("*.blob"))[0]
    with open(blob, "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    with TrajectoryStore(str(tmp_path / "s"), read_only=True) as reader:
        with pytest.raises(CorruptionError, match="obs|half"):
            for seed in range(20):  # until a sample includes the damaged step
                reader.sample_steps(64, seed=seed, fields=["obs", "half"])
