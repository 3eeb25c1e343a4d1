"""Simulated power cuts over every store: nothing acknowledged is lost, every table opens.

A child writes through a store with the power-cut shim preloaded (see ``powercut/``), prints
each acknowledgement, and is SIGKILLed at a random moment. The disk a power cut would leave
(only fsynced bytes and directory entries) replaces the store's directory; the test opens it
as a writer (which replays the WAL) and checks every acknowledged record: for ``always`` and
the facades, everything acknowledged; for ``batch`` and ``none``, everything up to the last
``sync()``/``flush()`` the child reported.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from powercut import PowerCut, build_shim, run_until_cut  # noqa: E402
from powercut.child import expected, kv_tensor, kv_tokens, param_state  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the power-cut shim")

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "powercut", "child.py")
CASES = ["table-always", "table-batch", "table-none", "kv", "params", "traj", "queue-persisting", "queue-lance"]


@dataclass
class Outcome:
    """What one power cut did: records that had to survive, those missing, open failures."""

    required: int = 0
    lost: list[int] = field(default_factory=list)
    open_error: str | None = None


def required_ids(lines: list[str]) -> set[int]:
    """Ids the child's acknowledgements promise: every ``A lo hi`` range, every id < ``D n``."""
    ids: set[int] = set()
    durable = 0
    for line in lines:
        parts = line.split()
        if parts[0] == "A":
            ids.update(range(int(parts[1]), int(parts[2])))
        elif parts[0] == "D":
            durable = max(durable, int(parts[1]))
    ids.update(range(durable))
    return ids


def present_ids(case: str, root: str, required: set[int]) -> set[int]:
    """Open the store in ``root`` as a writer and return the required ids it serves intact."""
    if case.startswith("table-"):
        from persisting.engine import Table, TableOptions

        mode = case.removeprefix("table-")
        with Table(os.path.join(root, "t.lance"), options=TableOptions(durability=mode)) as t:
            rows = t.scan().to_pylist()
        return {r["seq"] for r in rows if {k: r[k] for k in expected(0)} == expected(r["seq"])}
    if case == "kv":
        from persisting import KVCacheStore

        with KVCacheStore(os.path.join(root, "kv"), namespace="m", chunk_size=8) as s:
            out = set()
            for i in required:
                got = s.get(kv_tokens(i), framework="numpy")
                if got is not None and np.array_equal(np.asarray(got), kv_tensor(i)):
                    out.add(i)
            return out
    if case == "params":
        from persisting import ParamStore

        s = ParamStore(os.path.join(root, "ck"))
        try:
            steps = {info.step for info in s.list()}
            out = set()
            for i in required & steps:
                got, want = s.load(i), param_state(i)
                if all(np.array_equal(np.asarray(got[k]), np.asarray(want[k])) for k in want):
                    out.add(i)
            return out
        finally:
            s.close()
    if case == "traj":
        from persisting import TrajectoryStore

        s = TrajectoryStore(os.path.join(root, "rl"))
        try:
            eps = s.episodes().to_pylist()
            out = set()
            for e in eps:
                if e.get("tag") is None:
                    continue  # an unacknowledged episode recovered as "incomplete" (its steps survived)
                i = int(e["tag"][1:])
                steps = s.episode(e["episode_id"])
                n = i % 5 + 1
                if e["status"] != "open" and len(steps["reward"]) == n and list(steps["reward"]) == [float(k) for k in range(n)]:
                    out.add(i)
            return out
        finally:
            s.close()
    if case.startswith("queue-"):
        from persisting.queue import LanceBackend, PersistingBackend

        async def read() -> list[dict]:
            path = os.path.join(root, "q")
            if case == "queue-lance":
                b = LanceBackend(bucket_id=0, storage_path=path, batch_size=5)
            else:
                b = PersistingBackend(bucket_id=0, storage_path=path, batch_size=5, enable_wal=True, wal_sync_interval=0)
            try:
                return await b.get(10**9, 0)
            finally:
                b.close()

        return {r["seq"] for r in asyncio.run(read()) if r == expected(r["seq"])}
    raise AssertionError(case)


