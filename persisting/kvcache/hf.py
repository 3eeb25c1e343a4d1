"""transformers adapter: save a ``DynamicCache`` to a KVCacheStore and load it back.

A v5 ``DynamicCache`` holds, per layer, ``keys`` and ``values`` of shape
``[batch, kv_heads, seq, head_dim]``. One chunk of the store holds all layers at once, as
``[layers, 2, kv_heads, chunk, head_dim]`` (tokens on axis -2), so a prefix is loaded with one
lookup and one read. Only batch size 1 and full-attention layers are supported: a sliding-window
layer does not hold the whole prefix. Importing this module imports torch and transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from persisting.errors import InvalidRecordError, SchemaError
from persisting.kvcache.store import KVCacheStore

__all__ = ["load_cache", "save_cache"]


def _tokens(input_ids: Any) -> Any:
    """``[1, seq]`` LongTensor (what transformers code holds), 1-D tensor, or a list of ints."""
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
        if input_ids.shape[0] != 1:
            raise InvalidRecordError(
                f"input_ids has batch size {input_ids.shape[0]}; save and load one sequence at a time ([1, seq])",
                shape=tuple(input_ids.shape),
            )
        return input_ids[0]
    return input_ids


def save_cache(store: KVCacheStore, input_ids: Any, cache: Any) -> int:
    """Store the KV of every full chunk of ``input_ids`` held by ``cache``; return tokens newly stored.

    Only positions both hold are stored. A cache may be longer than ``input_ids`` (its first
    ``len(input_ids)`` positions are stored) or shorter: right after ``generate``,
    ``out.past_key_values`` covers every token of ``out.sequences`` but the last (that token was
    sampled, never fed back), so ``save_cache(store, out.sequences, out.past_key_values)`` stores
    the prefix the cache covers. The caller's cache is not modified.
    """
    tokens = _tokens(input_ids)
    layers = getattr(cache, "layers", None)
    if not layers:
        raise InvalidRecordError(f"expected a transformers DynamicCache with layers, got {type(cache).__name__}")
    first = getattr(layers[0], "keys", None)
    held = int(first.shape[2]) if isinstance(first, torch.Tensor) and first.dim() == 4 else len(tokens)
    n = min(len(tokens), held)
    tokens = tokens[:n]
    parts = []
    for i, layer in enumerate(layers):
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") or layer.keys is None:
            raise SchemaError(
                f"cache layer {i} ({type(layer).__name__}) is not a full-attention DynamicLayer; "
                "only those hold the whole prefix and can be saved"
            )
        k, v = layer.keys, layer.values
        if k.dim() != 4 or k.shape[0] != 1:
            raise SchemaError(f"cache layer {i} keys have shape {tuple(k.shape)}; expected [1, kv_heads, seq, head_dim]")
        if k.shape[2] < n:
            raise SchemaError(f"cache holds {k.shape[2]} positions but input_ids has {n} tokens")
        parts.append(torch.stack([k[0, :, :n], v[0, :, :n]]))
    kv = torch.stack(parts)  # [layers, 2, kv_heads, n, head_dim]
    return store.put(tokens, kv, token_axis=-2)


def load_cache(
    store: KVCacheStore,
    input_ids: Any,
    *,
    max_tokens: int | None = None,
    config: Any = None,
    device: torch.device | str | None = None,
) -> tuple[DynamicCache | None, int]:
    """The ``DynamicCache`` of the longest cached prefix of ``input_ids`` and its length in tokens,
    or ``(None, 0)``. Run the model on ``input_ids[:, n:]`` with it.

    ``max_tokens`` caps the prefix: pass ``len(input_ids) - 1`` to always leave the model at
    least one token to compute logits for. ``config`` (the model's) picks the layer types.
    """
    tokens = _tokens(input_ids)
    if max_tokens is not None:
        tokens = tokens[: max(0, max_tokens)]
    if len(tokens) < store.chunk_size:
        return None, 0
    kv = store.get(tokens, token_axis=-2, framework="torch")
    if kv is None:
        return None, 0
    if device is not None:
        kv = kv.to(device)
    data = [(kv[i, 0].unsqueeze(0), kv[i, 1].unsqueeze(0)) for i in range(kv.shape[0])]
    return DynamicCache(ddp_cache_data=data, config=config), int(kv.shape[-2])
