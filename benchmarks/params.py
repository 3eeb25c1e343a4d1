"""ParamStore vs torch.save, safetensors and torch.distributed.checkpoint, side by side.

One state dict of fp32 and bf16 tensors (``--mb`` MiB in total, ``--tensors`` tensors) is saved
and loaded by every contender in the same run. Every save ends with an fsync of what it wrote,
so durability is equal. "Load" is what resume does: every tensor ends up copied into an existing
model-sized state dict (mmap-based loads pay their page faults there). Reads are warm (page
cache): this machine gives us no way to drop caches.

Extra ParamStore scenarios: a second save with 90% of tensors unchanged (dedup), how long
``save_async`` blocks the caller, and a partial load of 10% of the tensors.

The physical limits of a save are measured in the same run: the same bytes written raw into
one file, and by Lance itself (one blob column over the tensors' memory), each fsynced.

    python benchmarks/params.py [--mb 200] [--tensors 100] [--repeat 3]
"""

from __future__ import annotations

import os
import sys

# run as a script, this directory leads sys.path and its queue.py would shadow the stdlib's
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import shutil
import subprocess
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch


def fsync_tree(path: str) -> None:
    """fsync every file under ``path`` (or the file itself) and the directories holding them."""
    paths = [path]
    if os.path.isdir(path):
        paths = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] + [d for d, _, _ in os.walk(path)]
    for p in paths + [os.path.dirname(os.path.abspath(path))]:
        fd = os.open(p, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(p) else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def raw_write(state: dict[str, torch.Tensor], path: str) -> None:
    """Every tensor's bytes appended to one new file, then fsync of it and its directory."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "raw"), "wb") as f:
        for t in state.values():
            f.write(t.contiguous().view(torch.uint8).numpy().data)
    fsync_tree(path)


def lance_write(state: dict[str, torch.Tensor], path: str, chunk: int = 4 << 20) -> None:
    """Lance's own write of the same bytes: one blob column of ``chunk``-sized values over the
    tensors' memory (no copy), one commit, then fsync of every file it wrote."""
    import lance
    import pyarrow as pa

    schema = pa.schema([pa.field("data", pa.large_binary(), metadata={"lance-encoding:blob": "true"})])
    pieces = []
    for t in state.values():
        raw = t.contiguous().view(torch.uint8).reshape(-1).numpy()
        bounds = list(range(0, raw.nbytes, chunk)) + [raw.nbytes]
        offsets = pa.array(bounds, pa.int64())
        pieces.append(pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), len(bounds) - 1, [None, offsets.buffers()[1], pa.py_buffer(raw)]))
    table = pa.Table.from_arrays([pa.chunked_array(pieces)], schema=schema)
    lance.write_dataset(table, os.path.join(path, "t.lance"), schema=schema, data_storage_version="2.2")
    fsync_tree(path)


