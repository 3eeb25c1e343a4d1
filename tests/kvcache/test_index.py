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
