"""torch.distributed.checkpoint round trip through ParamStoreWriter/Reader, single process."""

from __future__ import annotations

import pytest
import torch

dcp = pytest.importorskip("torch.distributed.checkpoint")

from persisting.errors import InvalidRecordError
from persisting.params import ParamStore
from persisting.params.dcp import ParamStoreReader, ParamStoreWriter

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)).to(torch.bfloat16)


def test_dcp_round_trip_with_versions_and_dedup(store_path: str) -> None:
    src, dst = _model(0), _model(1)
    with ParamStore(store_path) as store:
        dcp.save({"model": src.state_dict()}, storage_writer=ParamStoreWriter(store, step=1))
        second = ParamStoreWriter(store, step=2, tags=("dcp",))
        dcp.save({"model": src.state_dict()}, storage_writer=second)
        assert [i.step for i in store.list()] == [1, 2]
        assert store.info(2).new_bytes == 0  # same tensors: deduplicated
        state = {"model": dst.state_dict()}
        dcp.load(state, storage_reader=ParamStoreReader(store, tag="dcp"))
        dst.load_state_dict(state["model"])
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_dcp_refuses_pickled_values_unless_allowed(store_path: str) -> None:
    with ParamStore(store_path) as store:
        # DCP wraps what write_data raises in its CheckpointException, keeping the message
        with pytest.raises((InvalidRecordError, dcp.CheckpointException), match="allow_pickled_values"):
            dcp.save({"w": torch.ones(2), "lr": 0.1}, storage_writer=ParamStoreWriter(store, step=1))
        assert store.list() == []
        dcp.save({"w": torch.ones(2), "lr": 0.1}, storage_writer=ParamStoreWriter(store, step=1, allow_pickled_values=True))
        state = {"w": torch.zeros(2), "lr": 0.0}
        # the reader refuses them too unless told at load time (see test_dcp_pickles.py)
        with pytest.raises((InvalidRecordError, dcp.CheckpointException), match="allow_pickled_values"):
            dcp.load(state, storage_reader=ParamStoreReader(store))
        dcp.load(state, storage_reader=ParamStoreReader(store, allow_pickled_values=True))
        assert torch.equal(state["w"], torch.ones(2)) and state["lr"] == 0.1
