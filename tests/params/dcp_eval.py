"""An evaluation job for test_dcp_multirank.py: loads the newest checkpoint in a loop while the
2-rank trainer (dcp_ranks.py) saves, and checks every load is whole and bit-exact.

Usage: ``python dcp_eval.py STORE OUT LAST_STEP DEADLINE_SECONDS``; writes OUT (JSON).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from typing import Any

import torch

from dcp_ranks import COLS, ROWS, full_state, same


def _main(store_path: str, out: str, last_step: int, deadline: float) -> None:
    import torch.distributed.checkpoint as dcp

    from persisting.errors import NotFoundError
    from persisting.params import ParamStore
    from persisting.params.dcp import ParamStoreReader

    warnings.filterwarnings("ignore", "torch.distributed is disabled")
    report: dict[str, Any] = {"loads": 0, "steps": [], "bad": [], "errors": []}
    store = None
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if store is None:
                store = ParamStore(store_path, read_only=True)
            latest = store.latest()
            if latest is None:
                time.sleep(0.05)
                continue
            # 2 ranks -> 1 process: the planner asks for both halves of "sharded"
            target = {"sharded": torch.zeros(ROWS, COLS), "rep": torch.zeros(10, dtype=torch.float64)}
            reader = ParamStoreReader(store)
            dcp.load(target, storage_reader=reader)
        except NotFoundError as exc:  # a store not created yet
            report["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
            time.sleep(0.05)
            continue
        expected = full_state(reader.step)
        report["loads"] += 1
        if reader.step not in report["steps"]:
            report["steps"].append(reader.step)
        if not (same(target["sharded"], expected["sharded"]) and same(target["rep"], expected["rep"])):
            report["bad"].append(reader.step)
        if reader.step >= last_step:
            break
    if store is not None:
        store.close()
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
