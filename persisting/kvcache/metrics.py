"""Prometheus collectors of the KV cache, labelled by namespace.

Counters for hits, misses, evictions, corrupt payloads and payload bytes written and read;
gauges for the entries and bytes held. They live in prometheus_client's default registry next
to the engine's collectors (``persisting.engine.metrics``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["KVCacheMetrics"]

_LABELS = ("namespace",)

HITS = Counter("persisting_kvcache_hits", "get() calls that returned a cached prefix.", _LABELS)
MISSES = Counter("persisting_kvcache_misses", "get() calls that found no cached prefix.", _LABELS)
HIT_TOKENS = Counter("persisting_kvcache_hit_tokens", "Tokens whose KV get() returned from the cache.", _LABELS)
EVICTIONS = Counter("persisting_kvcache_evictions", "Chunks evicted to stay under capacity_bytes.", _LABELS)
CORRUPT = Counter("persisting_kvcache_corrupt", "Chunks that failed their checksum and were removed.", _LABELS)
BYTES_WRITTEN = Counter("persisting_kvcache_bytes_written", "Payload bytes of KV chunks written.", _LABELS)
BYTES_READ = Counter("persisting_kvcache_bytes_read", "Payload bytes of KV chunks read.", _LABELS)
ENTRIES = Gauge("persisting_kvcache_entries", "KV chunks held.", _LABELS)
BYTES = Gauge("persisting_kvcache_bytes", "Payload bytes of the KV chunks held.", _LABELS)


class KVCacheMetrics:
    """The children of each collector for one namespace."""

    def __init__(self, namespace: str) -> None:
        self.hits = HITS.labels(namespace)
        self.misses = MISSES.labels(namespace)
        self.hit_tokens = HIT_TOKENS.labels(namespace)
        self.evictions = EVICTIONS.labels(namespace)
        self.corrupt = CORRUPT.labels(namespace)
        self.bytes_written = BYTES_WRITTEN.labels(namespace)
        self.bytes_read = BYTES_READ.labels(namespace)
        self.entries = ENTRIES.labels(namespace)
        self.bytes = BYTES.labels(namespace)
