"""Multi-rank torch.distributed.checkpoint saves into ONE ParamStore, under real torchrun.

One torchrun launch (2 ranks, gloo, CPU; see dcp_ranks.py) runs every rank-side scenario: a
DTensor Shard(0) + replicated tensor + optimizer state save, a save where rank 1 raises after
its chunks are durable (both ranks raise, no checkpoint, gc takes the orphans, the step saved
again must not dedup against removed chunks), a load of a one-process checkpoint into 2 ranks,
and saves while an evaluation process (dcp_eval.py) loads in a loop. This process then loads
the 2-rank checkpoints alone (2 -> 1) and compares them bit for bit with the full tensors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from typing import Any

import pytest

dcp = pytest.importorskip("torch.distributed.checkpoint")
pytest.importorskip("torch.distributed.tensor")

from persisting.params import ParamStore
from persisting.params.dcp import ParamStoreReader, ParamStoreWriter

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

_HERE = os.path.dirname(os.path.abspath(__file__))
_LAST = 8  # the trainer saves steps 3.._LAST while the evaluation job loads


def _ranks_module() -> Any:
    spec = importlib.util.spec_from_file_location("dcp_ranks", os.path.join(_HERE, "dcp_ranks.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One torchrun launch of every rank-side scenario, with an evaluation job beside it."""
    ranks = _ranks_module()
    root = tmp_path_factory.mktemp("dcp2")
    store, single, out = str(root / "store"), str(root / "single"), str(root / "out")
    os.makedirs(out)
    with ParamStore(single) as s:  # saved by one process, loaded by 2 ranks below
        dcp.save(ranks.full_state(9), storage_writer=ParamStoreWriter(s, step=9, allow_pickled_values=True))
    ParamStore(store).close()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    evaluator = subprocess.Popen(
        [sys.executable, os.path.join(_HERE, "dcp_eval.py"), store, os.path.join(out, "eval.json"), str(_LAST), "80"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    trainer = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         os.path.join(_HERE, "dcp_ranks.py"), store, single, out, str(_LAST)],
        env=env, capture_output=True, text=True, timeout=150, check=False,
    )
    eval_log, _ = evaluator.communicate(timeout=90)
    assert trainer.returncode == 0, f"torchrun failed:\n{trainer.stdout[-4000:]}\n{trainer.stderr[-6000:]}"
    assert evaluator.returncode == 0, f"evaluation job failed:\n{eval_log[-4000:]}"
    result: dict[str, Any] = {"store": store, "ranks": ranks}
    for r in (0, 1):
        with open(os.path.join(out, f"rank{r}.json")) as f:
            result[r] = json.load(f)
    with open(os.path.join(out, "eval.json")) as f:
        result["eval"] = json.load(f)
    return result


def test_two_ranks_save_one_checkpoint_loaded_whole_in_one_process(run: dict[str, Any]) -> None:
    ranks = run["ranks"]
    assert run[0]["after_1"] == run[1]["after_1"] == [1]
    with ParamStore(run["store"], read_only=True) as store:
        for step in (1, 2, _LAST):
            expected = ranks.full_state(step)
            target = ranks.blank_like(expected)
            dcp.load(target, storage_reader=ParamStoreReader(store, step=step, allow_pickled_values=True))
            assert ranks.same(target, expected), f"step {step} differs from the full tensors"


def test_a_failing_rank_leaves_no_checkpoint_and_every_save_raises(run: dict[str, Any]) -> None:
    for r in (0, 1):
        assert run[r]["failed_save_raised"] is True
        assert run[r]["after_failure"] == [1]
    assert run[0]["gc_chunks_removed"] >= 2  # rank 1's durable chunks of the failed save
    # saved again with the same content: rank 1 rewrote what gc removed instead of deduping
    assert run[0]["after_2"] == run[1]["after_2"] == [1, 2]


def test_one_process_checkpoint_resharded_onto_two_ranks(run: dict[str, Any]) -> None:
    for r in (0, 1):
        assert run[r]["resharded_half_exact"] is True and run[r]["resharded_rest_exact"] is True


def test_evaluation_job_never_sees_a_partial_checkpoint(run: dict[str, Any]) -> None:
    ev = run["eval"]
    print(f"evaluation job: {ev['loads']} loads, steps seen {ev['steps']}")
    assert ev["bad"] == [] and ev["loads"] >= 1, ev
    assert ev["steps"] == sorted(ev["steps"]) and ev["steps"][-1] == _LAST
    assert run[0]["final"] == list(range(1, _LAST + 1))


def test_orphans_of_a_failed_multirank_save_go_at_gc(run: dict[str, Any]) -> None:
    with ParamStore(run["store"]) as store:
        assert store.gc().chunks_removed == 0  # every chunk left is referenced
        assert len(store.list()) == _LAST
