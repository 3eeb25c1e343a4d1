"""Persistent KV cache: save the attention KV cache of prompt prefixes, reuse it across restarts.

The transformers adapter lives in :mod:`persisting.kvcache.hf` (imported on demand: it needs
torch and transformers).
"""

from persisting.kvcache.hashing import chunk_keys, namespace_seed
from persisting.kvcache.store import KVCacheStore, Layout

__all__ = ["KVCacheStore", "Layout", "chunk_keys", "namespace_seed"]
