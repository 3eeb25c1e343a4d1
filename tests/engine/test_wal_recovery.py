"""WAL recovery sweeps: torn tails at every byte, bit flips at every byte, sealed segments,
torn segment headers; first with ``WAL`` / ``read_frames`` / ``truncate_torn`` directly, then
through ``Table`` reopen (the state a SIGKILLed writer leaves behind).

Rules under test (DESIGN.md, "Recovery"): in point-in-time mode a bad frame at the tail of the
last segment is a torn write, cut off, and recovery yields every frame before it; a bad frame
anywhere else raises CorruptionError naming the segment file and the frame's offset; salvage
mode skips the bad bytes, yields every other frame and reports what was lost.

``test_normal_open_after_salvage_works``: after a salvage open, a normal open works (the
damaged segment is dropped even when nothing was left to replay).
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pytest

from persisting.engine.batches import encode_batch
from persisting.engine.commits import LSN_KEY, writer_applied_lsn
from persisting.engine.options import TableOptions
from persisting.engine.table import Table
from persisting.engine.wal import (
    FRAME_OVERHEAD,
    HEADER_SIZE,
    WAL,
    ReplayReport,
    list_segments,
    read_frames,
    truncate_torn,
)
from persisting.errors import CorruptionError

K = 5  # frames (appends) per log under test


def test_format_constants_match_the_design() -> None:
    # header [8s magic][u32 version][16s salt][u32 crc]; frame [u32 len][u32 crc][u64 lsn][u8 type]
    assert HEADER_SIZE == 8 + 4 + 16 + 4
    assert FRAME_OVERHEAD == 4 + 4 + 8 + 1


# -- WAL level ------------------------------------------------------------------------------------


@dataclass
class Log:
    """A closed WAL in ``directory``: its frames and where each sits."""

    directory: Path
    payloads: list[bytes]
    spans: list[tuple[str, int, int]]  # (segment path, offset, length) of frame i (LSN i + 1)

    @property
    def expected(self) -> list[tuple[int, bytes]]:
        return [(i + 1, p) for i, p in enumerate(self.payloads)]

    def segment_bytes(self) -> dict[str, bytes]:
        return {path: Path(path).read_bytes() for _, path in list_segments(str(self.directory))}


def _payloads(n: int = K, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(40, 160)) for _ in range(n)]


def write_log(directory: Path, payloads: list[bytes], *, max_segment_size: int = 1 << 20) -> Log:
    """Write ``payloads`` as frames LSN 1.. with a real WAL and find each frame's span."""
    directory.mkdir(parents=True, exist_ok=True)
    wal = WAL(str(directory), next_lsn=1, sync="batch", sync_interval=3600, max_segment_size=max_segment_size)
    lsns = [wal.append(p) for p in payloads]
    wal.close()
    assert lsns == list(range(1, len(payloads) + 1))
    spans = []
    segments = [path for _, path in list_segments(str(directory))]
    seg_i, pos = 0, HEADER_SIZE
    for p in payloads:
        length = FRAME_OVERHEAD + len(p)
        if pos + length > os.path.getsize(segments[seg_i]):
            seg_i, pos = seg_i + 1, HEADER_SIZE
        spans.append((segments[seg_i], pos, length))
        pos += length
    for seg in segments:  # the spans tile each segment exactly
        ends = [o + n for s, o, n in spans if s == seg]
        assert (max(ends) if ends else HEADER_SIZE) == os.path.getsize(seg)
    return Log(directory, payloads, spans)


def replay(
    directory: Path, mode: str = "point_in_time", after_lsn: int = 0
) -> tuple[list[tuple[int, bytes]], ReplayReport]:
    """(lsn, payload) of every frame read_frames yields, and its report."""
    report = ReplayReport()
    frames = read_frames(str(directory), after_lsn=after_lsn, mode=mode, report=report)  # type: ignore[arg-type]
    return [(f.lsn, bytes(f.payload)) for f in frames], report


