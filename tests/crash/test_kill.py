"""Real crash tests: a child process writes to a Table and is SIGKILLed; the parent recovers.

Every child is a fresh interpreter (``subprocess`` + ``sys.executable``; Lance is not
fork-safe) running ``writer_child.py``. It appends records that each carry a unique ``seq`` and
reports on stdout what was acknowledged (see the protocol in ``writer_child.py``). The parent
kills it at a random moment, reopens the table and checks, against what the child reported:

* every acknowledged seq is present, exactly once;
* no seq appears twice and rows come back in append order (seqs strictly increase);
* nothing the child never tried to write appears, and from each incarnation of the writer
  the rows that survive are a prefix of what it attempted (the WAL is a log: a lost append
  takes every later unacknowledged append of that process with it, never an earlier one);
* every row is whole: its fields are the exact function of its seq the child wrote;
* LSNs never go backwards or get reused across restarts, and after a writer reopen every
  acknowledged LSN is applied.

The same store is killed again and again (each round's child reopens it, so recovery runs
after recovery, sometimes inside the child, sometimes in the parent), with small
``flush_rows``, small WAL segments and ``compact_fragments=8`` so Lance commits, WAL segment
drops, rotations, schema evolution (a field that appears from seq 40 on) and compactions all
happen under the kills.

Note on "batch": an append is acknowledged before its fsync, but each frame reaches the kernel
with one ``os.writev`` before ``append`` returns, and SIGKILL does not discard the page cache.
So against a *process* kill, "batch" must lose nothing it acknowledged, exactly like "always"
(only a power loss may cost "batch" its last ``wal_sync_interval``); we test that stronger
property for both. Mode "none" acknowledges only after ``flush()`` returns.

The named kill points (PERSISTING_KILL_POINT=after_commit / after_fsync) crash a commit between
the Lance commit and the WAL drop: in ``flush()``, in the recovery flush of a reopening writer,
and in a background commit while appends go on. Recovery must see the commit's
``persisting.lsn`` and replay only the frames after it, so no record is applied twice.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lance
import pytest

from persisting.engine.options import TableOptions
from persisting.engine.table import LSN_KEY, Table
from persisting.engine.wal import read_frames

CHILD = Path(__file__).with_name("writer_child.py")
_spec = importlib.util.spec_from_file_location("_persisting_crash_writer_child", CHILD)
assert _spec is not None and _spec.loader is not None
writer_child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer_child)
record = writer_child.record

CHILD_TIMEOUT = 90.0  # seconds a child may live before the watchdog kills it (test failure)


# -- child processes -----------------------------------------------------------------------------


def _child_env(kill_point: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PERSISTING_KILL_POINT", None)
    if kill_point is not None:
        env["PERSISTING_KILL_POINT"] = kill_point
    return env


def spawn(
    uri: str,
    mode: str,
    action: str,
    *,
    log_dir: Path,
    job: dict[str, Any] | None = None,
    job_stdin: bool = False,
    kill_point: str | None = None,
) -> subprocess.Popen:
    """Start writer_child.py in a fresh interpreter; stderr goes to a file in ``log_dir``."""
    argv = [sys.executable, str(CHILD), uri, mode, action, "--job", json.dumps(job or {})]
    if job_stdin:
        argv.append("--job-stdin")
    log_dir.mkdir(parents=True, exist_ok=True)
    err = open(log_dir / f"child-{time.monotonic_ns()}.stderr", "w+")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if job_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=_child_env(kill_point),
    )
    proc.err_file = err  # type: ignore[attr-defined]
    return proc


def _stderr_of(proc: subprocess.Popen) -> str:
    err = proc.err_file  # type: ignore[attr-defined]
    err.flush()
    err.seek(0)
    text = err.read()
    err.close()
    return text[-4000:]


@dataclass
class ChildLog:
    """What one child reported on stdout (complete lines only)."""

    lines: list[str] = field(default_factory=list)
    attempts: list[tuple[int, int]] = field(default_factory=list)
    acks: list[tuple[int, int, int]] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)

    def feed(self, line: str) -> None:
        if not line.endswith("\n"):
            return  # a line cut by the kill carries no promise
        self.lines.append(line)
        parts = line.split()
        if not parts:
            return
        if parts[0] == "T":
            self.attempts.append((int(parts[1]), int(parts[2])))
        elif parts[0] == "A":
            self.acks.append((int(parts[1]), int(parts[2]), int(parts[3])))
        else:
            self.markers.append(parts[0])

    @property
    def attempted_seqs(self) -> list[int]:
        return [s for lo, hi in self.attempts for s in range(lo, hi)]

    @property
    def acked_seqs(self) -> list[int]:
        return [s for lo, hi, _ in self.acks for s in range(lo, hi)]


def finish(proc: subprocess.Popen, log: ChildLog, *, expect_kill: bool = True) -> str:
    """SIGKILL ``proc`` if still running, collect the rest of its stdout; return its stderr."""
    if expect_kill and proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read()  # type: ignore[union-attr]
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]
    for line in rest.splitlines(keepends=True):
        log.feed(line)
    stderr = _stderr_of(proc)
    assert proc.returncode == -signal.SIGKILL, (
        f"child exited with {proc.returncode} instead of being SIGKILLed; stdout tail "
        f"{log.lines[-5:]!r}; stderr:\n{stderr}"
    )
    return stderr


def run_to_end(proc: subprocess.Popen) -> ChildLog:
    """Wait for a child that kills itself (kill point / crash action); return its log."""
    log = ChildLog()
    timer = threading.Timer(CHILD_TIMEOUT, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.feed(line)
    finally:
        timer.cancel()
    finish(proc, log, expect_kill=False)
    return log


# -- checks ---------------------------------------------------------------------------------------


def check_row(row: dict[str, Any]) -> None:
    """A row must be exactly what the child wrote for its seq (nothing torn or garbled)."""
    seq = row["seq"]
    want = record(seq)
    assert row["payload"] == want["payload"], row
    assert row["val"] == want["val"], row
    assert row["pad"] == want["pad"], row
    assert row.get("extra") == want.get("extra"), row


def check_rows(
    rows: list[dict[str, Any]], incarnations: list[ChildLog], *, where: str, committed_only: bool = False
) -> None:
    """Rows against every child's report: see the module docstring for the properties.
    ``committed_only``: a reader sees committed rows, not a dead writer's WAL (adopted at
    the next writer open), so acknowledged rows may still be missing -- never duplicated."""
    seqs = [r["seq"] for r in rows]
    dups = sorted(s for s, n in collections.Counter(seqs).items() if n > 1)
    assert not dups, f"{where}: seqs present more than once: {dups[:20]}"
    assert seqs == sorted(seqs), f"{where}: rows are not in append order"
    for r in rows:
        check_row(r)
    present = set(seqs)
    attempted: set[int] = set()
    for i, log in enumerate(incarnations):
        tried = log.attempted_seqs
        attempted.update(tried)
        missing = [s for s in log.acked_seqs if s not in present]
        if committed_only:
            continue
        assert not missing, f"{where}: incarnation {i} lost acknowledged seqs {missing[:20]}"
        kept = [s for s in tried if s in present]
        assert kept == tried[: len(kept)], (
            f"{where}: incarnation {i}: surviving rows are not a prefix of its appends "
            f"(first gap at seq {next(s for s in tried if s not in present)})"
        )
    phantom = sorted(present - attempted)
    assert not phantom, f"{where}: rows nobody appended: {phantom[:20]}"


def check_lsns(incarnations: list[ChildLog], mode: str) -> None:
    """Acknowledged LSNs only grow within a writer (each writer has its own WAL and LSNs; a
    reused LSN would let replay skip a frame). In "none" several appends are acknowledged by
    one flush and share its LSN."""
    for log in incarnations:
        lsns = [lsn for _, _, lsn in log.acks]
        pairs = list(zip(lsns, lsns[1:]))
        if mode == "none":
            assert all(a <= b for a, b in pairs), f"acknowledged LSNs go backwards: {lsns}"
        else:
            assert all(a < b for a, b in pairs), f"acknowledged LSNs not strictly increasing: {lsns}"


def scan_rows(table: Table) -> list[dict[str, Any]]:
    return table.scan().to_pylist()


def unapplied_frames(wal_dir: str, applied: int) -> list[int]:
    if not os.path.isdir(wal_dir):
        return []
    return [f.lsn for f in read_frames(wal_dir, after_lsn=applied)]


def writer_dirs(wal_dir: str) -> list[str]:
    """Each writer's WAL directory under a table's WAL directory."""
    root = os.path.join(wal_dir, "writers")
    return sorted(os.path.join(root, n) for n in os.listdir(root)) if os.path.isdir(root) else []


def leftover_wal(wal_dir: str) -> list[str]:
    """WAL directories and single-writer segments left behind (none once every writer closed)."""
    legacy = [n for n in os.listdir(wal_dir) if n.endswith(".wal")] if os.path.isdir(wal_dir) else []
    return writer_dirs(wal_dir) + legacy


# -- random kills ---------------------------------------------------------------------------------


def _options(mode: str, job: dict[str, Any]) -> TableOptions:
    return TableOptions(
        durability=mode,
        wal_sync_interval=job["sync_interval"],
        flush_rows=job["flush_rows"],
        max_wal_size=job["max_wal_size"],
        compact_fragments=job["compact_fragments"],
    )


def kill_campaign(root: Path, mode: str, kills: int, seed: int) -> dict[str, int]:
    """Kill writers of one store ``kills`` times at random moments, checking after each kill.

    Children are started one round ahead and wait on stdin for their job, so the ~1 s
    interpreter + Lance import of the next child overlaps this round's work and checks.
    """
    uri = str(root / "t.lance")
    wal_dir = str(root / "t.wal")
    rng = random.Random(f"{mode}:{seed}")
    incarnations: list[ChildLog] = []
    next_seq = 0
    stats = collections.Counter()
    warm: collections.deque[subprocess.Popen] = collections.deque()
    spawned = 0

    def prewarm() -> None:
        nonlocal spawned
        while len(warm) < 2 and spawned < kills:
            warm.append(spawn(uri, mode, "loop", log_dir=root / "logs", job_stdin=True))
            spawned += 1

    try:
        for rnd in range(kills):
            prewarm()
            proc = warm.popleft()
            prewarm()
            job = {
                "seed": rng.randrange(1 << 32),
                "start_seq": next_seq,
                "flush_rows": rng.choice([50, 100, 200, 500]),
                "max_wal_size": rng.choice([4096, 16384, 1 << 20]),
                "compact_fragments": 8,
                "sync_interval": 0.02,
            }
            kill_at_open = rng.random() < 0.15
            want_acks = rng.randint(0, 60)
            delay = rng.uniform(0, 0.04 if kill_at_open else 0.02)
            log = ChildLog()
            timer = threading.Timer(CHILD_TIMEOUT, proc.kill)
            timer.start()
            try:
                try:
                    proc.stdin.write(json.dumps(job) + "\n")  # type: ignore[union-attr]
                    proc.stdin.close()  # type: ignore[union-attr]
                except BrokenPipeError:
                    pass  # the child died before reading its job: finish() reports its stderr
                acks = 0
                for line in proc.stdout:  # type: ignore[union-attr]
                    log.feed(line)
                    if kill_at_open and line.startswith("OPENING"):
                        break
                    if line.startswith("READY") and not kill_at_open and want_acks == 0:
                        break
                    if line.startswith("A "):
                        acks += 1
                        if acks >= want_acks:
                            break
                time.sleep(delay)
                finish(proc, log)
            finally:
                timer.cancel()
            incarnations.append(log)
            if log.attempts:
                next_seq = max(next_seq, max(hi for _, hi in log.attempts))
            stats["acked"] += len(log.acked_seqs)
            stats["kills"] += 1
            where = f"{mode} round {rnd} (acks wanted {want_acks}, open-kill {kill_at_open})"

            # 1. a read-only open sees committed rows and changes nothing
            with Table(uri, read_only=True) as ro:
                rows = scan_rows(ro)
            check_rows(rows, incarnations, where=where + " [read-only]", committed_only=True)
            check_lsns(incarnations, mode)

            # 2. sometimes recover as a writer here; otherwise the next child recovers
            if rng.random() < 0.4 or rnd == kills - 1:
                table = Table(uri, options=_options(mode, job))
                try:
                    report = table.recovery_report
                    assert report.lost == [], f"{where}: point-in-time recovery lost {report.lost}"
                    stats["replayed"] += report.frames
                    stats["torn"] += len(report.torn)
                    rows_w = scan_rows(table)
                    check_rows(rows_w, incarnations, where=where + " [writer]")
                    assert rows_w[: len(rows)] == rows, f"{where}: recovery changed rows a reader already saw"
                    assert table.last_lsn == table.applied_lsn, f"{where}: recovery left rows unapplied"
                finally:
                    table.close()
                assert leftover_wal(wal_dir) == [], f"{where}: adopted or closed WALs were not removed"
                rows = rows_w
                stats["writer_checks"] += 1
            stats["rows"] = len(rows)
    finally:
        for proc in warm:
            try:
                proc.stdin.close()  # type: ignore[union-attr]  (EOF: the child exits without a job)
            except BrokenPipeError:
                pass
        for proc in warm:
            try:
                proc.wait(timeout=30)
            finally:
                proc.stdout.close()  # type: ignore[union-attr]
                proc.err_file.close()  # type: ignore[attr-defined]
    return dict(stats)


KILLS_PER_MODE = 18  # 3 modes x 18 = 54 kill points in CI


@pytest.mark.parametrize("mode", ["always", "batch", "none"])
def test_random_kills(tmp_path: Path, mode: str) -> None:
    stats = kill_campaign(tmp_path, mode, KILLS_PER_MODE, seed=1)
    print(mode, stats)
    assert stats["kills"] == KILLS_PER_MODE
    assert 0 < stats["acked"] <= stats["rows"]
    assert stats["writer_checks"] >= 1


@pytest.mark.soak
@pytest.mark.parametrize("mode", ["always", "batch", "none"])
def test_random_kills_soak(tmp_path: Path, mode: str) -> None:
    kills = int(os.environ.get("PERSISTING_SOAK_KILLS", "200"))
    seed = int(os.environ.get("PERSISTING_SOAK_SEED", str(random.randrange(1 << 30))))
    print(f"soak seed {seed} (PERSISTING_SOAK_SEED to repeat)")
    stats = kill_campaign(tmp_path, mode, kills, seed=seed)
    print(mode, stats)
    assert stats["kills"] == kills


# -- named kill points ----------------------------------------------------------------------------

APPENDS, PER = 10, 3
BIG = {"flush_rows": 1_000_000, "max_wal_size": 1 << 20, "compact_fragments": 0, "sync_interval": 0.02}


def _big_options(mode: str) -> TableOptions:
    return _options(mode, BIG)


def _scenario_killpoint(root: Path, mode: str, point: str, existing: bool) -> dict[str, Any]:
    """Child appends APPENDS x PER records (seq 100...) and calls flush(), which kills it at
    ``point``. With ``existing`` the table already holds 10 flushed rows (seq 0..9, 2 LSNs)."""
    uri = str(root / "t.lance")
    base_lsn = 0
    if existing:
        with Table(uri, options=_big_options(mode)) as t:
            t.append([record(s) for s in range(0, 5)])
            base_lsn = t.append([record(s) for s in range(5, 10)])
    proc = spawn(uri, mode, "killpoint", log_dir=root / "logs", kill_point=point,
                 job={**BIG, "start_seq": 100, "appends": APPENDS, "per": PER})
    return {"uri": uri, "base_lsn": base_lsn, "base_seqs": list(range(10)) if existing else [], "log": run_to_end(proc)}


def _scenario_recovery_kill(root: Path, point: str) -> dict[str, Any]:
    """Child 1 appends (batch mode) and dies without flushing: only the WAL holds the rows.
    Child 2 opens the table, whose recovery flush is killed at ``point``."""
    uri = str(root / "t.lance")
    first = run_to_end(spawn(uri, "batch", "crash", log_dir=root / "logs",
                             job={**BIG, "start_seq": 0, "appends": APPENDS, "per": PER}))
    second = run_to_end(spawn(uri, "batch", "open", log_dir=root / "logs", kill_point=point, job=BIG))
    return {"uri": uri, "first": first, "second": second}


def _scenario_background(root: Path, mode: str, point: str) -> dict[str, Any]:
    """Child appends 3 records at a time with flush_rows=30, so the 10th append hands LSNs 1..10
    to the background committer while appends go on; that commit is killed at ``point``."""
    uri = str(root / "t.lance")
    job = {**BIG, "flush_rows": BG_FLUSH_ROWS, "max_wal_size": 4096, "start_seq": 0, "appends": 400, "per": PER}
    proc = spawn(uri, mode, "killpoint", log_dir=root / "logs", kill_point=point, job=job)
    return {"uri": uri, "log": run_to_end(proc)}


KP_CASES = [(m, p, e) for m in ("batch", "always") for p in ("after_commit", "after_fsync") for e in (False, True)]
KP_CASES += [("none", p, False) for p in ("after_commit", "after_fsync")]
RK_CASES = ["after_commit", "after_fsync"]
BG_CASES = [(m, p) for m in ("batch", "always", "none") for p in ("after_commit", "after_fsync")]
BG_FLUSH_ROWS = 30


@pytest.fixture(scope="module")
def kill_point_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    """Run every kill-point scenario's children concurrently (each costs ~1 s of imports), once;
    the tests below check one scenario each."""
    root = tmp_path_factory.mktemp("killpoints")
    jobs = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for mode, point, existing in KP_CASES:
            d = root / f"kp-{mode}-{point}-{'existing' if existing else 'fresh'}"
            jobs[("kp", mode, point, existing)] = pool.submit(_scenario_killpoint, d, mode, point, existing)
        for point in RK_CASES:
            jobs[("rk", point)] = pool.submit(_scenario_recovery_kill, root / f"rk-{point}", point)
        for mode, point in BG_CASES:
            jobs[("bg", mode, point)] = pool.submit(_scenario_background, root / f"bg-{mode}-{point}", mode, point)
        return {key: fut.exception() or fut.result() for key, fut in jobs.items()}


def _result(runs: dict[Any, Any], key: Any) -> dict[str, Any]:
    res = runs[key]
    if isinstance(res, BaseException):
        raise res
    return res


def _committed_lsn(uri: str) -> tuple[int, int]:
    """(version, persisting.lsn of that version's commit) of the newest Lance version."""
    ds = lance.dataset(uri)
    props = ds.read_transaction(ds.version).transaction_properties or {}
    return ds.version, int(props[LSN_KEY])


def wal_lsns(wal_dir: str) -> list[int]:
    """LSNs of the frames in the one writer WAL left under ``wal_dir``."""
    dirs = writer_dirs(wal_dir)
    assert len(dirs) <= 1, dirs
    return [f.lsn for f in read_frames(dirs[0])] if dirs else []


def _check_reopen_exactly_once(uri: str, mode: str, expect_seqs: list[int], version: int) -> None:
    """Reopen as a writer: the dead writer's WAL is adopted, every record once, nothing
    re-committed; then the store keeps working and a clean close leaves no WAL behind."""
    wal_dir = uri[: -len(".lance")] + ".wal"
    with Table(uri, options=_big_options(mode)) as t:
        assert t.version == version, "recovery re-committed frames the kill-point commit had applied"
        rows = scan_rows(t)
        assert [r["seq"] for r in rows] == expect_seqs
        for r in rows:
            check_row(r)
        assert t.count() == len(expect_seqs)
        assert t.append([record(1000)]) == 1  # a new writer: its own WAL, LSNs from 1
    assert leftover_wal(wal_dir) == []
    with Table(uri, read_only=True) as ro:
        assert [r["seq"] for r in scan_rows(ro)] == expect_seqs + [1000]


@pytest.mark.parametrize(("mode", "point", "existing"), KP_CASES,
                         ids=[f"{m}-{p}-{'existing' if e else 'fresh'}" for m, p, e in KP_CASES])
def test_kill_point_in_flush(kill_point_runs: dict[Any, Any], mode: str, point: str, existing: bool) -> None:
    res = _result(kill_point_runs, ("kp", mode, point, existing))
    uri, log = res["uri"], res["log"]
    assert "FLUSHING" in log.markers and "FLUSHED" not in log.markers, log.lines
    new_seqs = list(range(100, 100 + APPENDS * PER))
    assert log.attempted_seqs == new_seqs
    last = APPENDS  # the child is a new writer: its own LSNs 1..APPENDS
    if mode != "none":
        assert [lsn for _, _, lsn in log.acks] == list(range(1, last + 1))
    # the kill came after step 1 (the Lance commit carries the LSN) and before step 3 (the WAL
    # still holds every frame of the flush)
    version, committed = _committed_lsn(uri)
    assert committed == last
    assert version >= (2 if existing else 1)
    if mode != "none":
        assert wal_lsns(uri[: -len(".lance")] + ".wal") == list(range(1, last + 1))
    _check_reopen_exactly_once(uri, mode, res["base_seqs"] + new_seqs, version)


@pytest.mark.parametrize("point", RK_CASES)
def test_kill_point_in_recovery_flush(kill_point_runs: dict[Any, Any], point: str) -> None:
    res = _result(kill_point_runs, ("rk", point))
    uri, first, second = res["uri"], res["first"], res["second"]
    seqs = list(range(APPENDS * PER))
    assert first.acked_seqs == seqs and [lsn for _, _, lsn in first.acks] == list(range(1, APPENDS + 1))
    assert "OPENING" in second.markers and "READY" not in second.markers, second.lines
    version, committed = _committed_lsn(uri)
    assert (version, committed) == (1, APPENDS)
    _check_reopen_exactly_once(uri, "batch", seqs, version)


@pytest.mark.parametrize(("mode", "point"), BG_CASES, ids=[f"{m}-{p}" for m, p in BG_CASES])
def test_kill_point_in_background_commit(kill_point_runs: dict[Any, Any], mode: str, point: str) -> None:
    """A background commit dies at ``point`` while the writer keeps appending: the commit holds
    exactly the rows it was handed, the WAL every later frame, and recovery applies each once."""
    res = _result(kill_point_runs, ("bg", mode, point))
    uri, log = res["uri"], res["log"]
    first_lsn = BG_FLUSH_ROWS // PER  # the append that filled the buffer sealed LSNs 1..10
    version, committed = _committed_lsn(uri)
    assert committed == first_lsn
    assert lance.dataset(uri).count_rows() == BG_FLUSH_ROWS
    wal_dir = uri[: -len(".lance")] + ".wal"
    if mode == "none":
        survivors = list(range(BG_FLUSH_ROWS))  # nothing was acknowledged: no flush() returned
        last = first_lsn
    else:
        # the kill came before the WAL drop: every frame is still there, LSNs 1..M contiguous
        lsns = wal_lsns(wal_dir)
        last = lsns[-1]
        assert lsns == list(range(1, last + 1))
        acked = [lsn for _, _, lsn in log.acks]
        assert acked == list(range(1, len(acked) + 1)) and len(acked) <= last
        assert log.acked_seqs == list(range(PER * len(acked)))
        survivors = list(range(PER * last))
    assert log.attempted_seqs[: len(survivors)] == survivors
    with Table(uri, options=_big_options(mode)) as t:
        rows = scan_rows(t)
        assert [r["seq"] for r in rows] == survivors
        for r in rows:
            check_row(r)
        # the replayed frames (if any) were committed on top, never the sealed ones again
        assert (t.version > version) if last > first_lsn else (t.version == version)
    assert leftover_wal(wal_dir) == []
    with Table(uri, read_only=True) as ro:
        assert [r["seq"] for r in scan_rows(ro)] == survivors


# -- many writers ---------------------------------------------------------------------------------


def _await_first_ack(proc: subprocess.Popen, log: ChildLog) -> None:
    """Wait until the child has acknowledged something (or died, or the watchdog time passed)."""
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not log.acks and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def many_writer_campaign(
    uri: str, mode: str, *, writers: int, kills: int, seed: int, root: Path, job_extra: dict[str, Any] | None = None,
    compact_fragments: int = 8,
) -> dict[str, int]:
    """``writers`` processes append to one table at once; one of them, at random, is SIGKILLed
    and replaced by a fresh process ``kills`` times. Each incarnation writes its own seq range.
    Afterwards a writer opens the table (adopting every dead writer's WAL) and every
    incarnation's rows are checked: each acknowledged seq once, survivors a prefix of what it
    attempted, nothing torn, nothing nobody wrote. Without compaction each writer's rows also
    keep its append order; a compaction that overlaps other writers' appends may move the rows
    it rewrote after theirs (Lance rebases the rewrite to the end), so order is not checked then."""
    rng = random.Random(f"many:{mode}:{seed}")
    incarnations: list[ChildLog] = []
    base = iter(range(0, 10**9, 10**6))  # each incarnation gets its own million seqs

    def start() -> tuple[subprocess.Popen, ChildLog, threading.Thread]:
        job = {"seed": rng.randrange(1 << 32), "start_seq": next(base), "flush_rows": rng.choice([20, 50, 200]),
               "max_wal_size": rng.choice([4096, 1 << 20]), "compact_fragments": compact_fragments, "sync_interval": 0.02,
               **(job_extra or {})}
        proc = spawn(uri, mode, "loop", log_dir=root / "logs", job=job)
        log = ChildLog()

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.feed(line)

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        return proc, log, th

    live = [start() for _ in range(writers)]
    stats: collections.Counter[str] = collections.Counter()
    try:
        for _ in range(kills):
            i = rng.randrange(len(live))
            proc, log, th = live[i]
            # kill at a random moment after the victim's first acknowledgement: imports and
            # opens take 1 s or (on a loaded machine) much more, and a kill before any ack
            # tests nothing
            _await_first_ack(proc, log)
            time.sleep(rng.uniform(0.0, 0.5))
            assert proc.poll() is None, f"writer died on its own before its kill:\n{_stderr_of(proc)[-3000:]}"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            th.join()
            proc.stdout.close()  # type: ignore[union-attr]
            proc.err_file.close()  # type: ignore[attr-defined]
            incarnations.append(log)
            stats["kills"] += 1
            live[i] = start()
        for proc, log, _ in live:  # let the last generation acknowledge something too
            _await_first_ack(proc, log)
        time.sleep(0.3)
    finally:
        for proc, log, th in live:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            th.join()
            proc.stdout.close()  # type: ignore[union-attr]
            proc.err_file.close()  # type: ignore[attr-defined]
            incarnations.append(log)
    stats["acked"] = sum(len(lg.acked_seqs) for lg in incarnations)
    stats["writers_with_acks"] = sum(1 for lg in incarnations if lg.acks)
    with Table(uri, options=_options(mode, {"sync_interval": 0.02, "flush_rows": 100, "max_wal_size": 1 << 20,
                                            "compact_fragments": 8}),
               wal_dir=(job_extra or {}).get("wal_dir"), storage_options=(job_extra or {}).get("storage_options")) as t:
        rows = scan_rows(t)
    seqs = [r["seq"] for r in rows]
    dups = sorted(s for s, n in collections.Counter(seqs).items() if n > 1)
    assert not dups, f"{mode}: seqs present more than once: {dups[:20]}"
    for r in rows:
        check_row(r)
    present = set(seqs)
    position = {s: i for i, s in enumerate(seqs)}
    attempted: set[int] = set()
    for k, log in enumerate(incarnations):
        tried = log.attempted_seqs
        attempted.update(tried)
        missing = [s for s in log.acked_seqs if s not in present]
        assert not missing, f"{mode}: writer {k} lost acknowledged seqs {missing[:20]}"
        kept = [s for s in tried if s in present]
        assert kept == tried[: len(kept)], f"{mode}: writer {k}: survivors are not a prefix of its appends"
        if not compact_fragments:
            assert [position[s] for s in kept] == sorted(position[s] for s in kept), f"{mode}: writer {k} out of order"
        stats["lost_unacked"] += len(tried) - len(kept)
    phantom = sorted(present - attempted)
    assert not phantom, f"{mode}: rows nobody appended: {phantom[:20]}"
    stats["rows"] = len(rows)
    return dict(stats)


@pytest.mark.parametrize(("mode", "compact"), [("always", 8), ("batch", 0)])
def test_four_writers_killed_at_random(tmp_path: Path, mode: str, compact: int) -> None:
    stats = many_writer_campaign(str(tmp_path / "t.lance"), mode, writers=4, kills=4, seed=1, root=tmp_path,
                                 compact_fragments=compact)
    print(mode, stats)
    assert stats["kills"] == 4 and stats["writers_with_acks"] >= 6
    assert 0 < stats["acked"] <= stats["rows"]


@pytest.mark.soak
@pytest.mark.parametrize("mode", ["always", "batch", "none"])
def test_four_writers_killed_at_random_soak(tmp_path: Path, mode: str) -> None:
    kills = int(os.environ.get("PERSISTING_SOAK_KILLS", "40"))
    stats = many_writer_campaign(str(tmp_path / "t.lance"), mode, writers=4, kills=kills, seed=2, root=tmp_path)
    print(mode, stats)


def test_two_writers_on_s3_killed_at_random(tmp_path: Path, s3_options: dict[str, str], s3_bucket: str) -> None:
    """The same on moto's S3 server: Lance data in the bucket, each writer's WAL local."""
    extra = {"wal_dir": str(tmp_path / "wal"), "storage_options": s3_options}
    stats = many_writer_campaign(f"s3://{s3_bucket}/many.lance", "always", writers=2, kills=2, seed=3, root=tmp_path,
                                 job_extra=extra, compact_fragments=0)
    print(stats)
    assert stats["kills"] == 2 and stats["acked"] > 0
