"""A KVCacheStore in its own process, driven by JSON lines on stdin (one reply line each).

Used by test_kv_shared.py and benchmarks/kvcache_shared.py: every process computes the same KV
for a prompt seed, so a reader checks what another process wrote bit for bit.
Commands: ``open``, ``put``, ``get``, ``lookup``, ``stats``, ``put_loop``, ``get_loop``, ``close``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

from persisting.kvcache import KVCacheStore

SHARED = 8  # tokens every prompt starts with when asked (a shared system prompt)


def prompt(seed: int, n: int, shared: bool = False) -> list[int]:
    toks = [int(t) for t in np.random.default_rng(10_000 + seed).integers(0, 50_000, n)]
    if shared:
        toks[:SHARED] = list(range(1, SHARED + 1))
    return toks


def make_kv(seed: int, n: int, dim: int = 8, shared: bool = False) -> np.ndarray:
    """[layers=2, 2, heads=2, n, dim] float32; with ``shared`` the shared prefix's KV is the same for every seed."""
    kv = np.random.default_rng(seed).standard_normal((2, 2, 2, n, dim)).astype("float32")
    if shared:
        kv[..., :SHARED, :] = np.random.default_rng(0).standard_normal((2, 2, 2, SHARED, dim)).astype("float32")
    return kv


class Worker:
    def __init__(self) -> None:
        self.store: KVCacheStore | None = None
        self.n = 16
        self.dim = 8
        self.shared = False

    def open(self, path: str, namespace: str, n: int = 16, dim: int = 8, shared: bool = False, **kw: Any) -> dict[str, Any]:
        self.n, self.dim, self.shared = n, dim, shared
        self.store = KVCacheStore(path, namespace=namespace, **kw)
        return {"entries": len(self.store)}

    def _kv(self, seed: int) -> np.ndarray:
        return make_kv(seed, self.n, self.dim, self.shared)

    def put(self, seed: int) -> dict[str, Any]:
        assert self.store is not None
        stored = self.store.put(prompt(seed, self.n, self.shared), self._kv(seed))
        return {"stored": stored, "bytes": self.store.stats()["bytes"]}

    def get(self, seed: int) -> dict[str, Any]:
        assert self.store is not None
        out = self.store.get(prompt(seed, self.n, self.shared))
        if out is None:
            return {"tokens": 0, "exact": None}
        k = out.shape[-2]
        return {"tokens": k, "exact": bool(np.array_equal(out, self._kv(seed)[..., :k, :]))}

    def lookup(self, seed: int) -> dict[str, Any]:
        assert self.store is not None
        return {"tokens": self.store.lookup(prompt(seed, self.n, self.shared))}

    def stats(self) -> dict[str, Any]:
        assert self.store is not None
        return self.store.stats()

    def put_loop(self, seeds: list[int], ack: bool = False, compact_every: int = 0) -> dict[str, Any]:
        """Put every seed; with ``ack`` print each seed once its put returned (acknowledged);
        with ``compact_every`` also compact (rewrite rows, drop old versions) that often."""
        assert self.store is not None
        peak, start = 0, time.perf_counter()
        for n, s in enumerate(seeds, 1):
            self.store.put(prompt(s, self.n, self.shared), self._kv(s))
            if compact_every and n % compact_every == 0:
                self.store.compact()
            peak = max(peak, self.store.stats()["bytes"])
            if ack:
                print(json.dumps({"ack": s}), flush=True)
        return {"peak_bytes": peak, "seconds": time.perf_counter() - start}

    def get_loop(self, seeds: list[int], rounds: int = 1, seconds: float = 0.0) -> dict[str, Any]:
        """Get every seed ``rounds`` times (or for at least ``seconds``); count full hits,
        misses (and partial hits) and wrong bytes."""
        assert self.store is not None
        hits = misses = wrong = done = 0
        start = time.perf_counter()
        while done < rounds or time.perf_counter() - start < seconds:
            done += 1
            for s in seeds:
                out = self.store.get(prompt(s, self.n, self.shared))
                if out is None or out.shape[-2] < self.n:
                    misses += 1
                if out is not None:
                    k = out.shape[-2]
                    if not np.array_equal(out, self._kv(s)[..., :k, :]):
                        wrong += 1
                    elif k == self.n:
                        hits += 1
        return {"hits": hits, "misses": misses, "wrong": wrong, "seconds": time.perf_counter() - start}

    def close(self) -> dict[str, Any]:
        if self.store is not None:
            self.store.close()
        return {}


def main() -> None:
    w = Worker()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        try:
            reply = {"ok": getattr(w, name)(**cmd)}
        except Exception as exc:  # the test sees the typed error by name
            reply = {"error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(reply), flush=True)
        if name == "close":
            break


if __name__ == "__main__":
    main()