def restore(log: Log, original: dict[str, bytes], changed: dict[str, bytes]) -> None:
    """Put every segment back as in ``original`` (with ``changed`` ones replaced); drop others."""
    for _, path in list_segments(str(log.directory)):
        if path not in original:
            os.unlink(path)
    for path, data in {**original, **changed}.items():
        Path(path).write_bytes(data)
    # the newest-segment record goes back with the segments (a later writer raised it)
    newest = max(int(os.path.basename(p)[:8]) for p in original)
    (log.directory / "ACTIVE").write_text(f"{newest}\n")


def flip(data: bytes, offset: int, bit: int | None = None) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << (offset % 8 if bit is None else bit)
    return bytes(out)


def _check_new_appends_after_recovery(log: Log, report: ReplayReport, expected: list[tuple[int, bytes]]) -> None:
    """After cutting torn tails, a new writer's frames follow and a later replay sees them."""
    truncate_torn(report)
    assert report.last_lsn == expected[-1][0]
    wal = WAL(str(log.directory), next_lsn=report.last_lsn + 1, sync="always", sync_interval=0)
    new = wal.append(b"after recovery")
    wal.close()
    assert new == report.last_lsn + 1
    frames, again = replay(log.directory)
    assert frames == expected + [(new, b"after recovery")]
    assert again.torn == [] and again.lost == []


@pytest.fixture
def log5(tmp_path: Path) -> Log:
    return write_log(tmp_path / "wal", _payloads())


def test_a_deleted_newest_segment_is_corruption_not_a_shorter_log(tmp_path: Path) -> None:
    """Deleting the last segment would silently drop acknowledged frames: the WAL records the
    newest segment it opened, so replay refuses (salvage reports the loss)."""
    log = write_log(tmp_path / "wal", _payloads(), max_segment_size=300)
    segments = list_segments(str(log.directory))
    assert len(segments) >= 2
    os.unlink(segments[-1][1])
    with pytest.raises(CorruptionError, match="segment .* is missing") as info:
        replay(log.directory)
    assert info.value.path == segments[-1][1]
    frames, report = replay(log.directory, mode="salvage")
    assert len(report.lost) == 1 and "missing" in report.lost[0].reason
    for _, path in segments[:-1]:
        os.unlink(path)  # every segment gone: the same
    with pytest.raises(CorruptionError, match="missing"):
        replay(log.directory)


def test_clean_log_replays_every_frame(log5: Log) -> None:
    frames, report = replay(log5.directory)
    assert frames == log5.expected
    assert (report.frames, report.last_lsn, report.torn, report.lost) == (K, K, [], [])
    assert replay(log5.directory, after_lsn=3)[0] == log5.expected[3:]


def test_torn_tail_at_every_byte_of_the_last_frame(log5: Log) -> None:
    original = log5.segment_bytes()
    path, start, length = log5.spans[-1]
    assert start + length == len(original[path])
    for cut in range(start, start + length):
        restore(log5, original, {path: original[path][:cut]})
        frames, report = replay(log5.directory)
        assert frames == log5.expected[:-1], f"cut at {cut}"
        assert report.lost == []
        if cut == start:
            assert report.torn == []  # the log simply ends after frame K-1
        else:
            assert [(t.path, t.offset, t.length) for t in report.torn] == [(path, start, cut - start)], f"cut at {cut}"
        _check_new_appends_after_recovery(log5, report, log5.expected[:-1])
        if cut > start:
            assert os.path.getsize(path) == start  # truncate_torn cut exactly the torn bytes


def test_bit_flip_in_last_frame_is_a_torn_tail(log5: Log) -> None:
    original = log5.segment_bytes()
    path, start, length = log5.spans[-1]
    for off in range(start, start + length):
        restore(log5, original, {path: flip(original[path], off)})
        frames, report = replay(log5.directory)
        assert frames == log5.expected[:-1], f"flip at {off}"
        assert [(t.path, t.offset, t.length) for t in report.torn] == [(path, start, length)]
        _check_new_appends_after_recovery(log5, report, log5.expected[:-1])


