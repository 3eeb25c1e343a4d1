"""ParamStore: round trips, partial loads, list/delete, retention, dedup, async saves."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
import torch

from persisting.errors import ConfigError, NotFoundError
from persisting.params import CheckpointInfo, ParamStore


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 32)).pow(2).mean().backward()
        opt.step()
    return model, opt


def _assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    elif isinstance(a, float):
        assert a.hex() == b.hex()
    else:
        assert a == b


def test_full_training_state_round_trips_exactly(store_path: str) -> None:
    model, opt = _trained()
    state = {
        "model": model.state_dict(),
        "optim": opt.state_dict(),
        "step": 7,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "generator": np.random.default_rng(3).bit_generator.state},
        "bf16": torch.randn(5, 3).to(torch.bfloat16),
        "dtypes": [torch.arange(6, dtype=d) for d in (torch.int8, torch.int64, torch.float16, torch.float64)]
        + [torch.tensor([True, False]), torch.empty(0, 4), torch.tensor(3.5)],
        "plain": {"nan": float("nan"), "neg0": -0.0, "inf": float("-inf"), "big": 2**80, "s": "é", "none": None,
                  "flag": True, "raw": b"\x00\xff", "tuple": (1, (2.5, "x")), 3: "int key"},
        "np": {"arr": np.arange(5, dtype=np.float32).reshape(5, 1)[::2], "scalar": np.float64(0.1), "i": np.int32(-4)},
    }
    with ParamStore(store_path) as store:
        info = store.save(state, step=7, metadata={"loss": 0.25, "note": "first"})
    assert isinstance(info, CheckpointInfo) and info.step == 7 and info.metadata == {"loss": 0.25, "note": "first"}
    with ParamStore(store_path) as store:
        loaded = store.load()
        assert store.list() == [info]
    _assert_same(state, loaded)
    assert list(loaded["optim"]["state"]) == [0, 1, 2, 3]  # integer keys stay integers
    fresh = torch.optim.AdamW(_model().parameters())
    fresh.load_state_dict(loaded["optim"])
    assert fresh.state_dict()["param_groups"][0]["betas"] == (0.8, 0.95)
    np.random.set_state(loaded["rng"]["numpy"])
    random.setstate(loaded["rng"]["python"])


def test_partial_load_reads_only_selected_chunks(store_path: str) -> None:
    state = {"model": {"big": torch.randn(256, 1024), "small": torch.ones(3)}, "optim": {"m": torch.randn(256, 1024)}, "step": 1}
    with ParamStore(store_path, chunk_bytes=64 * 1024) as store:
        store.save(state, step=1)
        before = store.stats()["bytes_read"]
        part = store.load(keys="model.small")
        assert store.stats()["bytes_read"] - before == 12
        assert list(part) == ["model"] and list(part["model"]) == ["small"]
        assert torch.equal(part["model"]["small"], state["model"]["small"])
        both = store.load(keys=["optim", "*.small"])
        assert set(both) == {"model", "optim"} and set(both["model"]) == {"small"}
        assert torch.equal(both["optim"]["m"], state["optim"]["m"])
        assert store.load(keys="step") == {"step": 1}
        assert store.load(keys="nothing.here") == {}


def test_load_into_module(store_path: str) -> None:
    model, _ = _trained()
    target = _model()
    with ParamStore(store_path) as store:
        store.save({"model": model.state_dict(), "step": 3}, step=3)
        store.load_into(target)
    for k, v in model.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)


def test_list_latest_tag_and_delete(store_path: str) -> None:
    with ParamStore(store_path) as store:
        for step in (5, 10, 15):
            store.save({"w": torch.full((4,), float(step))}, step=step, tags=["best"] if step == 10 else ())
        assert [i.step for i in store.list()] == [5, 10, 15]
        assert store.load()["w"][0] == 15
        assert store.load(tag="best")["w"][0] == 10
        assert store.load(5)["w"][0] == 5
        store.delete(10)
        with pytest.raises(NotFoundError):
            store.load(10)
        with pytest.raises(NotFoundError):
            store.load(tag="best")
        with pytest.raises(NotFoundError):
            store.delete(99)
    with ParamStore(store_path) as store:
        assert [i.step for i in store.list()] == [5, 15]


def test_keep_last_never_deletes_tagged_or_newest(store_path: str) -> None:
    with ParamStore(store_path, keep_last=2) as store:
        for step in range(1, 7):
            store.save({"w": torch.full((1000,), float(step))}, step=step, tags=["milestone"] if step == 2 else ())
        assert [i.step for i in store.list()] == [2, 5, 6]
        assert store.stats()["chunks"] == 3  # chunks of deleted checkpoints were collected
        # an older step saved late is not "the newest": retention may drop it, never step 6
        store.save({"w": torch.zeros(3)}, step=1)
        assert 6 in [i.step for i in store.list()]
        assert len([i for i in store.list() if not i.tags]) == 2
    with pytest.raises(ConfigError, match="keep_last"):
        ParamStore(store_path, keep_last=0)


def test_saving_the_same_state_twice_adds_almost_nothing(store_path: str) -> None:
    state = {"model": {f"w{i}": torch.randn(128, 256) for i in range(8)}, "step": 1}
    with ParamStore(store_path) as store:
        first = store.save(state, step=1)
        second = store.save({**state, "step": 2}, step=2)
        assert first.new_bytes == first.nbytes
        assert second.new_bytes < 0.01 * first.nbytes
        assert second.new_chunks == 0
        assert store.stats()["chunk_bytes_stored"] == first.nbytes


def test_lora_style_frozen_base_is_stored_once(store_path: str) -> None:
    base = {f"layer{i}.weight": torch.randn(256, 256) for i in range(10)}
    with ParamStore(store_path) as store:
        infos = []
        for step in range(1, 4):
            adapter = {"lora_a": torch.randn(256, 4), "lora_b": torch.randn(4, 256)}
            infos.append(store.save({"model": {**base, **adapter}, "step": step}, step=step))
        base_bytes = sum(t.numel() * 4 for t in base.values())
        adapter_bytes = 2 * 256 * 4 * 4
        assert infos[0].new_bytes == base_bytes + adapter_bytes
        for info in infos[1:]:
            assert info.new_bytes == adapter_bytes
        assert store.stats()["chunk_bytes_stored"] == base_bytes + 3 * adapter_bytes
        assert torch.equal(store.load(2)["model"]["layer3.weight"], base["layer3.weight"])


def test_save_async_snapshots_before_returning(store_path: str) -> None:
    w = torch.zeros(512, 512)
    arr = np.zeros(10)
    with ParamStore(store_path) as store:
        future = store.save_async({"w": w, "arr": arr}, step=1)
        w.add_(1.0)  # training goes on at once
        arr += 1
        info = future.result(timeout=60)
        assert info.step == 1
        loaded = store.load(1)
        assert float(loaded["w"].abs().sum()) == 0.0 and not loaded["arr"].any()
        f2 = store.save_async({"w": w}, step=2)  # copies into step 1's spare buffer
        w.add_(1.0)
        store.wait()
        assert f2.done() and [i.step for i in store.list()] == [1, 2]
        assert float(store.load(1)["w"].abs().sum()) == 0.0
        assert torch.equal(store.load(2)["w"], torch.ones(512, 512))


def test_gc_after_delete_frees_disk_space(store_path: str) -> None:
    with ParamStore(store_path) as store:
        store.save({"a": torch.randn(1 << 18)}, step=1)
        store.save({"b": torch.randn(1 << 18)}, step=2)
        store.delete(1)
        report = store.gc()
        assert report.chunks_removed == 1 and report.bytes_removed == 4 << 18
        assert report.bytes_freed >= 4 << 18
        assert store.stats()["chunks"] == 1
        assert store.load()["b"].shape == (1 << 18,)
        assert store.gc().chunks_removed == 0


def test_read_only_store_reads_but_refuses_writes(store_path: str) -> None:
    from persisting.errors import StorageError

    with ParamStore(store_path) as store:
        store.save({"w": torch.ones(3)}, step=1)
    with ParamStore(store_path, read_only=True) as ro:
        assert torch.equal(ro.load()["w"], torch.ones(3))
        with pytest.raises(StorageError):
            ro.save({"w": torch.ones(3)}, step=2)


def test_gc_compact_reclaims_partly_dead_fragments(store_path: str) -> None:
    with ParamStore(store_path) as store:
        store.save({"a": torch.randn(1 << 18), "b": torch.randn(1 << 18)}, step=1)  # one fragment
        store.save({"b": store.load(1)["b"]}, step=2)
        store.delete(1)
        lazy = store.gc()
        assert lazy.chunks_removed == 1 and lazy.bytes_freed < 1 << 18  # its fragment still holds "b"
        assert store.gc(compact=True).bytes_freed >= 4 << 18
        assert store.load()["b"].shape == (1 << 18,)


def test_two_writers_on_one_store_see_each_other(store_path: str) -> None:
    """Two handles (as two processes would) write one store: each commits its own steps,
    each sees the other's checkpoints without reopening, shared chunks are deduplicated."""
    with ParamStore(store_path) as first, ParamStore(store_path) as second:
        first.save({"w": torch.ones(2), "x": torch.arange(4.0)}, step=1)
        second.save({"w": torch.full((2,), 2.0), "x": torch.arange(4.0)}, step=2)
        assert second.info(2).new_chunks == 1  # "x" was stored by the other writer
        assert [i.step for i in first.list()] == [1, 2]
        assert torch.equal(first.load(2)["w"], torch.full((2,), 2.0))
        with ParamStore(store_path, read_only=True) as reader:
            assert torch.equal(reader.load(1)["x"], torch.arange(4.0))
            first.save({"w": torch.zeros(2)}, step=3)
            assert reader.latest().step == 3  # type: ignore[union-attr]


