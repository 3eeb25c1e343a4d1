"""ChunkIndex: the LRU order evicts leaves only, and a reload keeps the tree."""

from __future__ import annotations

import random

from persisting.kvcache.index import ChunkIndex

SEED = "seed"


def _reachable(idx: ChunkIndex) -> bool:
    return all(e.parent == SEED or e.parent in idx.entries for e in idx.entries.values())


def _add_chain(idx: ChunkIndex, prefix: str, length: int, shared: int = 0, base: str = "") -> list[str]:
    keys = [f"{base}{i}" if i < shared else f"{prefix}{i}" for i in range(length)]
    for i, k in enumerate(keys):
        if k not in idx:
            idx.add(k, keys[i - 1] if i else SEED, i, 10, len(idx))
    idx.touch([idx.entries[k] for k in keys])
    return keys


def test_random_use_never_strands_a_suffix() -> None:
    rng = random.Random(0)
    idx = ChunkIndex(SEED)
    chains = []
    for n in range(200):
        base = rng.choice(chains) if chains and rng.random() < 0.5 else None
        shared = rng.randint(1, 3) if base else 0
        chains.append(f"p{n}-")
        _add_chain(idx, f"p{n}-", rng.randint(1, 6), shared, base or "")
        if rng.random() < 0.3:
            keys = [k for k in idx.entries if k.startswith(rng.choice(chains))]
            if keys:
                idx.touch(idx.longest_prefix(sorted(keys, key=lambda k: idx.entries[k].depth)))
        while idx.nbytes > 300:
            gone = idx.pop_lru()
            assert gone and all(not (e.children or []) or all(c not in idx for c in e.children) for e in gone)
            assert _reachable(idx)
    assert idx.nbytes <= 300 and _reachable(idx)


def test_pop_lru_takes_the_coldest_leaf_first() -> None:
    idx = ChunkIndex(SEED)
    a = _add_chain(idx, "a", 3)
    b = _add_chain(idx, "b", 2)
    idx.touch([idx.entries[k] for k in a])  # a is now hotter than b
    assert [e.key for e in idx.pop_lru()] == [b[1]]
    assert [e.key for e in idx.pop_lru()] == [b[0]]
    assert [e.key for e in idx.pop_lru()] == [a[2]]


def test_load_rebuilds_tree_and_drops_orphans() -> None:
    keys = ["a0", "a1", "x1", "a2", "a1"]
    parents = [SEED, "a0", "missing", "a1", "a0"]
    idx = ChunkIndex(SEED)
    drop = idx.load(keys, parents, [0, 1, 1, 2, 1], [5, 5, 5, 5, 5])
    assert drop == [2, 4] and set(idx.entries) == {"a0", "a1", "a2"} and idx.nbytes == 15
    # a parent is never colder than its child, so the chain goes from its end
    assert [[e.key for e in idx.pop_lru()] for _ in range(3)] == [["a2"], ["a1"], ["a0"]]


def test_merge_follows_other_processes_rows() -> None:
    idx = ChunkIndex(SEED)
    # the whole table: a0 <- a1, b0 (and an orphan whose parent is gone)
    orphans = idx.merge(["a0", "a1", "b0", "x1"], [SEED, "a0", SEED, "gone"], [0, 1, 0, 1], [10, 10, 10, 10],
                        start=0, replace=True)
    assert orphans == [3] and len(idx) == 3 and idx.nbytes == 30
    idx.touch([idx.entries["b0"]])  # b0 used here; a0, a1 only seen
    # appended by another process: a child of a1 and a duplicate of b0
    assert idx.merge(["a2", "b0"], ["a1", SEED], [2, 0], [10, 10], start=3, replace=False) == []
    assert idx.entries["a2"].position == 3 and idx.nbytes == 50 and idx.extra == {"b0": 10}
    # removing b0 removes its duplicate row's bytes too
    assert [e.key for e in idx.remove_subtree("b0")] == ["b0"] and idx.nbytes == 30
    # another process deleted a0's chain and compacted: the whole table again, positions moved
    tick_b = idx.entries["a2"].tick
    assert idx.merge(["c0", "a0", "a1"], [SEED, SEED, "a0"], [0, 0, 1], [7, 10, 10], start=0, replace=True) == []
    assert set(idx.entries) == {"c0", "a0", "a1"} and idx.nbytes == 27
    assert idx.entries["a0"].position == 1 and idx.entries["a1"].position == 2
    assert idx.entries["c0"].tick > tick_b  # new to this process: counts as used now
    assert [e.key for e in idx.pop_lru()] == ["a1"]  # least recent leaf first