def cut_once(case: str, base: str, shim: str, seed: int, cut_after: float, kill_at: int | None = None,
             kill_match: str | None = None) -> Outcome:
    """One child run and power cut (after ``cut_after`` s, or right after its ``kill_at``-th
    fsync, counting only paths ending in ``kill_match``); the outcome of reopening the image."""
    pc = PowerCut.create(base, shim)
    env = pc.env({"PCUT_KILL_AT": str(kill_at)} if kill_at else None)
    if kill_match:
        env["PCUT_KILL_MATCH"] = kill_match
    # a cut at a random moment counts from the first acknowledgement; fsync-counted cuts
    # (kill_at) reach the early windows
    lines, _ = run_until_cut([sys.executable, CHILD, case, pc.root, str(seed)], env, cut_after,
                             after=() if kill_at else ("A ", "D "))
    need = required_ids(lines)
    pc.cut_over()
    out = Outcome(required=len(need))
    try:
        got = present_ids(case, pc.root, need)
    except Exception as exc:  # any failure to open or read is what this test counts
        out.open_error = f"{type(exc).__name__}: {exc}"
        return out
    out.lost = sorted(need - got)
    return out


def sweep(case: str, tmp: str, cuts: int, seed: int) -> list[Outcome]:
    shim = build_shim(tmp)
    rng = random.Random(seed)
    outs = []
    for k in range(cuts):
        # alternate: a cut between two fsyncs chosen at random (the windows that order
        # matters in), and a cut at a random moment
        kill_at = (rng.randint(2, 8) if k == 0 else rng.randint(1, 150)) if k % 2 == 0 else None
        cut_after = 10.0 if kill_at else rng.choice([0.0, 0.0, 0.3]) + rng.random() * rng.choice([0.1, 1.2])
        outs.append(cut_once(case, os.path.join(tmp, f"cut{k}"), shim, rng.randrange(1 << 30), cut_after, kill_at))
    return outs


def check(case: str, outs: list[Outcome], *, require_acks: bool = True) -> None:
    failed = [o.open_error for o in outs if o.open_error]
    lost = sum(len(o.lost) for o in outs)
    required = sum(o.required for o in outs)
    print(f"{case}: {len(outs)} cuts, {required} acknowledged, {lost} lost, {len(failed)} failed to open")
    assert not failed, f"{case}: {len(failed)} of {len(outs)} crash images failed to open: {failed}"
    assert lost == 0, f"{case}: {lost} of {required} acknowledged records lost: {[o.lost[:10] for o in outs]}"
    assert required > 0 or not require_acks, f"{case}: no child acknowledged anything before its cut; the test proved nothing"


@pytest.mark.parametrize("case", CASES)
def test_power_cut_loses_nothing_acknowledged(case: str, tmp_path) -> None:
    check(case, sweep(case, str(tmp_path), cuts=3, seed=zlib.crc32(case.encode())))


@pytest.mark.parametrize("case", ["table-none", "table-always"])
@pytest.mark.parametrize("nth", [1, 2])
def test_power_cut_right_after_a_manifest_is_durable(case: str, nth: int, tmp_path) -> None:
    """The cut that matters most for commit order: just after the N-th ``_versions`` fsync (the
    commit point). Every data file the new manifest names must already be durable."""
    out = cut_once(case, str(tmp_path), build_shim(str(tmp_path)), nth, 10.0, kill_at=nth, kill_match="/_versions")
    check(case, [out], require_acks=False)  # a cut in the first commit of "none" precedes any ack


@pytest.mark.soak
@pytest.mark.parametrize("case", CASES)
def test_power_cut_sweep(case: str, tmp_path) -> None:
    check(case, sweep(case, str(tmp_path), cuts=int(os.environ.get("PERSISTING_POWERCUT_CUTS", "25")), seed=7))