@pytest.mark.parametrize("frame", range(K - 1))
def test_bit_flip_before_the_tail_raises_then_salvage_skips_it(log5: Log, frame: int) -> None:
    original = log5.segment_bytes()
    path, start, length = log5.spans[frame]
    lsn = frame + 1
    for off in range(start, start + length):
        restore(log5, original, {path: flip(original[path], off)})
        with pytest.raises(CorruptionError) as info:
            replay(log5.directory)
        err = info.value
        assert path in str(err) and f"offset {start}" in str(err), str(err)
        assert (err.path, err.offset) == (path, start)
        # salvage: every other frame comes back, the bad one is reported lost
        frames, report = replay(log5.directory, mode="salvage")
        assert frames == [f for f in log5.expected if f[0] != lsn], f"flip at {off}"
        assert [(x.path, x.offset, x.length) for x in report.lost] == [(path, start, length)]
        assert report.torn == [] and report.last_lsn == K
        # a read changes nothing: point-in-time still refuses
        with pytest.raises(CorruptionError):
            replay(log5.directory)


def test_damage_to_applied_frames_is_reported_not_refused(log5: Log) -> None:
    """A damaged frame whose successor is at or below after_lsn is provably applied: recovery
    neither refuses nor reports a loss, but names the damaged range."""
    original = log5.segment_bytes()
    path, start, length = log5.spans[0]
    restore(log5, original, {path: flip(original[path], start + 20)})
    for mode in ("point_in_time", "salvage"):
        frames, report = replay(log5.directory, mode=mode, after_lsn=2)
        assert frames == log5.expected[2:]
        assert report.lost == [] and report.torn == []
        assert [(x.path, x.offset, x.length) for x in report.damaged_applied] == [(path, start, length)]
    # not applied (after_lsn below the damaged frame): refused as before
    with pytest.raises(CorruptionError):
        replay(log5.directory, after_lsn=0)


def test_missing_segment_above_applied_is_corruption(tmp_path: Path) -> None:
    """LSNs are consecutive: a deleted segment with unapplied frames is not silently skipped."""
    from persisting.engine.wal import WAL, list_segments

    d = str(tmp_path / "wal")
    os.makedirs(d)
    w = WAL(d, next_lsn=1, sync="always", max_segment_size=200)
    for i in range(8):
        w.append(b"x" * 40)
    w.close()
    segments = list_segments(d)
    assert len(segments) >= 3
    os.unlink(segments[1][1])
    with pytest.raises(CorruptionError, match="missing"):
        replay(d)
    frames, report = replay(d, mode="salvage")
    assert any("missing LSNs" in x.reason for x in report.lost)
    assert [f[0] for f in frames] == sorted(f[0] for f in frames)


@pytest.fixture
def sealed_log(tmp_path: Path) -> Log:
    """Frames over three segments (rotation at ~250 bytes)."""
    log = write_log(tmp_path / "wal", _payloads(8, seed=11), max_segment_size=250)
    assert len({s for s, _, _ in log.spans}) >= 3
    return log


def test_rotated_segments_replay_in_order(sealed_log: Log) -> None:
    frames, report = replay(sealed_log.directory)
    assert frames == sealed_log.expected and report.torn == []


def test_damage_at_the_end_of_a_sealed_segment_is_corruption(sealed_log: Log) -> None:
    """Only the last segment may have a torn tail: a sealed one was fdatasync'ed whole."""
    original = sealed_log.segment_bytes()
    first_seg = sealed_log.spans[0][0]
    idx = max(i for i, (s, _, _) in enumerate(sealed_log.spans) if s == first_seg)  # its last frame
    path, start, length = sealed_log.spans[idx]
    cases = {f"flip {off}": flip(original[path], off) for off in range(start, start + length, 3)}
    cases.update({f"cut {cut}": original[path][:cut] for cut in range(start + 1, start + length, 5)})
    for what, data in cases.items():
        restore(sealed_log, original, {path: data})
        with pytest.raises(CorruptionError) as info:
            replay(sealed_log.directory)
        assert (info.value.path, info.value.offset) == (path, start), what
        assert path in str(info.value) and f"offset {start}" in str(info.value)
        frames, report = replay(sealed_log.directory, mode="salvage")
        assert frames == [f for f in sealed_log.expected if f[0] != idx + 1], what
        assert [(x.path, x.offset) for x in report.lost] == [(path, start)], what


