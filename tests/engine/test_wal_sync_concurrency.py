"""A group-commit fsync does not stall appenders: ``WAL.sync`` runs fdatasync outside the lock
(on a duplicate descriptor). The disk is made slow by delaying the real fdatasync; appends made
meanwhile return at once, the sync reports exactly what it made durable, and rotation during a
sync loses nothing."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from persisting.engine import wal as walmod
from persisting.engine.wal import WAL, list_segments, read_frames


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """fdatasync takes 0.6 s; the event is set while one is under way."""
    real = os.fdatasync
    busy = threading.Event()

    def slow(fd: int) -> None:
        busy.set()
        time.sleep(0.6)
        real(fd)
        busy.clear()

    monkeypatch.setattr(walmod.os, "fdatasync", slow)
    return busy


def test_appends_go_on_while_a_sync_waits_for_the_disk(tmp_path: Path, slow_disk: threading.Event) -> None:
    monkey_real = os.fdatasync
    (tmp_path / "wal").mkdir()
    wal = WAL(str(tmp_path / "wal"), next_lsn=1, sync="batch", sync_interval=3600)
    try:
        first = [wal.append(b"x" * 100) for _ in range(5)]
        result: list[int] = []
        syncer = threading.Thread(target=lambda: result.append(wal.sync()))
        syncer.start()
        assert slow_disk.wait(5)
        started = time.monotonic()
        more = [wal.append(b"y" * 100) for _ in range(20)]
        took = time.monotonic() - started
        assert slow_disk.is_set()  # the sync was still waiting while all 20 appends returned
        assert took < 0.3, f"20 appends took {took:.3f} s during a 0.6 s fsync"
        syncer.join()
        assert result == [first[-1]]  # what it synced: the frames before it started, no more
        assert wal.sync() == more[-1]  # and the next sync covers the rest
    finally:
        walmod.os.fdatasync = monkey_real  # type: ignore[assignment]  # close fast
        wal.close()


def test_rotation_during_a_sync_keeps_every_frame(tmp_path: Path, slow_disk: threading.Event) -> None:
    directory = tmp_path / "wal"
    directory.mkdir()
    wal = WAL(str(directory), next_lsn=1, sync="batch", sync_interval=3600, max_segment_size=4096)
    payloads = [os.urandom(200) for _ in range(60)]
    wal.append(payloads[0])
    syncer = threading.Thread(target=wal.sync)
    syncer.start()
    assert slow_disk.wait(5)
    for p in payloads[1:]:  # several rotations (each fsyncs its old segment) while the sync waits
        wal.append(p)
    syncer.join()
    wal.close()
    assert len(list_segments(str(directory))) > 2
    frames = list(read_frames(str(directory), after_lsn=0))
    assert [f.lsn for f in frames] == list(range(1, 61))
    assert [bytes(f.payload) for f in frames] == payloads
