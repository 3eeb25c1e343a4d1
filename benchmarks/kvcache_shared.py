"""KVCacheStore shared by several processes: aggregate put and get rates of 1 vs 2 processes.

Every process opens the same namespace and puts its own prompts; then every process gets every
prompt (its own and the others', found without reopening). The same total bytes and the same
number of puts run in each configuration, so the ratios say what sharing a namespace costs or
gains. Two sizes: big chunks (MiB/s, bytes dominate) and small chunks (puts/s, commits and index
upkeep dominate). Workers are fresh interpreters (Lance is not fork-safe), started before the
clock and released together.

    python benchmarks/kvcache_shared.py [--dir /tmp/kvshared] [--total-mib 256] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# benchmarks/queue.py (a sibling script) would shadow the standard library's ``queue`` module
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import numpy as np

LAYERS, HEADS, HEAD_DIM = 8, 8, 128  # float16: 32 KiB of KV per token


def kv_for(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((LAYERS, 2, HEADS, n, HEAD_DIM), dtype=np.float32).astype(np.float16)


def tokens_for(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(10_000 + seed).integers(0, 50_000, n)]


def child(path: str, chunk: int, chunks_per_prompt: int, seeds: list[int], all_seeds: list[int]) -> None:
    """One worker: build its prompts, then on each line from the parent run a phase and report."""
    from persisting.kvcache import KVCacheStore

    n = chunk * chunks_per_prompt
    data = [(tokens_for(s, n), kv_for(s, n)) for s in seeds]
    prompts = {s: tokens_for(s, n) for s in all_seeds}
    store = KVCacheStore(path, namespace="bench", chunk_size=chunk)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        phase = line.strip()
        start = time.perf_counter()
        if phase == "put":
            for toks, kv in data:
                store.put(toks, kv)
            out: dict[str, Any] = {"seconds": time.perf_counter() - start}
        elif phase == "get":
            found = sum(store.lookup(prompts[s]) == n and store.get(prompts[s]) is not None for s in all_seeds)
            out = {"seconds": time.perf_counter() - start, "found": found}
        else:
            break
        print(json.dumps(out), flush=True)
    store.close()


def run(root: Path, procs: int, chunk: int, chunks_per_prompt: int, prompts: int) -> dict[str, float]:
    """Aggregate put and get rates with ``procs`` processes sharing one namespace."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    seeds = list(range(prompts))
    workers = []
    for k in range(procs):
        mine = seeds[k::procs]
        arg = json.dumps([str(root), chunk, chunks_per_prompt, mine, seeds])
        workers.append(subprocess.Popen([sys.executable, __file__, "--child", arg], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1))
    for w in workers:
        assert json.loads(w.stdout.readline()) == {"ready": True}  # type: ignore[union-attr]
    result: dict[str, float] = {}
    for phase in ("put", "get"):
        start = time.perf_counter()
        for w in workers:
            w.stdin.write(phase + "\n")  # type: ignore[union-attr]
            w.stdin.flush()  # type: ignore[union-attr]
        replies = [json.loads(w.stdout.readline()) for w in workers]  # type: ignore[union-attr]
        result[phase] = time.perf_counter() - start
        if phase == "get":
            missing = [prompts - r["found"] for r in replies]
            assert not any(missing), f"{missing} prompts not found by some worker"
    for w in workers:
        w.stdin.close()  # type: ignore[union-attr]
        w.wait(120)
    chunk_bytes = chunk * LAYERS * 2 * HEADS * HEAD_DIM * 2
    put_bytes = prompts * chunks_per_prompt * chunk_bytes
    return {
        "put_mib_s": put_bytes / result["put"] / 2**20,
        "puts_s": prompts / result["put"],
        "get_mib_s": procs * put_bytes / result["get"] / 2**20,  # every process reads every prompt
        "gets_s": procs * prompts / result["get"],
    }


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(*json.loads(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/persisting-kvshared")
    ap.add_argument("--total-mib", type=int, default=256, help="KV bytes put per big-chunk run")
    ap.add_argument("--small-puts", type=int, default=200, help="puts per small-chunk run")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.total_mib, args.small_puts = 64, 40
    root = Path(args.dir)
    big_chunk = 256  # 8 MiB per chunk, 4 chunks (32 MiB) per prompt
    big_prompts = max(2, args.total_mib // 32)
    configs = [("big chunks (256 tok = 8 MiB, 4 per prompt)", big_chunk, 4, big_prompts),
               ("small chunks (4 tok = 128 KiB, 4 per prompt)", 4, 4, args.small_puts)]
    print(f"KVCacheStore, one namespace shared by N processes ({os.cpu_count()} cores)")
    for name, chunk, per, prompts in configs:
        rows = {n: run(root, n, chunk, per, prompts) for n in (1, 2)}
        print(f"\n{name}: {prompts} puts in all, then every process gets all {prompts} prompts")
        print(f"{'processes':>10} {'put MiB/s':>10} {'puts/s':>8} {'get MiB/s':>10} {'gets/s':>8}")
        for n, r in rows.items():
            print(f"{n:>10} {r['put_mib_s']:>10.0f} {r['puts_s']:>8.1f} {r['get_mib_s']:>10.0f} {r['gets_s']:>8.1f}")
        one, two = rows[1], rows[2]
        print(f"{'2 / 1':>10} {two['put_mib_s'] / one['put_mib_s']:>10.2f}x {'':>7} {two['get_mib_s'] / one['get_mib_s']:>10.2f}x")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