def test_appended_rows_keep_parents_at_least_as_recent() -> None:
    idx = ChunkIndex(SEED)
    idx.add("a0", SEED, 0, 10, 0)
    idx.add("b0", SEED, 0, 10, 1)
    idx.touch([idx.entries["a0"]])
    idx.touch([idx.entries["b0"]])
    assert idx.merge(["a1"], ["a0"], [1], [10], start=2, replace=False) == []
    a0, a1 = idx.entries["a0"], idx.entries["a1"]
    assert a0.children == ["a1"] and a0.tick >= a1.tick > idx.entries["b0"].tick
    assert [e.key for e in idx.pop_lru()] == ["b0"]  # a0 is not a leaf any more, and newer


def test_replace_merges_keep_the_lru_order_of_a_rebuilt_index() -> None:
    """A replace merge (the table read again after a delete or compaction) keeps the links and
    the LRU heap instead of rebuilding them; evictions must come out exactly as from an index
    that rebuilds both after every replace, through random puts, touches, evictions and rows
    other processes added or deleted."""
    rng = random.Random(3)
    kept, rebuilt = ChunkIndex(SEED), ChunkIndex(SEED)
    rows: list[tuple[str, str, int, int]] = []  # the table: (key, parent, depth, nbytes) in row order
    chains: list[list[str]] = []
    for step in range(400):
        action = rng.random()
        if action < 0.45:  # this process puts a chain (sharing a prefix sometimes)
            base = rng.choice(chains) if chains and rng.random() < 0.5 else []
            keys = base[: rng.randint(0, len(base))] + [f"c{step}-{i}" for i in range(rng.randint(1, 4))]
            chains.append(keys)
            for d, k in enumerate(keys):
                if k not in kept and (d == 0 or keys[d - 1] in kept):
                    for idx in (kept, rebuilt):
                        idx.add(k, keys[d - 1] if d else SEED, d, 10, len(rows))
                    rows.append((k, keys[d - 1] if d else SEED, d, 10))
            for idx in (kept, rebuilt):
                idx.touch(idx.longest_prefix(keys))
        elif action < 0.6 and chains:  # a hit touches a chain
            keys = rng.choice(chains)
            for idx in (kept, rebuilt):
                idx.touch(idx.longest_prefix(keys))
        else:  # the table read again: other processes deleted a few rows and added a chain
            live = [r for r in rows if r[0] in kept.entries]
            gone = {r[0] for r in rng.sample(live, min(len(live), rng.randint(0, 2)))}
            # a deleted key takes its descendants (their rows would be orphans)
            rows = [r for r in live if r[0] not in gone]
            ekeys = [f"o{step}-{i}" for i in range(rng.randint(0, 3))]
            rows += [(k, ekeys[i - 1] if i else SEED, i, 7) for i, k in enumerate(ekeys)]
            rng.shuffle(rows)
            cols = [list(c) for c in zip(*rows)] if rows else [[], [], [], []]
            for idx in (kept, rebuilt):
                idx.merge(*cols, start=0, replace=True)
            rebuilt._heap, rebuilt._tree = None, False  # the old behaviour: rebuild both
            rows = [r for r in rows if r[0] in kept.entries]
        while kept.nbytes > 250:
            a, b = kept.pop_lru(), rebuilt.pop_lru()
            assert [e.key for e in a] == [e.key for e in b] and a
            assert _reachable(kept)
        assert set(kept.entries) == set(rebuilt.entries) and kept.nbytes == rebuilt.nbytes
        assert all(kept.entries[k].position == rebuilt.entries[k].position for k in kept.entries)


def test_a_key_deleted_elsewhere_and_put_again_is_linked_once() -> None:
    idx = ChunkIndex(SEED)
    _add_chain(idx, "a", 3)  # a0 <- a1 <- a2
    idx.pop_lru()  # builds the tree and the heap; a2 goes
    # another process deleted a1: the table read again holds a0 only
    idx.merge(["a0"], [SEED], [0], [10], start=0, replace=True)
    assert idx.entries["a0"].children == []
    idx.add("a1", "a0", 1, 10, 1)  # put again here
    assert idx.entries["a0"].children == ["a1"]
    assert [e.key for e in idx.remove_subtree("a0")] == ["a1", "a0"] and not idx.entries
