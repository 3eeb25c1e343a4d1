"""The rank program of the multi-rank DCP tests (run by torchrun from test_dcp_multirank.py).

Usage: ``torchrun --nproc_per_node=2 dcp_ranks.py STORE SINGLE OUT LAST_STEP``. Every rank opens
the ONE store at STORE and, in order:

1. saves step 1: a DTensor ``Shard(0)`` over a 2-rank mesh, a replicated plain tensor, a small
   model and its Adam state (each rank writes its own shards);
2. saves step 2 with rank 1 raising after its chunks are durable: both ranks' saves must raise
   and no checkpoint appear; rank 0 then runs ``gc`` (removing rank 1's orphans) and step 2 is
   saved again with the same content, so rank 1 must not dedup against chunks gc removed;
3. loads the checkpoint one process saved at SINGLE into DTensors over 2 ranks (resharding);
4. saves steps 3..LAST_STEP while an evaluation process (started by the test) loads them.

Each rank writes what it saw to OUT/rank<r>.json. The tensors of step ``s`` are
:func:`full_state` (``s``), so any reader can check a checkpoint is whole and bit-exact.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch

ROWS, COLS = 64, 256  # the sharded tensor: 64 KiB, two chunks per rank at 16 KiB chunks
CHUNK_BYTES = 1 << 14


def full_state(step: int) -> dict[str, Any]:
    """The whole (unsharded) state saved at ``step``, the same in every process."""
    g = torch.Generator().manual_seed(1000 + step)
    torch.manual_seed(7)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 4, generator=g)).sum().backward()
    opt.step()
    return {
        "sharded": torch.randn(ROWS, COLS, generator=g),
        "rep": torch.arange(10, dtype=torch.float64) + step,
        "model": model.state_dict(),
        "optim": opt.state_dict(),
    }


def blank_like(state: Any) -> Any:
    """A state of the same structure with every tensor zeroed (a load target)."""
    if isinstance(state, torch.Tensor):
        return torch.zeros_like(state)
    if isinstance(state, dict):
        return {k: blank_like(v) for k, v in state.items()}
    if isinstance(state, list):
        return [blank_like(v) for v in state]
    return state


def same(a: Any, b: Any) -> bool:
    """Bit-exact equality of two states (tensors by bytes, the rest by ==)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _main(store_path: str, single_path: str, out: str, last_step: int) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    from persisting.params import ParamStore
    from persisting.params.dcp import ParamStoreReader, ParamStoreWriter

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))

    def sharded(step: int) -> dict[str, Any]:
        state = full_state(step)
        state["sharded"] = DTensor.from_local(state["sharded"].chunk(2)[rank].clone(), mesh, [Shard(0)])
        return state

    class FailingWriter(ParamStoreWriter):
        def write_data(self, plan: Any, planner: Any) -> Any:
            written = super().write_data(plan, planner)  # this rank's chunks are durable now
            if rank == 1:
                raise RuntimeError("rank 1 fails mid-save")
            return written

    report: dict[str, Any] = {"rank": rank}
    store = ParamStore(store_path, chunk_bytes=CHUNK_BYTES)
    dcp.save(sharded(1), storage_writer=ParamStoreWriter(store, step=1, allow_pickled_values=True))
    report["after_1"] = [i.step for i in store.list()]

    try:
        dcp.save(sharded(2), storage_writer=FailingWriter(store, step=2, allow_pickled_values=True))
        report["failed_save_raised"] = False
    except dcp.CheckpointException as exc:  # a BaseException: every rank's failure, wrapped
        report["failed_save_raised"] = sorted(exc.failures) == [1] and "rank 1 fails mid-save" in str(
            exc.failures[1]
        )
    report["after_failure"] = [i.step for i in store.list()]
    dist.barrier()
    if rank == 0:
        report["gc_chunks_removed"] = store.gc().chunks_removed
    dist.barrier()
    dcp.save(sharded(2), storage_writer=ParamStoreWriter(store, step=2, allow_pickled_values=True))
    report["after_2"] = [i.step for i in store.list()]

    with ParamStore(single_path, read_only=True) as single:  # saved by one process: 1 -> 2 ranks
        target = blank_like(sharded(9))
        target["sharded"] = DTensor.from_local(torch.zeros(ROWS // 2, COLS), mesh, [Shard(0)])
        dcp.load(target, storage_reader=ParamStoreReader(single, allow_pickled_values=True))
        expected = full_state(9)
        report["resharded_half_exact"] = same(target["sharded"].to_local(), expected["sharded"].chunk(2)[rank])
        del target["sharded"], expected["sharded"]
        report["resharded_rest_exact"] = same(target, expected)

    for step in range(3, last_step + 1):  # an evaluation process loads these meanwhile
        dcp.save(sharded(step), storage_writer=ParamStoreWriter(store, step=step, allow_pickled_values=True))
    report["final"] = [i.step for i in store.list()]
    store.close()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
