"""Engine benchmark: Table.append vs plain Lance appends vs raw framed writes, and WAL recovery.

Every row of the printed table is measured in one run, on the same Arrow record batches
(id:int64, ts:float64, payload:string of ~64 bytes), side by side:

* ``Table.append`` under durability ``none`` / ``batch`` (group commit every 1 s) / ``always``
  (fsync per append), flushing to Lance every ``--flush-rows`` rows; the time includes the final
  flush and ``close()`` (opening the empty table is not timed). One variant times ``batch``
  only until the last append is acknowledged (the Table commits full buffers in the background);
  another sets ``column_compression="zstd"`` (the default stores variable-width columns plain).
* Anchor (a): plain ``lance.write_dataset(data, uri, mode="append")`` per batch and per
  ``--flush-rows`` rows (what the Table commits per flush). Lance does not fsync; the Table does.
* Anchor (b): raw framed writes to one file: ``batch.serialize()`` (Arrow IPC), then
  ``[u32 len][u32 crc32c][u64 lsn][u8 type][payload]`` with ``os.write``, under the same sync
  policy (none / fdatasync every 1 s / fdatasync per frame).
* Recovery: a child process (``subprocess``, Lance is not fork-safe) appends ``--recovery-rows``
  rows to a Table with durability ``batch`` and nothing flushed, then ``os._exit(0)``s without
  closing (a crash). We time ``Table(uri)`` (replay + commit of every record) and the pure
  replay (``read_frames`` + ``decode_batch``), and as an anchor the same replay followed by one
  plain ``lance.write_dataset`` + fsync. Each repeat recovers a fresh copy of that WAL (warm
  page cache: the copy was just written).

Each measurement runs ``--repeat`` times; the table shows best and median. Temp data lives
under ``--tmp`` (default /tmp) and is removed at the end.

    python benchmarks/engine.py [--rows 1000000] [--batch-rows 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("LANCE_LOG", "error")  # Lance warns on stderr when append creates a dataset

import crc32c  # noqa: E402
import lance  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from persisting.engine.batches import decode_batch  # noqa: E402
from persisting.engine.durable import DirectorySnapshot  # noqa: E402
from persisting.engine.options import TableOptions  # noqa: E402
from persisting.engine.table import Table  # noqa: E402
from persisting.engine.wal import read_frames  # noqa: E402

FRAME_PREFIX = struct.Struct("<II")  # length (bytes after the crc), crc32c
FRAME_META = struct.Struct("<QB")  # lsn, type
HUGE = 1 << 50


# -- data --------------------------------------------------------------------------------------
def make_batches(rows: int, batch_rows: int, payload_bytes: int, seed: int = 0) -> list[pa.RecordBatch]:
    """Deterministic batches: id int64, ts float64, payload string of ``payload_bytes`` chars."""
    rng = np.random.default_rng(seed)
    out = []
    start = 0
    t0 = 1.7e9
    while start < rows:
        n = min(batch_rows, rows - start)
        ids = np.arange(start, start + n, dtype=np.int64)
        ts = t0 + ids.astype(np.float64) * 1e-3 + rng.random(n) * 1e-4
        # payload: printable ASCII, fixed length, built straight into Arrow buffers
        chars = rng.integers(0x61, 0x7B, size=n * payload_bytes, dtype=np.uint8)
        offsets = np.arange(0, (n + 1) * payload_bytes, payload_bytes, dtype=np.int32)
        payload = pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(chars.tobytes()))
        out.append(pa.record_batch([pa.array(ids), pa.array(ts), payload], names=["id", "ts", "payload"]))
        start += n
    return out


def total_rows(batches: list[pa.RecordBatch]) -> int:
    return sum(b.num_rows for b in batches)


# -- measurements ------------------------------------------------------------------------------
@dataclass
class Result:
    group: str
    name: str
    rows: int
    times: list[float] = field(default_factory=list)
    failure: str = ""  # set when the measured operation raised instead of finishing

    @property
    def ok(self) -> bool:
        return bool(self.times) and not self.failure

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def rate(self, which: str = "best") -> float:
        return self.rows / (self.best if which == "best" else self.median)


def measure(
    repeat: int, setup: Callable[[int], object], run: Callable[[object], None],
    teardown: Callable[[object], None] | None = None,
) -> list[float]:
    """Time ``run(setup(i))`` ``repeat`` times; setup and teardown are not timed."""
    times = []
    for i in range(repeat):
        ctx = setup(i)
        start = time.perf_counter()
        run(ctx)
        times.append(time.perf_counter() - start)
        if teardown is not None:
            teardown(ctx)
    return times


def bench_table(
    batches: list[pa.RecordBatch], root: str, durability: str, flush_rows: int, repeat: int,
    schema: pa.Schema | None = None, ack_only: bool = False, compression: str | None = None,
) -> list[float]:
    """Append every batch and close (all rows committed to Lance and fsynced), or with
    ``ack_only`` time only until the last append is acknowledged (commits go on in the
    background; the close that finishes them is not timed)."""
    opts = TableOptions(
        durability=durability,  # type: ignore[arg-type]
        wal_sync_interval=0.0 if durability == "always" else 1.0,
        flush_rows=flush_rows,
        flush_bytes=HUGE,
        column_compression=compression,  # type: ignore[arg-type]
    )

    def setup(i: int) -> Table:
        return Table(os.path.join(root, f"table-{durability}-{i}.lance"), options=opts, schema=schema,
                     name=f"bench-{durability}-{i}{'-declared' if schema is not None else ''}")

    def run(t: Table) -> None:
        for b in batches:
            t.append(b)
        if not ack_only:
            t.close()

    return measure(repeat, setup, run, teardown=lambda t: t.close())  # type: ignore[attr-defined]


def bench_lance(batches: list[pa.RecordBatch], root: str, per_rows: int, repeat: int, tag: str) -> list[float]:
    """Plain lance appends of ``per_rows`` rows each (groups of whole batches)."""
    per_batches = max(1, per_rows // batches[0].num_rows)

    def setup(i: int) -> str:
        return os.path.join(root, f"lance-{tag}-{i}.lance")

    def run(uri: str) -> None:
        for k in range(0, len(batches), per_batches):
            group = batches[k : k + per_batches]
            data = group[0] if len(group) == 1 else pa.Table.from_batches(group)
            lance.write_dataset(data, uri, mode="append", data_storage_version="2.2")

    return measure(repeat, setup, run)


def bench_raw(batches: list[pa.RecordBatch], root: str, policy: str, repeat: int) -> list[float]:
    """Framed Arrow IPC batches to one file with os.write; policy none / batch (1 s) / always."""

    def setup(i: int) -> str:
        return os.path.join(root, f"raw-{policy}-{i}.log")

    def run(path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            last_sync = time.perf_counter()
            pending = False
            for lsn, b in enumerate(batches, start=1):
                payload = b.serialize()
                meta = FRAME_META.pack(lsn, 1)
                crc = crc32c.crc32c(payload, crc32c.crc32c(meta))
                frame = b"".join((FRAME_PREFIX.pack(len(meta) + payload.size, crc), meta, payload))
                if os.write(fd, frame) != len(frame):
                    raise OSError("short write")
                pending = True
                if policy == "always":
                    os.fdatasync(fd)
                    pending = False
                elif policy == "batch":
                    now = time.perf_counter()
                    if now - last_sync >= 1.0:
                        os.fdatasync(fd)
                        last_sync, pending = now, False
            if policy != "none" and pending:
                os.fdatasync(fd)  # the close of a group-commit log syncs what is pending
        finally:
            os.close(fd)

    return measure(repeat, setup, run)


# -- recovery ----------------------------------------------------------------------------------
def child_write_wal(uri: str, rows: int, batch_rows: int, payload_bytes: int) -> None:
    """Runs in a separate process: append, never flush, then die without closing."""
    batches = make_batches(rows, batch_rows, payload_bytes)
    opts = TableOptions(durability="batch", wal_sync_interval=1.0, flush_rows=rows + 1, flush_bytes=HUGE)
    t = Table(uri, options=opts)
    for b in batches:
        t.append(b)
    assert t.applied_lsn == 0 and len(t) == rows, "nothing may be flushed before the crash"
    sys.stdout.flush()
    os._exit(0)  # crash: no flush, no close, no WAL sync beyond what the kernel has


def bench_recovery(root: str, rows: int, batch_rows: int, payload_bytes: int, repeat: int) -> RecoveryTimes:
    template = os.path.join(root, "recover-template.lance")
    subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--_child-wal", template,
         "--rows", str(rows), "--batch-rows", str(batch_rows), "--payload-bytes", str(payload_bytes)],
        check=True,
    )
    wal_dir = template[: -len(".lance")] + ".wal"
    if os.path.exists(template):
        raise RuntimeError(f"the crashed writer flushed to {template}; the recovery test needs an unflushed WAL")
    wal_bytes = sum(os.path.getsize(os.path.join(wal_dir, n)) for n in os.listdir(wal_dir))

    # replay only: read_frames + decode (does not change the files)
    def replay(_: object) -> None:
        n = 0
        for frame in read_frames(wal_dir):
            n += decode_batch(frame.payload).num_rows
        if n != rows:
            raise RuntimeError(f"replayed {n} rows, expected {rows}")

    replay_times = measure(repeat, lambda i: None, replay)

    # open = replay + one Lance commit of everything + fsync + WAL truncation
    def setup(i: int) -> str:
        uri = os.path.join(root, f"recover-{i}.lance")
        shutil.copytree(wal_dir, uri[: -len(".lance")] + ".wal")
        return uri

    open_times: list[float] = []
    failure = ""
    for i in range(repeat):
        uri = setup(i)
        start = time.perf_counter()
        try:
            t = Table(uri, options=TableOptions(durability="batch"))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a Rust panic in Lance arrives as PanicException
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            break
        open_times.append(time.perf_counter() - start)
        if t.applied_lsn != t.last_lsn or len(t) != rows:
            raise RuntimeError(f"recovery lost records: {len(t)} rows, applied {t.applied_lsn} of {t.last_lsn}")
        t.close()

    # anchor: the least work recovery must do, without Table: replay + decode, one Lance commit
    # of everything, fsync of what it wrote (no schema evolution, buffering, WAL truncation).
    def anchor(uri: str) -> None:
        parts = []
        last = 0
        for frame in read_frames(wal_dir):
            parts.append(decode_batch(frame.payload))
            last = frame.lsn
        snap = DirectorySnapshot(uri)
        lance.write_dataset(pa.Table.from_batches(parts), uri, mode="create", data_storage_version="2.2",
                            transaction_properties={"persisting.lsn": str(last)})
        snap.fsync_new_files()

    anchor_times = measure(repeat, lambda i: os.path.join(root, f"anchor-{i}.lance"), anchor)
    return RecoveryTimes(open_times, failure, replay_times, anchor_times, wal_bytes)


@dataclass
class RecoveryTimes:
    open: list[float]
    open_failure: str
    replay: list[float]
    anchor: list[float]
    wal_bytes: int


# -- report ------------------------------------------------------------------------------------
def fmt_rate(r: float) -> str:
    return f"{r / 1e6:.3f} M/s"


def print_table(results: list[Result], mb_per_row: float) -> None:
    head = (f"{'group':<9} {'measurement':<52} {'rows':>9} {'best s':>8} {'median s':>9} "
            f"{'best rec/s':>11} {'median rec/s':>12} {'best MB/s':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        lead = f"{r.group:<9} {r.name:<52} {r.rows:>9,}"
        if not r.ok:
            print(f"{lead} FAILED: {r.failure}")
            continue
        print(f"{lead} {r.best:>8.3f} {r.median:>9.3f} {fmt_rate(r.rate('best')):>11} "
              f"{fmt_rate(r.rate('median')):>12} {r.rows * mb_per_row / r.best:>9.0f}")


def print_ratios(lines: list[tuple[str, Result, Result | None, float | None]]) -> None:
    """(label, a, b, target): b given -> ratio a/b (target: minimum ratio); b None -> a's rate
    (target: minimum records/s). Verdicts use the best time of each side."""
    print("ratios and targets (verdict on best times)")
    for label, a, b, target in lines:
        if not a.ok or (b is not None and not b.ok):
            bad = a if not a.ok else b
            assert bad is not None
            verdict = "   target: MISSED (measurement failed)" if target is not None else ""
            print(f"  {label:<52}: n/a, {bad.name} failed{verdict}")
            continue
        if b is not None:
            best, med = a.rate("best") / b.rate("best"), a.rate("median") / b.rate("median")
            text = f"{best:5.2f}x best, {med:5.2f}x median"
            verdict = "" if target is None else f"   target >= {target}x: {'MET' if best >= target else 'MISSED'}"
        else:
            best = a.rate("best")
            text = f"{fmt_rate(best)} best, {fmt_rate(a.rate('median'))} median"
            verdict = "" if target is None else f"   target >= {fmt_rate(target)}: {'MET' if best >= target else 'MISSED'}"
        print(f"  {label:<52}: {text}{verdict}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows appended per write measurement")
    p.add_argument("--batch-rows", type=int, default=10_000, help="rows per Arrow record batch (one append/frame)")
    p.add_argument("--flush-rows", type=int, default=100_000, help="Table flush_rows; also the large lance append size")
    p.add_argument("--payload-bytes", type=int, default=64, help="length of the payload string column")
    p.add_argument("--recovery-rows", type=int, default=1_000_000, help="records in the crashed WAL")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement (best and median reported)")
    p.add_argument("--tmp", default="/tmp", help="parent directory for temp data")
    p.add_argument("--skip-recovery", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_child-wal", dest="child_wal", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child_wal:
        child_write_wal(args.child_wal, args.rows, args.batch_rows, args.payload_bytes)
        return 0  # not reached

    batches = make_batches(args.rows, args.batch_rows, args.payload_bytes)
    rows = total_rows(batches)
    ipc_bytes = sum(b.serialize().size for b in batches)
    mb_per_row = ipc_bytes / rows / 1e6
    print(
        f"# engine benchmark: {rows:,} rows in {len(batches)} batches of {args.batch_rows:,} "
        f"(id:int64, ts:float64, payload:string[{args.payload_bytes}]); {ipc_bytes / 1e6:.1f} MB as Arrow IPC; "
        f"Table flush every {args.flush_rows:,} rows; repeat {args.repeat}; "
        f"lance {lance.__version__}, pyarrow {pa.__version__}, {os.cpu_count()} CPUs",
        flush=True,
    )

    root = tempfile.mkdtemp(prefix="persisting-bench-engine-", dir=args.tmp)
    results: list[Result] = []
    try:
        def run(group: str, name: str, n: int, fn: Callable[[str], list[float]]) -> Result:
            """Run one measurement in its own temp dir, removed afterwards."""
            sub = os.path.join(root, f"m{len(results)}")
            os.makedirs(sub)
            try:
                r = Result(group, name, n, fn(sub))
            finally:
                shutil.rmtree(sub, ignore_errors=True)
            results.append(r)
            print(f"  .. {group} {name}: best {r.best:.3f}s ({fmt_rate(r.rate()).strip()})", file=sys.stderr, flush=True)
            return r

        fr = args.flush_rows
        rep = args.repeat
        t_none = run("append", 'Table durability="none"', rows, lambda d: bench_table(batches, d, "none", fr, rep))
        t_batch = run("append", 'Table durability="batch" (sync 1 s)', rows, lambda d: bench_table(batches, d, "batch", fr, rep))
        t_always = run("append", 'Table durability="always" (fsync/append)', rows, lambda d: bench_table(batches, d, "always", fr, rep))
        # the append path alone: acknowledged rate while commits run in the background
        t_batch_ack = run("append", 'Table "batch", until the last append is acked', rows,
                          lambda d: bench_table(batches, d, "batch", fr, rep, ack_only=True))
        # the space/speed trade: Lance zstd on the string column (column_compression="zstd")
        t_batch_zstd = run("append", 'Table "batch", column_compression="zstd"', rows,
                           lambda d: bench_table(batches, d, "batch", fr, rep, compression="zstd"))
        l_small = run("lance", f"write_dataset append per {args.batch_rows:,} rows", rows, lambda d: bench_lance(batches, d, args.batch_rows, rep, "small"))
        l_big = run("lance", f"write_dataset append per {fr:,} rows", rows, lambda d: bench_lance(batches, d, fr, rep, "big"))
        r_none = run("raw", "framed IPC os.write, no sync", rows, lambda d: bench_raw(batches, d, "none", rep))
        r_batch = run("raw", "framed IPC os.write, fdatasync every 1 s", rows, lambda d: bench_raw(batches, d, "batch", rep))
        r_always = run("raw", "framed IPC os.write, fdatasync per frame", rows, lambda d: bench_raw(batches, d, "always", rep))

        recovery: list[Result] = []
        if not args.skip_recovery:
            sub = os.path.join(root, "recovery")
            os.makedirs(sub)
            try:
                rt = bench_recovery(sub, args.recovery_rows, args.batch_rows, args.payload_bytes, rep)
            finally:
                shutil.rmtree(sub, ignore_errors=True)
            n = args.recovery_rows
            recovery = [
                Result("recovery", "Table(uri) open: replay + commit + fsync", n, rt.open, rt.open_failure),
                Result("recovery", "read_frames + decode_batch (replay only)", n, rt.replay),
                Result("recovery", "anchor: replay + lance.write_dataset + fsync *", n, rt.anchor),
            ]
            results += recovery
            print(f"  .. recovery WAL: {rt.wal_bytes / 1e6:.1f} MB", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print_table(results, mb_per_row)
    if recovery:
        print("* not Table: read_frames + decode_batch, then one lance.write_dataset(create) of all rows "
              "and an fsync of the files it wrote (the least work a recovery must do)")
    print()
    bs, fs = f"{args.batch_rows:,}", f"{fr:,}"
    lines: list[tuple[str, Result, Result | None, float | None]] = [
        ("Table batch / raw framed (fdatasync every 1 s)", t_batch, r_batch, 0.5),
        ("Table none / raw framed (no sync)", t_none, r_none, None),
        ("Table always / raw framed (fdatasync per frame)", t_always, r_always, None),
        ("Table batch records/s (all committed)", t_batch, None, 1e6),
        ("Table batch acked records/s", t_batch_ack, None, 1e6),
        ("Table batch acked / raw framed (fdatasync every 1 s)", t_batch_ack, r_batch, 0.5),
        ("Table batch zstd columns / default (none)", t_batch_zstd, t_batch, None),
    ]
    if recovery:
        lines += [
            ("recovery: Table(uri) open records/s", recovery[0], None, 2e6),
            ("recovery: replay only records/s", recovery[1], None, 2e6),
            ("recovery: Table(uri) open / anchor", recovery[0], recovery[2], None),
        ]
    lines += [
        (f"Table none / lance append per {bs} rows", t_none, l_small, None),
        (f"Table none / lance append per {fs} rows", t_none, l_big, None),
        (f"Table batch / lance append per {bs} rows", t_batch, l_small, None),
        (f"Table batch / lance append per {fs} rows", t_batch, l_big, None),
    ]
    print_ratios(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
