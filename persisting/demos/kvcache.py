"""KV-cache demo: a tiny transformers model's prompt cache saved, reloaded in a new session,
and generation continued from it, with the prefill time it saved."""

from __future__ import annotations

import os
import time

import torch
import transformers

from persisting.demos import table
from persisting.kvcache import KVCacheStore
from persisting.kvcache.hf import load_cache, save_cache

VOCAB = 2000


def _config() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                    num_attention_heads=8, num_key_value_heads=4, vocab_size=VOCAB,
                                    max_position_embeddings=2048)


def _model() -> transformers.PreTrainedModel:
    torch.manual_seed(0)  # "weights revision": the same random weights every time
    return transformers.LlamaForCausalLM(_config()).eval()


@torch.no_grad()
def run(root: str) -> None:
    path = os.path.join(root, "kvcache")
    namespace = "tiny-llama-random-seed0-fp32"
    model = _model()
    prompt = torch.randint(0, VOCAB, (1, 1024), generator=torch.Generator().manual_seed(1))
    question = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(2))

    start = time.perf_counter()
    cache = model(prompt, use_cache=True).past_key_values
    prefill = time.perf_counter() - start
    with KVCacheStore(path, namespace=namespace, chunk_size=128) as store:
        stored = save_cache(store, prompt, cache)
    fresh = model.generate(torch.cat([prompt, question], 1), max_new_tokens=8, do_sample=False)  # type: ignore[operator]
    print(f"   session 1: prefilled a {prompt.shape[1]}-token prompt in {prefill * 1000:.0f} ms, stored {stored} tokens of KV")

    model = _model()  # session 2: a new model object, the store reopened from disk
    with KVCacheStore(path, namespace=namespace, chunk_size=128) as store:
        start = time.perf_counter()
        loaded, n = load_cache(store, prompt, config=model.config)
        load = time.perf_counter() - start
        ids = torch.cat([prompt, question], 1)
        reused = model.generate(ids, past_key_values=loaded, max_new_tokens=8, do_sample=False)  # type: ignore[operator]
        stats = store.stats()
    with KVCacheStore(path, namespace="another-model", chunk_size=128) as other:
        other_hit = other.lookup(prompt[0])
    print(table([
        ("session 2: cached prefix found", f"{n} of {prompt.shape[1]} tokens"),
        ("load time vs prefill", f"{load * 1000:.0f} ms vs {prefill * 1000:.0f} ms ({prefill / load:.0f}x faster)"),
        ("generated tokens equal a fresh run", "yes" if torch.equal(reused, fresh) else "NO"),
        ("hit rate", f"{stats['hit_rate']:.2f}"),
        ("another namespace sees", f"{other_hit} cached tokens"),
    ]))
    if not torch.equal(reused, fresh):
        raise AssertionError("generation from the loaded cache differs")
