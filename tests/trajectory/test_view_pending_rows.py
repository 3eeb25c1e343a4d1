"""The step view keeps this handle's pending rows after the committed ones in the same buffers
and reads only the pending rows added since its last read: checked value by value (with
missing values in pending and committed rows) against what was appended, across hand-offs,
commits and a view adopted from read-only (memory-mapped-like) arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from persisting.engine import Table
from persisting.trajectory.fields import FieldSpec
from persisting.trajectory.sampling import StepView

SPECS = {"obs": FieldSpec("obs", "fixed", "float32", (2,)), "action": FieldSpec("action", "scalar", "int"),
         "bonus": FieldSpec("bonus", "scalar", "float")}


def rows(eid: int, start: int, n: int, rng: np.random.Generator) -> pa.Table:
    """Steps whose values encode (episode, step); ``bonus`` is missing on about a third of them."""
    t = np.arange(start, start + n)
    obs = np.stack([eid * 1000 + t, -t], axis=1).astype(np.float32)
    missing = rng.random(n) < 0.35
    return pa.table({"episode_id": np.full(n, eid), "step": t,
                     "obs": pa.FixedSizeListArray.from_arrays(pa.array(obs.reshape(-1)), 2),
                     "action": (eid + t) % 7,
                     "bonus": pa.array(np.where(missing, 0.0, t * 0.5), mask=missing)})


def check(view: StepView, expected: dict[tuple[int, int], float | None]) -> None:
    """Every indexed step's gathered values (and validity) are those appended for it."""
    pos = view.index.positions
    eid, t = view.index.split(np.arange(len(pos)))
    assert sorted(zip(eid.tolist(), t.tolist())) == sorted(expected)
    np.testing.assert_array_equal(view.gather("obs", pos), np.stack([eid * 1000 + t, -t], axis=1).astype(np.float32))
    np.testing.assert_array_equal(view.gather("action", pos), (eid + t) % 7)
    want = np.array([np.nan if expected[k] is None else expected[k] for k in zip(eid.tolist(), t.tolist())])
    np.testing.assert_array_equal(view.gather("bonus", pos), want)
    np.testing.assert_array_equal(view.valid("bonus", pos), ~np.isnan(want))


def test_pending_rows_read_incrementally_and_after_commits(tmp_path):
    rng = np.random.default_rng(5)
    expected: dict[tuple[int, int], float | None] = {}
    lengths: dict[int, int] = {}

    def append(table: Table, eid: int, n: int) -> None:
        start = lengths.get(eid, 0)
        batch = rows(eid, start, n, rng)
        table.append(batch)
        lengths[eid] = start + n
        for t, b in zip(batch.column("step").to_pylist(), batch.column("bonus").to_pylist()):
            expected[(eid, t)] = b

    with Table(str(tmp_path / "steps.lance"), follow=False) as table:
        view = StepView()
        for eid in range(3):
            append(table, eid, 40)
        table.flush()
        view.refresh(table, SPECS)
        check(view, expected)
        for round_ in range(6):
            for k in range(5):  # hand-offs: the last episode goes on, new ones start, an old one goes on
                append(table, 3 + round_ if k != 3 else 0, int(rng.integers(1, 30)))
                view.refresh(table, SPECS)
                check(view, expected)
            if round_ % 2:
                table.flush()  # the pending rows are committed: read from Lance, pending empty
                view.refresh(table, SPECS)
                check(view, expected)
        assert view.rebuilds == 1


def test_pending_rows_after_an_adopted_read_only_view(tmp_path):
    """Committed columns adopted read-only (a saved view is memory-mapped) are copied before
    pending rows are written after them, never written in place."""
    rng = np.random.default_rng(6)
    with Table(str(tmp_path / "steps.lance"), follow=False) as table:
        first = rows(0, 0, 50, rng)
        table.append(first)
        table.flush()
        built = StepView()
        built.refresh(table, SPECS)
        view = StepView()
        view.refresh(table, SPECS)  # then replace its columns with read-only copies, as a load would
        originals = {}
        for name, col in view.columns.items():
            values = col.values[:50].copy()
            valid = None if col.valid is None else col.valid[:50].copy()
            values.flags.writeable = False
            if valid is not None:
                valid.flags.writeable = False
            col.adopt(values, valid)
            originals[name] = (values.copy(), None if valid is None else valid.copy(), values, valid)
        expected = dict(zip(((0, t) for t in range(50)), first.column("bonus").to_pylist()))
        more = rows(0, 50, 20, rng)
        table.append(more)
        expected.update(zip(((0, t) for t in range(50, 70)), more.column("bonus").to_pylist()))
        view.refresh(table, SPECS)
        check(view, expected)
        for name, (values, valid, held_values, held_valid) in originals.items():
            np.testing.assert_array_equal(held_values, values)
            if valid is not None:
                np.testing.assert_array_equal(held_valid, valid)