def make_state(total_mb: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    per = total_mb * 1024 * 1024 // n
    state = {}
    for i in range(n):
        if i % 5 == 4:  # every fifth tensor bf16
            state[f"layers.{i}.weight"] = torch.randn(per // 2 // 1024, 1024, generator=g).to(torch.bfloat16)
        else:
            state[f"layers.{i}.weight"] = torch.randn(per // 4 // 1024, 1024, generator=g)
    return state


def copy_into(target: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> None:
    for k, t in target.items():
        t.copy_(loaded[k])


def timed(fn: Callable[[], Any], repeat: int, setup: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--tensors", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()

    from safetensors.torch import load_file, save_file

    from persisting.params import ParamStore

    state = make_state(args.mb, args.tensors)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    target = {k: torch.empty_like(v) for k, v in state.items()}
    root = tempfile.mkdtemp(prefix="bench-params-", dir=args.dir)
    results: dict[str, tuple[float, float]] = {}
    limits: dict[str, float] = {}

    def fresh(path: str) -> Callable[[], None]:
        return lambda: shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else (os.path.exists(path) and os.unlink(path))

    try:
        # torch.save / torch.load
        p = os.path.join(root, "state.pt")
        save_t = timed(lambda: (torch.save(state, p), fsync_tree(p)), args.repeat, fresh(p))
        torch.save(state, p)
        load_t = timed(lambda: copy_into(target, torch.load(p, weights_only=True)), args.repeat)
        results["torch.save/load"] = (save_t, load_t)
        load_mm = timed(lambda: copy_into(target, torch.load(p, weights_only=True, mmap=True)), args.repeat)
        results["torch.load(mmap=True)"] = (save_t, load_mm)
        os.unlink(p)

        # safetensors
        p = os.path.join(root, "state.safetensors")
        save_t = timed(lambda: (save_file(state, p), fsync_tree(p)), args.repeat, fresh(p))
        save_file(state, p)
        load_t = timed(lambda: copy_into(target, load_file(p)), args.repeat)
        results["safetensors"] = (save_t, load_t)
        os.unlink(p)

        # torch.distributed.checkpoint (single process, no process group)
        try:
            import torch.distributed.checkpoint as dcp

            p = os.path.join(root, "dcp")
            save_t = timed(lambda: (dcp.save(state, checkpoint_id=p), fsync_tree(p)), args.repeat, fresh(p))
            dcp.save(state, checkpoint_id=p)
            load_t = timed(lambda: dcp.load(target, checkpoint_id=p), args.repeat)  # loads in place
            results["torch.distributed.checkpoint"] = (save_t, load_t)
            shutil.rmtree(p)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other contenders
            print(f"dcp skipped: {type(exc).__name__}: {exc}")

        # the physical limits of a save on this disk: the same bytes written raw into one file,
        # and written by Lance itself as a blob column over the tensors' memory (4 MiB chunks,
        # one commit), each with fsync of what was written
        p = os.path.join(root, "limit")
        limits["raw write+fsync"] = timed(lambda: raw_write(state, p), args.repeat, fresh(p))
        limits["Lance blob write+fsync"] = timed(lambda: lance_write(state, p), args.repeat, fresh(p))
        fresh(p)()

        # ParamStore: every save into a new store, so none of them dedups against an earlier one
        p = os.path.join(root, "store")
        counter = iter(range(10**6))

        def ps_save() -> None:
            with ParamStore(p) as store:
                store.save(state, step=next(counter))

        save_t = timed(ps_save, args.repeat, fresh(p))
        ps_save()
        with ParamStore(p) as store:
            load_t = timed(lambda: copy_into(target, store.load()), args.repeat)
            into_t = timed(lambda: copy_into(target, store.load(into=target)), args.repeat)
        results["ParamStore"] = (save_t, load_t)
        results["ParamStore load(into=target)"] = (save_t, into_t)

        # dedup: 90% of tensors unchanged
        def second_state() -> dict[str, torch.Tensor]:
            s2 = dict(state)
            for i, k in enumerate(state):
                if i % 10 == 0:
                    s2[k] = state[k] + 1
            return s2

        first_times, second_times, new_bytes = [], [], []
        for _ in range(args.repeat):
            fresh(p)()
            s2 = second_state()
            with ParamStore(p) as store:
                t0 = time.perf_counter()
                store.save(state, step=1)
                t1 = time.perf_counter()
                info = store.save(s2, step=2)
                t2 = time.perf_counter()
            first_times.append(t1 - t0)
            second_times.append(t2 - t1)
            new_bytes.append(info.new_bytes)
        dedup = (statistics.median(first_times), statistics.median(second_times), statistics.median(new_bytes))

        # save_async in a training loop: one store, tensors change between saves; the first
        # call allocates its snapshot, later ones copy into the previous snapshot's buffers
        fresh(p)()
        block, total = [], []
        with ParamStore(p) as store:
            for step in range(args.repeat + 1):
                for t in list(state.values())[:: max(1, len(state) // 10)]:
                    t.add_(1)  # ~10% of tensors change per step, the rest dedups
                t0 = time.perf_counter()
                fut = store.save_async(state, step=step)
                t1 = time.perf_counter()
                fut.result()
                t2 = time.perf_counter()
                block.append(t1 - t0)
                total.append(t2 - t0)
        first_block = block.pop(0)
        total.pop(0)

        # partial load: 10% of the tensors by glob
        with ParamStore(p) as store:
            keys = [k for i, k in enumerate(state) if i % 10 == 0]
            part_t = timed(lambda: store.load(keys=keys), args.repeat)
            full_t = timed(lambda: store.load(), args.repeat)

        # peak RSS of a load, in a fresh process: the peak (VmHWM, reset after the imports and
        # the open through /proc/self/clear_refs) over the resident size just before the load.
        # torch is imported before the baseline: a caller loading torch tensors has it loaded,
        # and its first import alone adds ~180 MiB of resident libraries (measured), which an
        # earlier version of this script counted as part of ParamStore's load
        rss_child = (
            "import sys, torch\n"
            "from persisting.params import ParamStore\n"
            "from safetensors.torch import load_file\n"
            "def status(key):\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith(key):\n"
            "            return int(line.split()[1]) * 1024\n"
            "store = ParamStore(sys.argv[1], read_only=True) if sys.argv[2] == 'ps' else None\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "before = status('VmRSS')\n"
            "state = store.load() if store is not None else load_file(sys.argv[1])\n"
            "print(status('VmHWM') - before)\n"
        )
        st_path = os.path.join(root, "rss.safetensors")
        save_file(state, st_path)
        rss = {}
        for name, path, mode in (("ParamStore.load()", p, "ps"), ("safetensors load_file", st_path, "st")):
            out = subprocess.run([sys.executable, "-c", rss_child, path, mode], capture_output=True, text=True, check=True)
            rss[name] = int(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    gib = nbytes / 2**30
    for name, grown in rss.items():
        print(f"peak RSS of a load over the RSS before it (new process, torch imported, {name}): "
              f"{grown / 2**20:.0f} MiB = {grown / nbytes:.2f}x the checkpoint (target <= 1.1x)")
    print(f"state: {len(state)} tensors (fp32 + every 5th bf16), {nbytes / 2**20:.0f} MiB; median of {args.repeat}; "
          f"each save fsynced; load = copy into an existing state dict; warm page cache")
    print(f"{'contender':32s} {'save s':>8s} {'GiB/s':>7s} {'load s':>8s} {'GiB/s':>7s}")
    for name, (s, l) in results.items():
        print(f"{name:32s} {s:8.3f} {gib / s:7.2f} {l:8.3f} {gib / l:7.2f}")
    ours_s = results["ParamStore"][0]
    ours_l = min(results["ParamStore"][1], results["ParamStore load(into=target)"][1])
    others = {k: v for k, v in results.items() if not k.startswith("ParamStore")}
    best_s = min(others.items(), key=lambda kv: kv[1][0])
    best_l = min(others.items(), key=lambda kv: kv[1][1])
    print(f"save speed vs fastest anchor ({best_s[0]}): {best_s[1][0] / ours_s:.2f}x  (target >= 1.0x)")
    print(f"load speed vs fastest anchor ({best_l[0]}): {best_l[1][1] / ours_l:.2f}x  (target >= 1.0x)")
    f, s, nb = dedup
    print(f"dedup: first save {f:.3f} s, second save with 90% unchanged {s:.3f} s = {s / f:.2f}x of the first "
          f"(target <= 0.2x); it wrote {nb / 2**20:.1f} MiB of {nbytes / 2**20:.0f} MiB")
    b, t = statistics.median(block), statistics.median(total)
    print(f"save_async: caller blocked {b:.3f} s = {b / ours_s:.2f}x of a synchronous full save (target <= 0.2x; "
          f"first call, allocating its snapshot: {first_block:.3f} s); background write done after {t:.3f} s")
    for name, t in limits.items():
        print(f"limit: {name} of the same bytes {t:.3f} s ({gib / t:.2f} GiB/s); ParamStore save = {t / ours_s:.2f}x of it")
    print(f"partial load of 10% of tensors: {part_t:.3f} s vs full load {full_t:.3f} s ({part_t / full_t:.2f}x)")


if __name__ == "__main__":
    main()
