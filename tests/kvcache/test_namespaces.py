"""KV namespaces named after model ids: any non-empty id without NUL, kept inside the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from persisting.errors import InvalidNameError
from persisting.kvcache import KVCacheStore
from persisting.kvcache.namespaces import namespace_of, storage_name

IDS = ["meta-llama/Llama-3.1-8B", "a/../../escape", "..", ".", "x%2Fy", "win\\dir", "llama-7b", "é/ü"]


@pytest.mark.parametrize("namespace", IDS)
def test_storage_name_is_one_safe_reversible_component(namespace: str) -> None:
    name = storage_name(namespace)
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert namespace_of(name) == namespace
    assert storage_name("llama-7b") == "llama-7b"  # names that were safe keep their tables


def test_model_ids_round_trip_and_stay_in_the_store(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    tokens, kv = list(range(8)), np.arange(48, dtype=np.float32).reshape(2, 8, 3)
    for ns in IDS:
        with KVCacheStore(root, namespace=ns, chunk_size=4) as store:
            store.put(tokens, kv, token_axis=1)
    for ns in IDS:  # reopened, each namespace finds only its own entries
        with KVCacheStore(root, namespace=ns, chunk_size=4, read_only=True) as store:
            assert store.lookup(tokens) == 8
            np.testing.assert_array_equal(store.get(tokens, token_axis=1), kv)
    assert sorted(os.listdir(tmp_path)) == ["kv"]  # nothing escaped the store's directory
    assert all("/" not in p for p in os.listdir(root))
    out = subprocess.run([sys.executable, "-m", "persisting.cli", "ls", "--json", str(root)],
                         capture_output=True, text=True, check=True).stdout
    (store_info,) = json.loads(out)["stores"]
    assert store_info["kind"] == "kvcache"
    assert sorted(t["name"] for t in store_info["tables"]) == sorted(IDS)  # shown as given


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 300, None])
def test_unusable_namespaces_are_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(InvalidNameError):
        KVCacheStore(tmp_path, namespace=bad, chunk_size=4)  # type: ignore[arg-type]
