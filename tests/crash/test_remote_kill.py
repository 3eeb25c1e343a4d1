"""A random-kill campaign for the WAL on object storage (moto's S3 server), the twin of
``test_kill.py``'s ``test_four_writers_killed_at_random`` for ``wal_uri``.

Four writer processes (fresh interpreters running ``remote_kill_child.py``) append to ONE
table whose data and WAL are in the bucket; each acknowledges seqs into a local fsynced side
file (``always``: its append returned; ``batch``: a later ``sync()`` returned). They start
behind a barrier; the parent SIGKILLs one at a random moment counted from its first ack and
restarts it, either under the same writer identity (the new process waits out the dead
lease, fences the old epoch and replays it) or under a fresh one (the dead identity is
adopted by the next opener once its lease expired). Finally a checker opens the table
(adopting whatever is left) and counts, over every incarnation:

* lost -- acknowledged but absent; duplicated -- a (producer, seq) twice; torn -- a row whose
  payload is not exactly what its seq wrote; phantom -- a row nobody tried to write; and per
  incarnation the survivors must be a prefix of what it tried (a log loses only a tail).

All must be 0. Two targeted cases: a child SIGKILLed while its append's group PUT is in
flight (rows of 1 MiB so the PUT is long), and a child SIGSTOPped across a lease takeover,
which after SIGCONT must be fenced without acknowledging anything more.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("moto.server", reason="moto[server] is not installed")
pytest.importorskip("boto3", reason="boto3 is not installed")

from persisting.engine import Table, TableOptions
from persisting.engine.remote_wal import remote_wal_uri

sys.path.insert(0, os.path.dirname(__file__))
from remote_kill_child import payload_of  # noqa: E402

CHILD = os.path.join(os.path.dirname(__file__), "remote_kill_child.py")
LEASE = 1.5
TIMEOUT = 60.0


class Writer:
    """One child incarnation: its identity, its seq range, what it tried and acknowledged."""

    def __init__(self, uri: str, opts: dict[str, str], root: Path, *, writer_id: str, mode: str, start: int,
                 seed: int, barrier: Path, flush_rows: int = 50, payload: int = 256, stop_in_commit: int = 0) -> None:
        self.writer_id, self.start = writer_id, start
        self.acks_path = root / f"acks-{writer_id}-{start}"
        args = dict(uri=uri, wal_uri=remote_wal_uri(uri), storage_options=opts, writer_id=writer_id, mode=mode,
                    lease=LEASE, start=start, seed=seed, flush_rows=flush_rows, payload=payload,
                    barrier=str(barrier), acks=str(self.acks_path), stop_in_commit=stop_in_commit,
                    pause=0.003 if mode == "batch" else 0.0)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.err = open(root / f"stderr-{writer_id}-{start}", "w+")
        self.proc = subprocess.Popen([sys.executable, "-X", "faulthandler", CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, env=env)
        self.lines: list[str] = []
        self.tried: list[int] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith("\n"):
                continue  # a line cut by the kill promises nothing
            self.lines.append(line.strip())
            if line.startswith("try "):
                self.tried.append(int(line.split()[1]))

    def acked(self) -> list[int]:
        """Seqs in the ack file (complete lines only)."""
        if not self.acks_path.exists():
            return []
        text = self.acks_path.read_text()
        return [int(s) for s in text[: text.rfind("\n") + 1].split()]

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            self.err.seek(0)
            raise AssertionError(f"writer {self.writer_id} exited {self.proc.returncode}:\n{self.err.read()[-3000:]}")

    def wait_open(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not any(x.startswith("open ") for x in self.lines):
            self._alive()
            assert time.monotonic() < deadline, f"writer {self.writer_id} did not open"
            time.sleep(0.01)

    def wait_acks(self, n: int = 1) -> None:
        deadline = time.monotonic() + TIMEOUT
        while len(self.acked()) < n:
            self._alive()
            assert time.monotonic() < deadline, f"writer {self.writer_id}: only {len(self.acked())} acks"
            time.sleep(0.005)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._pump.join(5)
        self.err.close()


def _open(uri: str, opts: dict[str, str], writer_id: str, **kw: Any) -> Table:
    options = TableOptions(durability="always", wal_lease_seconds=LEASE, dedup=("producer", "seq"), **kw)
    return Table(uri, storage_options=opts, wal_uri=remote_wal_uri(uri), writer_id=writer_id, options=options)


def check(uri: str, opts: dict[str, str], incarnations: list[Writer], extra: frozenset[tuple[str, int]] = frozenset()
          ) -> dict[str, int]:
    """Open a checker writer once every dead lease expired (it adopts them) and count lost,
    duplicated, torn and phantom rows; assert every count is 0 and each prefix property."""
    time.sleep(LEASE + 0.3)
    with _open(uri, opts, "checker") as table:
        rows = table.scan(columns=["producer", "seq", "payload", "crc"]).to_pylist()
        ds = table._ds
        history = []
        for v in range(1, ds.version + 1):
            props = getattr(ds.read_transaction(v), "transaction_properties", None) or {}
            lsn = int(props.get("persisting.lsn", 0))
            history.append((v, props.get("persisting.writer"), lsn >> 40, lsn & ((1 << 40) - 1)))
    keys = collections.Counter((r["producer"], r["seq"]) for r in rows)
    stats = {
        "rows": len(rows),
        "acked": sum(len(w.acked()) for w in incarnations),
        "duplicated": sum(n - 1 for n in keys.values() if n > 1),
        "torn": sum(1 for r in rows if r["payload"] != payload_of(r["seq"], len(r["payload"]))),
    }
    stats["torn"] += sum(1 for r in rows if len(r["payload"]) not in (256, 1 << 20))
    lost: list[tuple[str, int]] = []
    phantom = set(keys) - extra  # rows the parent wrote itself
    for w in incarnations:
        tried = [(w.writer_id, s) for s in w.tried]
        phantom -= set(tried)
        lost += [(w.writer_id, s) for s in w.acked() if (w.writer_id, s) not in keys]
        kept = [k for k in tried if k in keys]
        assert kept == tried[: len(kept)], f"{w.writer_id}@{w.start}: survivors are not a prefix of its appends"
    stats["lost"], stats["phantom"] = len(lost), len(phantom)
    assert (stats["lost"], stats["duplicated"], stats["torn"], stats["phantom"]) == (0, 0, 0, 0), (
        stats, lost[:10], sorted(phantom)[:10], sorted(k for k, n in keys.items() if n > 1)[:40], history)
    return stats


def campaign(uri: str, opts: dict[str, str], root: Path, mode: str, *, kills: int, seed: int) -> dict[str, int]:
    """Four writers, ``kills`` random SIGKILLs each followed by a restart (see module doc)."""
    rng = random.Random(f"remote:{mode}:{seed}")
    base = iter(range(1_000_000, 10**12, 1_000_000))  # each incarnation its own, increasing seqs
    barrier = root / "go"
    incarnations: list[Writer] = []

    def start(writer_id: str, gate: Path) -> Writer:
        w = Writer(uri, opts, root, writer_id=writer_id, mode=mode, start=next(base), seed=rng.randrange(1 << 32),
                   barrier=gate, flush_rows=rng.choice([20, 50, 200]))
        incarnations.append(w)
        return w

    live = [start(f"w{i}", barrier) for i in range(4)]
    stats: collections.Counter[str] = collections.Counter()
    try:
        for w in live:
            w.wait_open()
        barrier.touch()  # all four start appending together
        for k in range(kills):
            i = rng.randrange(len(live))
            victim = live[i]
            victim.wait_acks()
            time.sleep(rng.uniform(0.0, 0.6))
            assert victim.proc.poll() is None, f"{victim.writer_id} died on its own"
            victim.kill()
            stats["kills"] += 1
            same = rng.random() < 0.5  # same identity: fence + replay; else adopted as a dead identity
            stats["same_identity" if same else "fresh_identity"] += 1
            gate = root / f"go-{k}"
            live[i] = start(victim.writer_id if same else f"w{i}k{k}", gate)
            gate.touch()
        for w in live:
            w.wait_acks()
        time.sleep(0.2)
    finally:
        for w in live:
            w.kill()
    stats.update(check(uri, opts, incarnations))
    stats["with_acks"] = sum(1 for w in incarnations if w.acked())
    return dict(stats)


@pytest.fixture
def uri(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/campaign.lance"


@pytest.mark.parametrize("mode", ["always", "batch"])
def test_four_writers_on_object_wal_killed_at_random(uri: str, s3_options: dict[str, str], tmp_path: Path,
                                                     mode: str) -> None:
    stats = campaign(uri, s3_options, tmp_path, mode, kills=2, seed=1)
    print(mode, stats)
    assert stats["kills"] == 2 and stats["with_acks"] >= 5 and stats["acked"] > 0


@pytest.mark.soak
@pytest.mark.parametrize("mode", ["always", "batch"])
def test_four_writers_on_object_wal_killed_at_random_soak(uri: str, s3_options: dict[str, str], tmp_path: Path,
                                                          mode: str) -> None:
    kills = int(os.environ.get("PERSISTING_SOAK_KILLS", "30"))
    stats = campaign(uri, s3_options, tmp_path, mode, kills=kills, seed=2)
    print(mode, stats)
    assert stats["kills"] == kills


def test_killed_while_its_group_put_is_in_flight(uri: str, s3_options: dict[str, str], tmp_path: Path) -> None:
    """Rows of 1 MiB make each group PUT long; the kill lands after ``try N`` and before N's
    ack, i.e. while N's append waits on its PUT (or its lease check). The next owner of the
    identity must keep every ack, and N at most once, whole."""
    rng = random.Random("mid-put")
    incarnations: list[Writer] = []
    in_flight = 0
    for k in range(3):
        gate = tmp_path / f"go-{k}"
        w = Writer(uri, s3_options, tmp_path, writer_id="big", mode="always", start=(k + 1) * 1_000_000,
                   seed=k, barrier=gate, flush_rows=rng.choice([3, 1000]), payload=1 << 20)
        incarnations.append(w)
        try:
            w.wait_open()
            gate.touch()
            w.wait_acks(2)
            started = time.monotonic()
            w.wait_acks(4)
            per_append = (time.monotonic() - started) / 2
            n = len(w.tried)
            while len(w.tried) == n:  # the next append starts
                time.sleep(0.0005)
            time.sleep(rng.uniform(0.0, 0.5 * per_append))
            w.signal(signal.SIGKILL)
            w.proc.wait()
            in_flight += w.tried[-1] not in w.acked()
        finally:
            w.kill()
    stats = check(uri, s3_options, incarnations)
    print("mid-put", stats, "kills with the append in flight:", in_flight)
    assert in_flight >= 2  # most kills hit an unacknowledged append


@pytest.mark.parametrize("mode", ["batch"])  # "always": tests/engine/test_remote_wal.py
def test_paused_writer_across_a_takeover_acknowledges_nothing(uri: str, s3_options: dict[str, str], tmp_path: Path,
                                                              mode: str) -> None:
    """SIGSTOP a writer, let a new process of its identity take the lease over (and commit),
    SIGCONT it: it must be fenced before acknowledging anything more."""
    gate = tmp_path / "go"
    w = Writer(uri, s3_options, tmp_path, writer_id="paused", mode=mode, start=1_000_000, seed=5, barrier=gate,
               flush_rows=1_000_000)  # no commit by the old owner: see the test below for that window
    try:
        w.wait_open()
        gate.touch()
        w.wait_acks(30)
        w.signal(signal.SIGSTOP)
        before = len(w.acked())
        with _open(uri, s3_options, "paused") as table:  # waits out the paused lease, fences, replays
            table.append([{"producer": "other", "seq": 1, "payload": payload_of(1, 256), "crc": 0}])
            table.flush()
            w.signal(signal.SIGCONT)
            assert w.proc.wait(30) == 3, w.lines[-5:]
            assert "fenced FencedError" in w.lines
            # acks of appends (or a sync) that returned just before the pause may still be written
            assert len(w.acked()) <= before + (1 if mode == "always" else 20), (before, len(w.acked()))
    finally:
        w.kill()
    check(uri, s3_options, [w], frozenset({("other", 1)}))


def test_old_owner_paused_inside_a_commit_adds_no_duplicate(uri: str, s3_options: dict[str, str],
                                                           tmp_path: Path) -> None:
    """The old owner stops itself inside its 2nd Lance commit, after its owner check passed on
    the version its append is based on; a new process of its identity takes over, fences Lance
    commits, replays the old epoch and commits; then the old owner resumes. Its append conflicts
    with the fence, the retry finds the lease gone: nothing appears twice (without the fence, 9
    rows did)."""
    gate = tmp_path / "go"
    w = Writer(uri, s3_options, tmp_path, writer_id="paused", mode="always", start=1_000_000, seed=6, barrier=gate,
               flush_rows=10, stop_in_commit=2)
    try:
        w.wait_open()
        gate.touch()
        deadline = time.monotonic() + TIMEOUT
        while "committing" not in w.lines or w.proc.poll() is None and not _stopped(w.proc.pid):
            w._alive()
            assert time.monotonic() < deadline, "the writer never reached its 2nd commit"
            time.sleep(0.01)
        with _open(uri, s3_options, "paused", flush_rows=1_000_000) as table:  # takes the lease over, replays
            table.flush()
        w.signal(signal.SIGCONT)
        w.proc.wait(30)  # its commit lands, then its next PUT or commit is fenced
    finally:
        w.kill()
    check(uri, s3_options, [w])


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"
