"""No read path of a ParamStore runs a stored pickle.

The payload is real: a pickle whose ``__reduce__`` creates a marker file when unpickled. It is
stored through the DCP writer (``allow_pickled_values=True``) and through a plain
``ParamStore.save`` of the same tree; every load path must leave the marker absent, and DCP
loads must fail with a typed error that names the value.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
import torch

dcp = pytest.importorskip("torch.distributed.checkpoint")

from persisting.errors import InvalidRecordError
from persisting.params import ParamStore
from persisting.params.dcp import ParamStoreReader, ParamStoreWriter

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


class Evil:
    """Unpickling this creates ``marker`` (any code could run in its place)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _typed(exc: BaseException) -> InvalidRecordError | None:
    """The InvalidRecordError inside ``exc`` (DCP wraps reader errors in CheckpointException)."""
    if isinstance(exc, InvalidRecordError):
        return exc
    for failure in getattr(exc, "failures", {}).values():
        inner = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(inner, BaseException) and (found := _typed(inner)) is not None:
            return found
    return None


def _expect_refused(state: dict[str, Any], reader: ParamStoreReader, marker: str) -> InvalidRecordError:
    with pytest.raises((InvalidRecordError, dcp.CheckpointException)) as info:
        dcp.load(state, storage_reader=reader)
    err = _typed(info.value)
    assert err is not None, f"untyped error: {info.value!r}"
    assert "evil" in str(err) and err.details.get("key") == "evil"
    assert not os.path.exists(marker), "a stored pickle was executed"
    return err


def test_no_load_path_executes_a_stored_pickle(tmp_path: Any) -> None:
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "ckpt")
    with ParamStore(path) as store:
        dcp.save({"w": torch.ones(3), "evil": Evil(marker)},
                 storage_writer=ParamStoreWriter(store, step=1, allow_pickled_values=True))
        assert not os.path.exists(marker)
        # the same tree re-saved by a plain save: the DCP writer's check never ran on it
        store.save(store.load(1), step=2)

        for step in (1, 2):
            # refused by default, before any tensor of the caller is touched
            state = {"w": torch.zeros(3), "evil": None}
            _expect_refused(state, ParamStoreReader(store, step=step), marker)
            assert torch.equal(state["w"], torch.zeros(3))
            # opted in: torch's restricted unpickler still refuses the payload
            err = _expect_refused({"w": torch.zeros(3), "evil": None},
                                  ParamStoreReader(store, step=step, allow_pickled_values=True), marker)
            assert "weights_only" in str(err)
            # a load that does not ask for the value works
            only_w = {"w": torch.zeros(3)}
            dcp.load(only_w, storage_reader=ParamStoreReader(store, step=step))
            assert torch.equal(only_w["w"], torch.ones(3))

        # the store's own paths hand back bytes, never objects
        blobs = store.load(2)["dcp"]["bytes"]
        assert all(isinstance(b, bytes) for b in blobs.values())
        store.load(2, into={"dcp": {"tensors": {}}})
        store.export_safetensors(2, str(tmp_path / "out.safetensors"))

        model = torch.nn.Linear(2, 2)
        raw = io.BytesIO()
        torch.save(Evil(marker), raw)
        store.save({"model": model.state_dict(), "blob": raw.getvalue()}, step=3)
        store.load_into(torch.nn.Linear(2, 2), 3)
        store.load(3, into={"model": model.state_dict()})
        store.export_safetensors(3, str(tmp_path / "out3.safetensors"))
    assert not os.path.exists(marker), "a stored pickle was executed"


def test_opt_in_loads_plain_values_through_the_restricted_unpickler(tmp_path: Any) -> None:
    with ParamStore(str(tmp_path / "ckpt")) as store:
        dcp.save({"w": torch.ones(2), "lr": 0.25, "sched": {"milestones": [3, 5]}},
                 storage_writer=ParamStoreWriter(store, step=1, allow_pickled_values=True))
        state: dict[str, Any] = {"w": torch.zeros(2), "lr": 0.0, "sched": {"milestones": []}}
        dcp.load(state, storage_reader=ParamStoreReader(store, allow_pickled_values=True))
        assert torch.equal(state["w"], torch.ones(2))
        assert state["lr"] == 0.25 and state["sched"] == {"milestones": [3, 5]}