def test_load_into_existing_tensors_reuses_them(store_path: str) -> None:
    model, opt = _trained()
    saved = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 2}
    fresh_model = _model()
    fresh_opt = torch.optim.AdamW(fresh_model.parameters())
    with ParamStore(store_path) as store:
        store.save(saved, step=2)
        live = {"model": fresh_model.state_dict(), "optim": fresh_opt.state_dict()}
        weight = live["model"]["0.weight"]
        loaded = store.load(into=live)
        assert loaded["model"]["0.weight"] is weight  # read in place, no new tensor
        assert torch.equal(weight, saved["model"]["0.weight"])
        assert loaded["optim"]["state"][0]["exp_avg"].shape == (64, 32)  # fresh_opt had no state: new tensors
        loaded = store.load(into={"model": {"0.weight": torch.zeros(3)}})  # wrong shape: not used
        assert loaded["model"]["0.weight"].shape == (64, 32)
        target = _model()
        ptr = target[0].weight.data_ptr()
        store.load_into(target)
        assert target[0].weight.data_ptr() == ptr
        assert torch.equal(target[0].weight, saved["model"]["0.weight"])


def test_dotted_key_and_nested_key_are_distinct_places(tmp_path: Any) -> None:
    """Keys "a.b" and a -> b flatten to the same dotted name; they must not alias on load."""
    flat, nested = torch.full((3,), 1.0), torch.full((3,), 2.0)
    with ParamStore(str(tmp_path / "ckpt")) as store:
        store.save({"a.b": flat, "a": {"b": nested}}, step=1)
        plain = store.load(1)
        assert torch.equal(plain["a.b"], flat) and torch.equal(plain["a"]["b"], nested)
        live = {"a.b": torch.zeros(3), "a": {"b": torch.zeros(3)}}
        out = store.load(1, into=live)
        assert out["a.b"] is live["a.b"] and out["a"]["b"] is live["a"]["b"]
        assert torch.equal(out["a.b"], flat) and torch.equal(out["a"]["b"], nested)
        # a live state holding only one of the two places lends only that one
        only_nested = {"a": {"b": torch.zeros(3)}}
        out = store.load(1, into=only_nested)
        assert out["a"]["b"] is only_nested["a"]["b"] and out["a.b"] is not only_nested["a"]["b"]
        assert torch.equal(out["a.b"], flat) and torch.equal(out["a"]["b"], nested)


