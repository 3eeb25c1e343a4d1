"""StepIndex keeps (episode_id, step) order with appends in place: checked against a plain
sort of every key after random sequences of committed merges, pending replacements and
adopted (saved-view) arrays, including keys that land before the last one and pending steps
that continue the last committed episode."""

from __future__ import annotations

import numpy as np
import pytest

from persisting.trajectory.index import STEP_BITS, StepIndex, step_keys


def reference(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """keys sorted (stable, so positions of equal keys keep row order), positions, episode table."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    ep = k >> STEP_BITS
    if len(ep):
        starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
        ids, lengths = ep[starts], np.diff(np.r_[starts, len(ep)])
    else:
        starts = ids = lengths = np.empty(0, np.int64)
    return k, order.astype(np.int64), ids, starts, lengths


def check(index: StepIndex, all_keys: np.ndarray) -> None:
    k, p, ids, starts, lengths = reference(all_keys)
    assert np.array_equal(index.keys, k)
    assert np.array_equal(index.positions, p)
    assert np.array_equal(index.ids, ids)
    assert np.array_equal(index.starts, starts)
    assert np.array_equal(index.lengths, lengths)


def chunk(rng: np.random.Generator, state: dict[int, int], n_eps: int) -> np.ndarray:
    """Steps of a few episodes: mostly the newest ones going on, sometimes an old one."""
    eids, steps = [], []
    for _ in range(int(rng.integers(1, 4))):
        e = int(rng.integers(0, n_eps)) if rng.random() < 0.3 else max(state, default=0) + int(rng.integers(0, 2))
        n = int(rng.integers(1, 40))
        start = state.get(e, 0)
        state[e] = start + n
        eids += [e] * n
        steps += range(start, start + n)
    return step_keys(np.array(eids, np.int64), np.array(steps, np.int64))


@pytest.mark.parametrize("seed", range(12))
def test_random_sequences_match_a_full_sort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    index = StepIndex()
    committed = np.empty(0, np.int64)
    state: dict[int, int] = {}
    for _ in range(60):
        action = rng.random()
        if action < 0.1:  # a reopened handle adopts a saved view of the committed rows
            k, p, *_ = reference(committed)
            index.adopt_committed(k.copy(), p.copy())
            check(index, committed)
            continue
        pending_state = dict(state)
        pending = np.concatenate([chunk(rng, pending_state, 8) for _ in range(int(rng.integers(0, 3)))] or [np.empty(0, np.int64)])
        if action < 0.6:  # a commit: new committed rows, then the pending rows after them
            new = chunk(rng, state, 8)
            index.add_committed(new, len(committed))
            committed = np.concatenate([committed, new])
            pending_state = dict(state)
            pending = chunk(rng, pending_state, 8) if rng.random() < 0.5 else np.empty(0, np.int64)
        index.set_pending(pending, len(committed))
        check(index, np.concatenate([committed, pending]))
        for _ in range(int(rng.integers(0, 4))):  # more pending rows before the next commit
            more = chunk(rng, pending_state, 8)
            if not index.extend_pending(more, len(committed) + len(pending)):
                index.set_pending(np.concatenate([pending, more]), len(committed))
            pending = np.concatenate([pending, more])
            check(index, np.concatenate([committed, pending]))
            check_committed(index, committed)


def check_committed(index: StepIndex, committed: np.ndarray) -> None:
    """The committed part (keys and episode table) is untouched by pending rows."""
    k, p, ids, starts, lengths = reference(committed)
    assert np.array_equal(index.ckeys, k) and np.array_equal(index.cpositions, p)
    for got, want in zip(index._cepisodes.cols, (ids, starts, lengths)):
        assert np.array_equal(got, want)


def test_appending_does_not_copy_what_is_held() -> None:
    """Keys that sort after every key held go in place: the committed arrays are not copied."""
    index = StepIndex()
    first = step_keys(np.zeros(1000, np.int64), np.arange(1000))
    index.add_committed(first, 0)
    index.set_pending(np.empty(0, np.int64), 1000)
    held = index.ckeys.__array_interface__["data"][0]
    for e in range(1, 50):
        index.set_pending(step_keys(np.full(10, e), np.arange(10)), 1000)
        assert index.keys.__array_interface__["data"][0] == held  # same buffer, pending after it
    assert len(index.keys) == 1010 and index.ids[-1] == 49


def test_adopted_read_only_arrays_are_never_written() -> None:
    keys = step_keys(np.zeros(100, np.int64), np.arange(100))
    positions = np.arange(100, dtype=np.int64)
    keys.flags.writeable = positions.flags.writeable = False  # like a memory-mapped saved view
    index = StepIndex()
    index.adopt_committed(keys, positions)
    index.set_pending(step_keys(np.zeros(5, np.int64), np.arange(100, 105)), 100)  # episode 0 goes on
    index.add_committed(step_keys(np.zeros(5, np.int64), np.arange(100, 105)), 100)
    index.set_pending(np.empty(0, np.int64), 105)
    check(index, step_keys(np.zeros(105, np.int64), np.arange(105)))


def test_more_pending_rows_go_in_place_and_never_touch_committed_episodes() -> None:
    """Pending rows added in steps: appended after the held ones (no copy) while they sort
    last; a pending episode that continues the last committed one takes the general path, so
    the committed episode's length stays what was committed."""
    index = StepIndex()
    committed = step_keys(np.zeros(100, np.int64), np.arange(100))
    index.add_committed(committed, 0)
    pending = step_keys(np.ones(10, np.int64), np.arange(10))
    index.set_pending(pending, 100)
    held = index.keys.__array_interface__["data"][0]
    for k in range(1, 20):  # episode 1 goes on, then episode 2 starts
        more = step_keys(np.full(5, 1 if k < 10 else 2), np.arange(5) + (10 + 5 * (k - 1) if k < 10 else 5 * (k - 10)))
        assert index.extend_pending(more, 100 + len(pending))
        pending = np.concatenate([pending, more])
        check(index, np.concatenate([committed, pending]))
    assert index.keys.__array_interface__["data"][0] == held
    # a key before the last pending one, and pending steps continuing committed episode 0
    assert not index.extend_pending(step_keys(np.array([0]), np.array([500])), 100 + len(pending))
    index.set_pending(step_keys(np.zeros(3, np.int64), np.arange(100, 103)), 100)
    assert not index.extend_pending(step_keys(np.zeros(2, np.int64), np.arange(103, 105)), 103)
    index.set_pending(step_keys(np.zeros(5, np.int64), np.arange(100, 105)), 100)
    check(index, step_keys(np.zeros(105, np.int64), np.arange(105)))
    check_committed(index, committed)
