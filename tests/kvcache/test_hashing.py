"""Chunk keys: chained, deterministic, the same for every token form and every process."""

from __future__ import annotations

import numpy as np
import pytest

from persisting.errors import InvalidNameError, InvalidRecordError
from persisting.kvcache.hashing import as_token_array, chunk_keys, namespace_seed

SEED = namespace_seed("llama-3-8b@abc123.bf16", 4)


def test_keys_are_chained_prefix_keys() -> None:
    toks = list(range(100, 112))
    keys = chunk_keys(SEED, toks, 4)
    assert len(keys) == 3 and len(set(keys)) == 3 and all(len(k) == 32 for k in keys)
    assert chunk_keys(SEED, toks[:8], 4) == keys[:2]
    assert chunk_keys(SEED, toks[:11], 4) == keys[:2]  # the partial tail chunk has no key
    changed = toks[:1] + [999] + toks[2:]
    assert all(a != b for a, b in zip(chunk_keys(SEED, changed, 4), keys))  # a key names its whole prefix


def test_token_forms_agree() -> None:
    torch = pytest.importorskip("torch")
    toks = [5, 0, 7, 2**31 + 3, 11, 12, 13, 14]
    expected = chunk_keys(SEED, toks, 4)
    assert chunk_keys(SEED, np.array(toks, dtype=np.int64), 4) == expected
    assert chunk_keys(SEED, np.array(toks, dtype=np.uint32), 4) == expected
    assert chunk_keys(SEED, torch.tensor(toks, dtype=torch.int64), 4) == expected
    assert chunk_keys(SEED, tuple(np.int32(t) if t < 2**31 else t for t in toks), 4) == expected


def test_namespace_and_chunk_size_change_the_seed() -> None:
    toks = list(range(8))
    assert chunk_keys(namespace_seed("a", 4), toks, 4) != chunk_keys(namespace_seed("b", 4), toks, 4)
    assert namespace_seed("a", 4) != namespace_seed("a", 8)


def test_known_value() -> None:
    """Pinned so an accidental change of the key format (which orphans every stored cache) fails."""
    key = chunk_keys(namespace_seed("ns", 2), [1, 2, 3, 4], 2)[1]
    assert key.hex() == "ef0221e69ab240e737f8c1a169ae707d4fbb2d51c393dfa3e4b5b919dcdc72b9"


@pytest.mark.parametrize("bad", [[1.0, 2.0], [1, "2"], [1, None], [2**70], np.array([True]), np.array([1.5]), np.array([[1, 2]]), [-1], [2**32], "1234", None])
def test_bad_tokens_are_refused(bad: object) -> None:
    with pytest.raises(InvalidRecordError):
        as_token_array(bad)


def test_float_torch_tokens_refused() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidRecordError):
        as_token_array(torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("bad", ["", "a\0b", 5])  # model ids with "/" are fine: see test_namespaces.py
def test_bad_namespace(bad: object) -> None:
    with pytest.raises(InvalidNameError):
        namespace_seed(bad, 4)  # type: ignore[arg-type]


def test_same_keys_in_processes_with_other_hash_seeds(child) -> None:
    code = """
        import json
        from persisting.kvcache.hashing import chunk_keys, namespace_seed
        print(json.dumps([k.hex() for k in chunk_keys(namespace_seed("m", 3), list(range(30)), 3)]))
    """
    here = [k.hex() for k in chunk_keys(namespace_seed("m", 3), list(range(30)), 3)]
    assert child(code, env={"PYTHONHASHSEED": "1"}) == here
    assert child(code, env={"PYTHONHASHSEED": "4242"}) == here
