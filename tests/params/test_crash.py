"""Crash mid-save: a child SIGKILLed inside ``save`` leaves earlier checkpoints intact, the
partial one invisible, and its orphaned chunks for ``gc()`` to reclaim.

The child is a fresh interpreter (Lance is not fork-safe). It is killed at the engine's named
kill points (PERSISTING_KILL_POINT): right after the chunk table's Lance commit, before or
after its fsync, i.e. with the new chunks on disk and the manifest row not yet written.
"""

from __future__ import annotations

import pytest
import torch

from persisting.params import ParamStore

_CHILD = """
import torch
from persisting.params import ParamStore
store = ParamStore({path!r})
torch.manual_seed(1)
store.save({{"w": torch.randn(1 << 16), "shared": torch.ones(1 << 12), "step": 2}}, step=2)
print("not killed")
"""


@pytest.mark.parametrize("point", ["after_commit", "after_fsync"])
def test_kill_during_save_keeps_previous_checkpoint(store_path: str, child, point: str) -> None:
    first = {"w": torch.arange(1 << 16, dtype=torch.float32), "shared": torch.ones(1 << 12), "step": 1}
    with ParamStore(store_path) as store:
        store.save(first, step=1)
        chunks_before = store.stats()["chunks"]
    child(_CHILD.format(path=store_path), env={"PERSISTING_KILL_POINT": point}, expect_kill=True)

    with ParamStore(store_path) as store:  # the dead writer's locks are gone with it
        assert [i.step for i in store.list()] == [1]
        loaded = store.load()
        assert loaded["step"] == 1 and torch.equal(loaded["w"], first["w"])
        orphans = store.stats()["chunks"] - chunks_before
        assert orphans == 1  # "w" of step 2 reached disk; "shared" was deduplicated
        report = store.gc()
        assert report.chunks_removed == 1 and report.bytes_removed == 4 << 16
        assert store.stats()["chunks"] == chunks_before
        assert torch.equal(store.load(1)["w"], first["w"])
        info = store.save({"w": torch.zeros(3), "step": 2}, step=2)  # the step is free again
        assert info.step == 2
