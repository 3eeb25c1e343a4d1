"""PersistingConnector inside real vLLM engines (CPU build), each in a spawned child process.

Three engine startups for the whole module (~50 s each on 2 cores): a baseline without any
connector, a first engine that stores prompts, and a restarted engine that must serve them
from the store with the same greedy output.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from vllm_helpers import ENGINE, make_model, run_engine  # noqa: E402

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (pip install -e '.[vllm]')"),
    pytest.mark.timeout(900),  # the module fixture starts three engines
]

BLOCK = 128  # vLLM's CPU block size for this model
_rng = random.Random(7)
A = [_rng.randrange(2, 500) for _ in range(400)]  # 3 full blocks
D = A[:256] + [_rng.randrange(2, 500) for _ in range(150)]  # shares 2 blocks with A, never served before the restart
B = A[:256] + [_rng.randrange(2, 500) for _ in range(60)]  # shares 2 blocks with A, served in the first engine
SHORT = A[:100]  # no full block


def _connector(path: str, **extra: Any) -> dict[str, Any]:
    return {"connector": "PersistingConnector", "module": "persisting.kvcache.vllm", "extra": {"path": path, **extra}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vllm")
    model = make_model(str(root / "model"))
    kv = str(root / "kv")
    base = run_engine(ENGINE, {"model": model, "batches": [[A, B, D, SHORT]]})[0]
    # prefix cache off: B's shared blocks can only come from the store, through the scheduler's refreshed handle
    first = run_engine(ENGINE, {"model": model, "batches": [[A], [B], [SHORT]], "prefix_caching": False, **_connector(kv)})
    restart = run_engine(ENGINE, {"model": model, "batches": [[D], [A], [B]], **_connector(kv)})
    return {"base": dict(zip("ABDS", base)), "first": first, "restart": restart, "kv": kv}


def test_fresh_process_serves_what_an_earlier_one_stored(runs: dict[str, Any]) -> None:
    base, first, restart = runs["base"], runs["first"], runs["restart"]
    assert first[0][0]["cached"] == 0  # nothing stored yet
    assert first[0][0]["tokens"] == base["A"]["tokens"]
    a_again = restart[1][0]
    assert a_again["cached"] == 3 * BLOCK  # 2 blocks from vLLM's own prefix cache (D), 1 from the store
    assert a_again["tokens"] == base["A"]["tokens"]
    assert a_again["logprobs"] == pytest.approx(base["A"]["logprobs"], abs=0.05)
    assert restart[2][0]["cached"] == 2 * BLOCK and restart[2][0]["tokens"] == base["B"]["tokens"]
    assert os.listdir(runs["kv"])  # the store, not only vLLM's memory, served it


def test_prompts_sharing_a_prefix(runs: dict[str, Any]) -> None:
    base, first, restart = runs["base"], runs["first"], runs["restart"]
    assert first[1][0]["cached"] == 2 * BLOCK  # stored by this engine's worker, seen by its scheduler process
    assert first[1][0]["tokens"] == base["B"]["tokens"]
    d = restart[0][0]  # a new prompt, in a fresh process: its shared prefix comes from the store
    assert d["cached"] == 2 * BLOCK
    assert d["tokens"] == base["D"]["tokens"]
    assert d["logprobs"] == pytest.approx(base["D"]["logprobs"], abs=0.05)
    assert first[2][0]["cached"] == 0 and first[2][0]["tokens"] == base["S"]["tokens"]  # shorter than a block


def test_store_holds_one_namespace_of_whole_blocks(runs: dict[str, Any], child: Any) -> None:
    info = child(f"""
        import json, os
        from persisting.kvcache import KVCacheStore
        names = sorted(n[:-6] for n in os.listdir({runs['kv']!r}) if n.endswith(".lance"))
        with KVCacheStore({runs['kv']!r}, namespace=names[0], chunk_size={BLOCK}, read_only=True) as s:
            print(json.dumps({{"names": names, "A": s.lookup({A!r}), "D": s.lookup({D!r}), "entries": len(s)}}))
    """)
    assert len(info["names"]) == 1 and info["names"][0].startswith("vllm-model-")
    assert info["A"] == 3 * BLOCK and info["D"] == 3 * BLOCK  # D's new block was saved after the restart
    assert info["entries"] == 4  # A's 3 blocks + D's third; B added no full block


def test_bad_config_is_a_typed_error(tmp_path: Any, child: Any) -> None:
    model = make_model(str(tmp_path / "model"))
    out = child(f"""
        import json
        import torch
        from vllm.config import CacheConfig, KVTransferConfig, ModelConfig, VllmConfig
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec, SlidingWindowSpec
        from persisting.errors import ConfigError
        from persisting.kvcache.vllm import PersistingConnector

        def config(extra):
            kv = KVTransferConfig(kv_connector="PersistingConnector", kv_connector_module_path="persisting.kvcache.vllm",
                                  kv_role="kv_both", kv_connector_extra_config=extra)
            return VllmConfig(model_config=ModelConfig(model={model!r}, dtype="bfloat16", max_model_len=512),
                              cache_config=CacheConfig(block_size=128), kv_transfer_config=kv)

        full = FullAttentionSpec(block_size=128, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
        window = SlidingWindowSpec(block_size=128, num_kv_heads=2, head_size=64, dtype=torch.bfloat16, sliding_window=64)
        def kv_config(*groups):
            return KVCacheConfig(num_blocks=8, kv_cache_tensors=[], kv_cache_groups=[
                KVCacheGroupSpec(layer_names=[f"l{{i}}.{{j}}" for j in range(2)], kv_cache_spec=g) for i, g in enumerate(groups)])
        errors = {{}}
        for name, extra, groups in [("no_path", {{}}, [full]), ("unknown_key", {{"path": {str(tmp_path / "kv")!r}, "pth": 1}}, [full]),
                                    ("hybrid", {{"path": {str(tmp_path / "kv")!r}}}, [full, window]),
                                    ("window", {{"path": {str(tmp_path / "kv")!r}}}, [window]),
                                    ("capacity", {{"path": {str(tmp_path / "kv")!r}, "capacity_bytes": -1}}, [full]),
                                    ("compression", {{"path": {str(tmp_path / "kv")!r}, "compression": "gzip"}}, [full]),
                                    ("namespace", {{"path": {str(tmp_path / "kv")!r}, "namespace": "../x"}}, [full])]:
            try:
                PersistingConnector(config(extra), KVConnectorRole.SCHEDULER, kv_config(*groups))
                errors[name] = None
            except ConfigError as exc:
                errors[name] = str(exc)
        ok = PersistingConnector(config({{"path": {str(tmp_path / "kv")!r}}}), KVConnectorRole.SCHEDULER, kv_config(full))
        errors["derived"] = ok.namespace
        print(json.dumps(errors))
    """, timeout=180)
    assert "kv_connector_extra_config['path']" in out["no_path"]
    assert "pth" in out["unknown_key"]
    assert "SlidingWindowSpec" in out["hybrid"] and "FullAttentionSpec" in out["hybrid"]
    assert "SlidingWindowSpec" in out["window"]
    assert "capacity_bytes" in out["capacity"] and "gzip" in out["compression"] and "../x" in out["namespace"]
    assert out["derived"].startswith("vllm-model-")
