"""TorchRL replay buffers on a TrajectoryStore: the same contents after a restart."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchrl")
from tensordict import TensorDict  # noqa: E402
from torchrl.data import ReplayBuffer, TensorDictReplayBuffer  # noqa: E402
from torchrl.data.replay_buffers.samplers import SliceSampler  # noqa: E402

from persisting.errors import ConfigError  # noqa: E402
from persisting.trajectory import TrajectoryStore  # noqa: E402
from persisting.trajectory.torchrl import TrajectoryStorage, replay_buffer  # noqa: E402


def _batch(n: int, start: int) -> TensorDict:
    t = torch.arange(start, start + n)
    return TensorDict({
        "observation": t[:, None].float().expand(n, 4).clone(),
        "action": t % 3,
        "next": {"observation": (t[:, None].float() + 1).expand(n, 4).clone(), "done": (t % 10 == 9)[:, None]},
        "traj": t // 10,
    }, batch_size=[n])


def test_tensordict_replay_buffer_round_trip_and_restart(tmp_path):
    path = str(tmp_path / "s")
    with TrajectoryStore(path) as store:
        rb = TensorDictReplayBuffer(storage=TrajectoryStorage(store, 1000), batch_size=32)
        rb.extend(_batch(100, 0))
        rb.extend(_batch(50, 100))
        sample = rb.sample()
        assert sample.batch_size == torch.Size([32])
        assert (sample["next", "observation"] == sample["observation"] + 1).all()
        before = rb[:150].clone()
    with TrajectoryStore(path) as store:
        rb = replay_buffer(store, 1000, batch_size=32)
        assert len(rb) == 150
        after = rb[:150]
        for key in ("observation", "action", ("next", "observation"), ("next", "done"), "traj"):
            assert torch.equal(after[key], before[key]), key
        rb.extend(_batch(10, 150))  # the writer resumed after the restored items
        assert len(rb) == 160 and torch.equal(rb[150:160]["action"], torch.arange(150, 160) % 3)
        assert (rb.sample()["observation"][:, 0] < 160).all()


def test_wrap_around_overwrites_survive_restart(tmp_path):
    path = str(tmp_path / "s")
    with TrajectoryStore(path) as store:
        rb = replay_buffer(store, 64, batch_size=8)
        for k in range(5):  # 150 items into 64 slots: slots are overwritten round-robin
            rb.extend(_batch(30, 30 * k))
        expect = rb[:64]["action"].clone()
        expect_obs = rb[:64]["observation"].clone()
    with TrajectoryStore(path, read_only=True) as store:
        rb = replay_buffer(store, 64, batch_size=8)
        assert len(rb) == 64
        assert torch.equal(rb[:64]["action"], expect) and torch.equal(rb[:64]["observation"], expect_obs)
        assert rb._writer._cursor == 150 % 64
    with TrajectoryStore(path, read_only=True) as store, pytest.raises(ConfigError, match="max_size"):
        TrajectoryStorage(store, 32)


def test_plain_tensors_slices_and_empty(tmp_path):
    path = str(tmp_path / "s")
    with TrajectoryStore(path) as store:
        rb = ReplayBuffer(storage=TrajectoryStorage(store, 100, name="tensors"), batch_size=4)
        rb.extend(torch.arange(40, dtype=torch.float32).reshape(20, 2))
        rb.add(torch.tensor([100.0, 101.0]))
        assert len(rb) == 21 and rb.sample().shape == (4, 2)
        traj = replay_buffer(store, 200, name="slices", batch_size=20,
                             sampler=SliceSampler(slice_len=5, traj_key="traj", strict_length=True))
        traj.extend(_batch(100, 0))
        s = traj.sample().reshape(4, 5)
        assert (s["traj"] == s["traj"][:, :1]).all()  # TorchRL's own sampler on the storage
        other = replay_buffer(store, 10, name="emptied", batch_size=2)
        other.extend(_batch(5, 0))
        other.empty()
        other.extend(_batch(3, 7))
    with TrajectoryStore(path, read_only=True) as store:
        rb = ReplayBuffer(storage=TrajectoryStorage(store, 100, name="tensors"), batch_size=4)
        assert len(rb) == 21 and rb[20].tolist() == [100.0, 101.0] and rb[3].tolist() == [6.0, 7.0]
        other = replay_buffer(store, 10, name="emptied")
        assert len(other) == 3 and other[:3]["action"].tolist() == [7 % 3, 8 % 3, 9 % 3]


def test_storage_beside_other_episodes(tmp_path):
    with TrajectoryStore(str(tmp_path / "s")) as store:
        with store.episode(env="x") as ep:
            ep.add_step(obs=1.0, reward=1.0)
        rb = replay_buffer(store, 10, batch_size=2)  # no storage yet: starts empty
        assert len(rb) == 0
        rb.extend(_batch(4, 0))
        assert len(replay_buffer(store, 10)) == 4
