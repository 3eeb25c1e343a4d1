"""transformers adapter: a tiny random causal LM reuses a prompt cache saved by another process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from persisting.errors import InvalidRecordError
from persisting.kvcache import KVCacheStore
from persisting.kvcache.hf import load_cache, save_cache

CS = 16
PROMPT = 2 * CS + 5
CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256)


def build_model(weights: str | None = None, dtype: Any = None) -> Any:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()
    if weights is not None:
        model.load_state_dict(safetensors_torch.load_file(weights))
    return model.to(dtype) if dtype is not None else model


@pytest.fixture(scope="module")
def model() -> Any:
    torch.set_num_threads(1)  # the same kernels and reduction order in this process and the child
    return build_model()


def prompt_ids() -> Any:
    return torch.randint(0, CONFIG["vocab_size"], (1, PROMPT), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def continuation_from_memory(model: Any, ids: Any, n: int) -> tuple[Any, Any]:
    """Prefill the prompt, keep the first n positions of its cache, run the rest: the reference."""
    cache = model(ids, use_cache=True).past_key_values
    cache.crop(n - cache.get_seq_length())  # transformers 5: a negative count drops that many positions
    return cache, model(ids[:, n:], past_key_values=cache).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_save_and_load_in_process(tmp_path: Path, model: Any, dtype: Any) -> None:
    m = model if dtype == torch.float32 else build_model(dtype=dtype)  # never cast the shared model
    ids = prompt_ids()
    cache = m(ids, use_cache=True).past_key_values
    with KVCacheStore(tmp_path, namespace=f"tiny-llama.{str(dtype)[6:]}", chunk_size=CS) as store:
        assert save_cache(store, ids, cache) == 2 * CS
        assert save_cache(store, ids[0].tolist(), cache) == 0
        loaded, n = load_cache(store, ids, config=m.config)
        assert n == 2 * CS and loaded.get_seq_length() == n
        assert loaded.layers[0].keys.dtype == dtype
        _, ref = continuation_from_memory(m, ids, n)
        assert torch.equal(m(ids[:, n:], past_key_values=loaded).logits, ref)
        assert load_cache(store, ids[:, : CS - 1]) == (None, 0)
        with pytest.raises(InvalidRecordError):
            save_cache(store, ids.repeat(2, 1), cache)


CHILD = """
    import json, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {here!r})
    from test_hf import build_model, prompt_ids, continuation_from_memory, PROMPT
    from persisting.kvcache import KVCacheStore
    from persisting.kvcache.hf import load_cache
    import safetensors.torch

    model = build_model({weights!r})
    ids = prompt_ids()
    seen = []
    model.model.embed_tokens.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[-1]))
    store = KVCacheStore({path!r}, namespace="tiny-llama", chunk_size={cs})
    with torch.no_grad():
        cache, n = load_cache(store, ids, max_tokens=PROMPT - 1, config=model.config)
        logits = model(ids[:, n:], past_key_values=cache).logits
        computed = list(seen)
        cache2, _ = load_cache(store, ids, max_tokens=PROMPT - 1, config=model.config)
        gen_loaded = model.generate(ids, past_key_values=cache2, max_new_tokens=6, do_sample=False)
        gen_fresh = model.generate(ids, max_new_tokens=6, do_sample=False)
        _, ref_here = continuation_from_memory(model, ids, n)
    parent_ref = safetensors.torch.load_file({ref!r})["logits"]
    print(json.dumps(dict(
        n=n, computed=computed,
        equal_parent=bool(torch.equal(logits, parent_ref)),
        equal_here=bool(torch.equal(logits, ref_here)), diff_here=float((logits - ref_here).abs().max()), diff_parent=float((logits - parent_ref).abs().max()),
        gen_equal=bool(torch.equal(gen_loaded, gen_fresh)),
        gen_new=gen_loaded.shape[-1] - PROMPT,
    )))
"""


@torch.no_grad()
def test_new_process_generates_from_the_loaded_cache(tmp_path: Path, model: Any, child) -> None:
    ids = prompt_ids()
    weights, ref = str(tmp_path / "model.safetensors"), str(tmp_path / "ref.safetensors")
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    cache = model(ids, use_cache=True).past_key_values
    with KVCacheStore(tmp_path / "kv", namespace="tiny-llama", chunk_size=CS) as store:
        assert save_cache(store, ids, cache) == 2 * CS
    _, ref_logits = continuation_from_memory(model, ids, 2 * CS)
    safetensors_torch.save_file({"logits": ref_logits.contiguous()}, ref)
    out = child(
        CHILD.format(here=str(Path(__file__).parent), weights=weights, path=str(tmp_path / "kv"), cs=CS, ref=ref),
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )
    assert out["n"] == 2 * CS
    assert out["computed"] == [PROMPT - 2 * CS]  # only the suffix went through the model
    assert out["equal_here"] and out["equal_parent"], out
    assert out["gen_equal"] and out["gen_new"] == 6


@torch.no_grad()
def test_save_cache_right_after_generate(tmp_path: Path, model: Any) -> None:
    """``generate`` returns one token more than its cache covers: the covered prefix is stored."""
    ids = prompt_ids()
    out = model.generate(ids, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    assert out.past_key_values.get_seq_length() == out.sequences.shape[-1] - 1
    with KVCacheStore(tmp_path, namespace="meta-llama/Llama-3.1-8B", chunk_size=CS) as store:
        covered = (out.sequences.shape[-1] - 1) // CS * CS
        assert save_cache(store, out.sequences, out.past_key_values) == covered
        loaded, n = load_cache(store, out.sequences, config=model.config)
        assert n == covered
        _, ref = continuation_from_memory(model, out.sequences, n)
        assert torch.equal(model(out.sequences[:, n:], past_key_values=loaded).logits, ref)