def test_reader_survives_another_writers_delete_and_compaction(store_path: str) -> None:
    """A reader's chunk positions go stale when another handle deletes and compacts chunks
    (and cleans up the files the reader's view points at): its loads stay bit-exact."""
    a, b = torch.randn(1 << 15), torch.randn(1 << 15)
    with ParamStore(store_path, chunk_bytes=1 << 12) as writer:
        writer.save({"a": a, "b": b}, step=1)
        writer.save({"a": a}, step=2)
        with ParamStore(store_path, read_only=True) as reader:
            assert torch.equal(reader.load(2)["a"], a)  # the reader's view is now warm
            writer.delete(1)
            assert writer.gc(compact=True).chunks_removed == 32  # "b" goes, "a" is rewritten
            assert torch.equal(reader.load(2)["a"], a)
            writer.save({"c": b}, step=3)
            assert torch.equal(reader.load()["c"], b)
            with pytest.raises(NotFoundError):
                reader.load(1)


def test_constructor_checks_read_only_and_wal_dir_layout(tmp_path) -> None:
    """ConfigError naming the argument before anything is created; ReadOnlyError for a save
    through a read-only handle; ``wal_dir`` is a parent holding ``chunks.wal`` and
    ``checkpoints.wal``."""
    from persisting.errors import ReadOnlyError

    for kwargs, name in (({"chunk_bytes": 0}, "chunk_bytes"), ({"commit_bytes": 1.5}, "commit_bytes"),
                         ({"keep_last": True}, "keep_last"), ({"wal_dir": "s3://b/w"}, "wal_dir")):
        with pytest.raises(ConfigError, match=name):
            ParamStore(str(tmp_path / "never"), **kwargs)
    assert not (tmp_path / "never").exists()
    with pytest.raises(ConfigError, match="wal_dir"):
        ParamStore("s3://bucket/ckpt")
    with ParamStore(str(tmp_path / "p"), wal_dir=str(tmp_path / "wal")) as store:
        store.save({"w": torch.ones(4)}, step=1)
    assert sorted(p.name for p in (tmp_path / "wal").iterdir()) == ["checkpoints.wal", "chunks.wal"]
    with ParamStore(str(tmp_path / "p"), read_only=True) as reader:
        assert reader.load(step=1)["w"].sum() == 4
        with pytest.raises(ReadOnlyError, match=f"ParamStore {tmp_path / 'p'} is open read-only"):
            reader.save({"w": torch.ones(4)}, step=2)
