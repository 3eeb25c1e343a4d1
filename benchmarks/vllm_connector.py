"""Time to first token of a long prompt in vLLM (CPU build): recompute vs vLLM's
ExampleConnector (one safetensors file per layer per prompt) vs PersistingConnector.

Each configuration runs in its own spawned engine process with vLLM's prefix cache off, so a
hit can only come from the connector: a warm-up prompt, then the long prompt 1 + --repeat times
(cold: computed and stored; warm: loaded from the store; the median is reported; without a
connector every run recomputes). Prints TTFT, bytes stored per token and the ratios.

    python benchmarks/vllm_connector.py [--layers 8 --hidden 1024 --prompt 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "kvcache"))
from vllm_helpers import ENGINE, make_model, run_engine  # noqa: E402


def _du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=2000,
                    help="prompt length in tokens (ExampleConnector misses when (length - 1) is a multiple of the block size)")
    ap.add_argument("--repeat", type=int, default=5, help="warm runs per engine (the median is reported)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="vllm_bench_")
    model = make_model(os.path.join(root, f"model-{args.layers}x{args.hidden}"), hidden=args.hidden, layers=args.layers,
                       heads=args.heads, intermediate=args.hidden * 11 // 4)
    rng = random.Random(0)
    warm_up = [rng.randrange(2, 500) for _ in range(300)]
    prompt = [rng.randrange(2, 500) for _ in range(args.prompt)]
    common = {"model": model, "batches": [[warm_up], [prompt]] + [[prompt]] * args.repeat, "max_tokens": 1, "prefix_caching": False,
              "max_model_len": args.prompt + 64, "max_num_batched_tokens": args.prompt + 64}
    configs: dict[str, dict[str, Any]] = {
        "recompute": {},
        "ExampleConnector": {"connector": "ExampleConnector", "extra": {"shared_storage_path": os.path.join(root, "example")}},
        "PersistingConnector": {"connector": "PersistingConnector", "module": "persisting.kvcache.vllm",
                                "extra": {"path": os.path.join(root, "persisting")}},
    }
    results: dict[str, Any] = {}
    for name, extra in configs.items():
        store = extra.get("extra", {}).get("shared_storage_path") or extra.get("extra", {}).get("path")
        if store:
            shutil.rmtree(store, ignore_errors=True)
        out = run_engine(ENGINE, {**common, **extra}, timeout=1200)
        cold, warms = out[1][0], [b[0] for b in out[2:]]
        warm = sorted(warms, key=lambda r: r["seconds"])[len(warms) // 2]  # the median run
        results[name] = {"cold_s": cold["seconds"], "warm_s": warm["seconds"], "warm_cached": warm["cached"],
                         "warm_all_s": [round(r["seconds"], 3) for r in warms],
                         "same_token": all(r["tokens"] == cold["tokens"] for r in warms),
                         "bytes_per_token": _du(store) / max(warm["cached"], 1) if store else None}
        print(name, json.dumps(results[name]), flush=True)
    rec = results["recompute"]["warm_s"]  # median of the repeated runs (each recomputes)
    ex, pe = results["ExampleConnector"], results["PersistingConnector"]
    print(f"\nprompt {args.prompt} tokens, {args.layers} layers x hidden {args.hidden} (bf16), prefix cache off")
    print(f"{'':22}{'cold TTFT s':>12}{'warm TTFT s':>12}{'cached':>8}{'bytes/token':>13}")
    for name, r in results.items():
        bpt = f"{r['bytes_per_token']:.0f}" if r["bytes_per_token"] else "-"
        print(f"{name:22}{r['cold_s']:12.3f}{r['warm_s']:12.3f}{r['warm_cached']:8d}{bpt:>13}")
    print(f"recompute / Persisting warm: {rec / pe['warm_s']:.1f}x;  Example warm / Persisting warm: "
          f"{ex['warm_s'] / pe['warm_s']:.2f}x;  recompute / Example warm: {rec / ex['warm_s']:.1f}x;  "
          f"Persisting cold / warm (same engine): {pe['cold_s'] / pe['warm_s']:.1f}x")
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