def test_flip_in_middle_of_sealed_segment_is_corruption(sealed_log: Log) -> None:
    original = sealed_log.segment_bytes()
    path, start, length = sealed_log.spans[0]
    restore(sealed_log, original, {path: flip(original[path], start + length // 2)})
    with pytest.raises(CorruptionError) as info:
        replay(sealed_log.directory)
    assert (info.value.path, info.value.offset) == (path, start)
    frames, report = replay(sealed_log.directory, mode="salvage")
    assert frames == sealed_log.expected[1:]


def test_torn_tail_of_last_segment_after_rotation(sealed_log: Log) -> None:
    original = sealed_log.segment_bytes()
    path, start, length = sealed_log.spans[-1]
    for cut in range(start + 1, start + length):
        restore(sealed_log, original, {path: original[path][:cut]})
        frames, report = replay(sealed_log.directory)
        assert frames == sealed_log.expected[:-1]
        assert [(t.path, t.offset) for t in report.torn] == [(path, start)]
    _check_new_appends_after_recovery(sealed_log, report, sealed_log.expected[:-1])


def test_torn_segment_header_is_recovered(log5: Log) -> None:
    """A crash while a new segment is being created leaves a file shorter than its header."""
    original = log5.segment_bytes()
    seg_path = os.path.join(str(log5.directory), "00000002.wal")
    header = Path(log5.spans[0][0]).read_bytes()[:HEADER_SIZE]  # any header's leading bytes
    for size in range(0, HEADER_SIZE):
        restore(log5, original, {seg_path: header[:size]})
        frames, report = replay(log5.directory)
        assert frames == log5.expected
        assert [(t.path, t.offset, t.length) for t in report.torn] == [(seg_path, 0, size)]
        _check_new_appends_after_recovery(log5, report, log5.expected)


def test_short_sealed_segment_is_corruption(log5: Log) -> None:
    """A segment shorter than its header that is not the last one is not a crash artefact."""
    original = log5.segment_bytes()
    d = str(log5.directory)
    restore(log5, original, {})
    Path(d, "00000002.wal").write_bytes(b"PSTW")
    shutil.copy(log5.spans[0][0], os.path.join(d, "00000003.wal"))
    with pytest.raises(CorruptionError) as info:
        replay(log5.directory)
    assert info.value.path == os.path.join(d, "00000002.wal")


def test_bad_segment_header_is_corruption(log5: Log) -> None:
    original = log5.segment_bytes()
    path = log5.spans[0][0]
    for off in range(0, HEADER_SIZE):
        restore(log5, original, {path: flip(original[path], off)})
        with pytest.raises(CorruptionError) as info:
            replay(log5.directory)
        assert (info.value.path, info.value.offset) == (path, 0)
        assert path in str(info.value)


# -- Table level ----------------------------------------------------------------------------------
#
# The template is the exact on-disk state of a writer that died after K appends it did not
# flush: a Lance dataset with 10 flushed rows (LSN 1) and a WAL segment holding frames 2..K+1,
# copied while the writer was still open (a SIGKILL leaves the same bytes: they are in the
# kernel once append returns). Each case copies the template and damages the segment.

BASE = list(range(10))  # seqs flushed before the K appends (one append, LSN 1)
PER = 3  # records per append


def record(seq: int) -> dict[str, Any]:
    return {"seq": seq, "payload": f"p{seq}", "val": seq * 0.5}


def append_seqs(j: int) -> list[int]:
    """Seqs of the j-th unflushed append (LSN 2 + j)."""
    return list(range(100 + PER * j, 100 + PER * (j + 1)))


@dataclass
class TableTemplate:
    root: Path
    segments: dict[str, bytes]  # segment file name -> bytes
    spans: list[tuple[str, int, int]]  # (segment name, offset, length) of the append j frame

    def make_case(self, dest: Path, changed: dict[str, bytes] | None = None) -> str:
        shutil.copytree(self.root / "t.lance", dest / "t.lance")
        (dest / "t.wal").mkdir(parents=True)
        for name, data in {**self.segments, **(changed or {})}.items():
            (dest / "t.wal" / name).write_bytes(data)
        return str(dest / "t.lance")


def _opts(**kw: Any) -> TableOptions:
    return TableOptions(durability="batch", wal_sync_interval=3600, flush_rows=1_000_000, compact_fragments=0, **kw)


def _legacy_commit(uri: str, seqs: list[int], lsn: int) -> None:
    """A commit as the single-writer layout made it: the LSN, no writer id."""
    rows = pa.Table.from_pylist([record(s) for s in seqs])
    mode = "append" if os.path.isdir(uri) else "create"
    lance.write_dataset(rows, uri, mode=mode, data_storage_version="2.2", transaction_properties={LSN_KEY: str(lsn)})


def legacy_applied(uri: str) -> int:
    return writer_applied_lsn(lance.dataset(uri), "")


def build_template(root: Path, *, max_wal_size: int = 1 << 20) -> TableTemplate:
    """A table as the single-writer layout left it after a crash: Lance holds LSN 1 (BASE),
    ``t.wal/`` holds frames 2..K+1 directly (no writer directories). Opening it with this
    version adopts that WAL as writer "" -- the migration path, and the replay rules."""
    _legacy_commit(str(root / "t.lance"), BASE, 1)
    wal_dir = root / "writer" / "t.wal"
    wal_dir.mkdir(parents=True)
    w = WAL(str(wal_dir), next_lsn=2, sync="batch", sync_interval=3600, max_segment_size=max_wal_size)
    try:
        lsns = [w.append(encode_batch(pa.RecordBatch.from_pylist([record(s) for s in append_seqs(j)])))
                for j in range(K)]
        assert lsns == list(range(2, K + 2))
        w.sync()
        segments = {os.path.basename(p): Path(p).read_bytes() for _, p in list_segments(str(wal_dir))}
    finally:
        w.close()
    # locate each frame by walking the segments with the frame lengths
    spans = []
    for name in sorted(segments):
        data, pos = segments[name], HEADER_SIZE
        while pos < len(data):
            (length,) = struct.unpack_from("<I", data, pos)
            spans.append((name, pos, 8 + length))
            pos += 8 + length
    assert len(spans) == K
    return TableTemplate(root, segments, spans)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> TableTemplate:
    tpl = build_template(tmp_path_factory.mktemp("tpl"))
    assert len(tpl.segments) == 1
    return tpl


def _assert_unlocked(wal_dir: Path) -> None:
    fd = os.open(wal_dir / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if a writer leaked it
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _sample(start: int, length: int, stride: int) -> Iterator[int]:
    """Every byte of the frame prefix and of the start of the payload, then every stride-th."""
    offs = set(range(start, min(start + 24, start + length)))
    offs.update(range(start, start + length, stride))
    offs.update(range(max(start, start + length - 3), start + length))
    return iter(sorted(offs))


def expected_seqs(appends: list[int]) -> list[int]:
    return BASE + [s for j in appends for s in append_seqs(j)]


def _scan_seqs(t: Table) -> list[int]:
    rows = t.scan().to_pylist()
    for r in rows:
        assert r == record(r["seq"]), r
    return [r["seq"] for r in rows]


def _check_table_recovers(uri: str, appends: list[int], *, where: str, mode: str = "point_in_time",
                          torn: list[tuple[str, int, int]] | None = None) -> Table:
    t = Table(uri, options=_opts(recovery=mode))
    try:
        assert _scan_seqs(t) == expected_seqs(appends), where
        report = t.recovery_report
        if torn is not None:
            assert [(os.path.basename(x.path), x.offset, x.length) for x in report.torn] == torn, where
        assert legacy_applied(uri) == 1 + (max(appends) + 1 if appends else 0), where
        assert t.applied_lsn == t.last_lsn == 0, where  # this writer has logged nothing yet
    except BaseException:
        t.close()
        raise
    return t


def _check_appends_after_recovery(t: Table, uri: str, appends: list[int], scratch: Path) -> None:
    """New appends after recovery land in the WAL, replay after another crash, and survive a
    clean close + reopen."""
    lsn = t.append([record(500)])
    assert lsn == 1  # the writer's own WAL
    t.sync()
    crashed = scratch / "crashed"  # the state if the writer died right now
    for part in ("t.lance", "t.wal"):
        shutil.copytree(os.path.join(os.path.dirname(uri), part), crashed / part)
    t.close()
    want = expected_seqs(appends) + [500]
    for u in (uri, str(crashed / "t.lance")):
        with Table(u, options=_opts()) as again:
            assert again.recovery_report.torn == [] and again.recovery_report.lost == []
            assert _scan_seqs(again) == want


def test_table_template_is_sound(template: TableTemplate, tmp_path: Path) -> None:
    uri = template.make_case(tmp_path)
    t = _check_table_recovers(uri, list(range(K)), where="undamaged", torn=[])
    _check_appends_after_recovery(t, uri, list(range(K)), tmp_path / "s")


def test_table_torn_tail_sweep(template: TableTemplate, tmp_path: Path) -> None:
    name, start, length = template.spans[-1]
    data = template.segments[name]
    assert start + length == len(data)
    for i, cut in enumerate(_sample(start, length, stride=29)):
        case = tmp_path / f"c{i}"
        uri = template.make_case(case, {name: data[:cut]})
        torn = [] if cut == start else [(name, start, cut - start)]
        t = _check_table_recovers(uri, list(range(K - 1)), where=f"cut at {cut}", torn=torn)
        # the torn segment was cut, replayed, committed and dropped: nothing unapplied is left
        assert [f.lsn for f in read_frames(os.path.join(case, "t.wal"), after_lsn=t.applied_lsn)] == []
        _check_appends_after_recovery(t, uri, list(range(K - 1)), case)
        shutil.rmtree(case)


def test_table_bit_flip_in_last_frame(template: TableTemplate, tmp_path: Path) -> None:
    name, start, length = template.spans[-1]
    data = template.segments[name]
    for i, off in enumerate(_sample(start, length, stride=37)):
        case = tmp_path / f"c{i}"
        uri = template.make_case(case, {name: flip(data, off)})
        t = _check_table_recovers(uri, list(range(K - 1)), where=f"flip at {off}", torn=[(name, start, length)])
        if i % 4 == 0:
            _check_appends_after_recovery(t, uri, list(range(K - 1)), case)
        else:
            t.close()
        shutil.rmtree(case)


@pytest.mark.parametrize("frame", [0, 2])
def test_table_bit_flip_before_tail_raises_then_salvage(template: TableTemplate, tmp_path: Path, frame: int) -> None:
    name, start, length = template.spans[frame]
    data = template.segments[name]
    for i, off in enumerate(_sample(start, length, stride=41)):
        case = tmp_path / f"c{i}"
        damaged = flip(data, off)
        uri = template.make_case(case, {name: damaged})
        seg_path = os.path.join(case, "t.wal", name)
        with pytest.raises(CorruptionError) as info:
            Table(uri, options=_opts())
        msg = str(info.value)
        assert seg_path in msg and f"offset {start}" in msg, msg
        # the failed open changed nothing and released the writer lock
        assert Path(seg_path).read_bytes() == damaged
        _assert_unlocked(case / "t.wal")
        if i % 3:
            shutil.rmtree(case)
            continue
        survivors = [j for j in range(K) if j != frame]
        t = Table(uri, options=_opts(recovery="salvage"))
        try:
            assert _scan_seqs(t) == expected_seqs(survivors), f"flip at {off}"
            lost = t.recovery_report.lost
            assert [(x.path, x.offset, x.length) for x in lost] == [(seg_path, start, length)]
            assert legacy_applied(uri) == 1 + K
        finally:
            t.close()
        # salvage committed what it kept and dropped the damaged segment: a normal open works
        with Table(uri, options=_opts()) as again:
            assert _scan_seqs(again) == expected_seqs(survivors)
            assert again.recovery_report.lost == []
        shutil.rmtree(case)


def test_table_flip_in_sealed_segment(tmp_path: Path) -> None:
    """Frames over several segments; damage at the end of a sealed (non-last) one is corruption."""
    tpl = build_template(tmp_path / "tpl", max_wal_size=1500)
    names = sorted(tpl.segments)
    assert len(names) >= 2
    idx = max(i for i, (s, _, _) in enumerate(tpl.spans) if s == names[0])  # last frame of 1st segment
    name, start, length = tpl.spans[idx]
    for what, data in [("flip", flip(tpl.segments[name], start + length - 1)),
                       ("cut", tpl.segments[name][: start + length // 2])]:
        case = tmp_path / what
        uri = tpl.make_case(case, {name: data})
        with pytest.raises(CorruptionError) as info:
            Table(uri, options=_opts())
        assert os.path.join(case, "t.wal", name) in str(info.value) and f"offset {start}" in str(info.value)
        survivors = [j for j in range(K) if j != idx]
        with Table(uri, options=_opts(recovery="salvage")) as t:
            assert _scan_seqs(t) == expected_seqs(survivors)
            assert [(os.path.basename(x.path), x.offset) for x in t.recovery_report.lost] == [(name, start)]
        with Table(uri, options=_opts()) as again:
            assert _scan_seqs(again) == expected_seqs(survivors)


def test_table_torn_segment_header(template: TableTemplate, tmp_path: Path) -> None:
    """Writer died while creating its next segment: the stub is dropped, every frame replays."""
    name = sorted(template.segments)[-1]
    stub = f"{int(name[:8]) + 1:08d}.wal"
    header = template.segments[name][:HEADER_SIZE]
    for size in (0, 1, 8, 12, HEADER_SIZE - 1):
        case = tmp_path / f"h{size}"
        uri = template.make_case(case, {stub: header[:size]})
        t = _check_table_recovers(uri, list(range(K)), where=f"stub of {size} bytes", torn=[(stub, 0, size)])
        _check_appends_after_recovery(t, uri, list(range(K)), case)


def _salvage_leftover_case(tmp_path: Path, template: TableTemplate, which: str) -> tuple[str, list[int]]:
    """A damaged WAL where salvage has no frame left to replay. Returns (uri, seqs expected).

    ``applied``: the state of a writer killed after its flush's fsync (Lance holds LSN K+1, the
    WAL still holds frames 2..K+1), then a bit flip in frame 3 (already applied: nothing is
    really lost). ``unapplied``: Lance holds LSN K, so the last frame is the only unapplied one;
    it is damaged and a newer writer had already opened a segment after it (so it is not a
    torn tail): salvage loses that frame and has nothing else to replay.
    """
    applied_appends = K if which == "applied" else K - 1
    work = tmp_path / "writer"
    _legacy_commit(str(work / "t.lance"), BASE, 1)
    _legacy_commit(str(work / "t.lance"), [s for j in range(applied_appends) for s in append_seqs(j)],
                   1 + applied_appends)
    assert legacy_applied(str(work / "t.lance")) == 1 + applied_appends
    # the template's WAL segment holds frames 2..K+1 of the very same appends
    (name,) = template.segments
    flip_at = template.spans[1][1] + 30 if which == "applied" else template.spans[-1][1] + 30
    case = tmp_path / "case"
    shutil.copytree(work / "t.lance", case / "t.lance")
    (case / "t.wal").mkdir()
    (case / "t.wal" / name).write_bytes(flip(template.segments[name], flip_at))
    if which == "unapplied":
        WAL(str(case / "t.wal"), next_lsn=K + 2).close()  # the newer writer's (empty) segment
    return str(case / "t.lance"), expected_seqs(list(range(applied_appends)))


@pytest.mark.parametrize("which", ["applied", "unapplied"])
def test_normal_open_after_salvage_works(template: TableTemplate, tmp_path: Path, which: str) -> None:
    uri, want = _salvage_leftover_case(tmp_path, template, which)
    if which == "applied":
        # the damaged frame is provably applied: a normal open neither refuses nor loses
        with Table(uri, options=_opts()) as t:
            assert _scan_seqs(t) == want
            assert t.recovery_report.lost == [] and len(t.recovery_report.damaged_applied) == 1
    else:
        with pytest.raises(CorruptionError):
            Table(uri, options=_opts())
        with Table(uri, options=_opts(recovery="salvage")) as t:
            assert _scan_seqs(t) == want
            assert len(t.recovery_report.lost) == 1
    # salvage is a one-time repair: afterwards the table opens normally
    with Table(uri, options=_opts()) as again:
        assert _scan_seqs(again) == want
