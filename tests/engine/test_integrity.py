"""Digests of committed files (engine/integrity.py) and typed errors from damaged tables."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from persisting.engine import Table, TableOptions, integrity
from persisting.errors import ConfigError, CorruptionError, PersistingError
from persisting.ops.verify import verify


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def _int_table(path: Path, n: int = 3) -> str:
    uri = str(path / "t.lance")
    with Table(uri, options=TableOptions(durability="none")) as t:
        for i in range(n):
            t.append([{"k": i, "name": f"name-{i}"}])
            t.flush()
    return uri


def _value_offset(path: str, value: bytes) -> int:
    data = open(path, "rb").read()
    at = data.find(value)
    assert at >= 0, f"{value!r} not found in {path}"
    return at


def test_every_commit_records_its_files_and_the_sidecar_is_invisible_to_lance(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri, options=TableOptions(durability="none")) as t:
        for i in range(4):
            t.append([{"k": i, "blob_like": "x" * 10}])
            t.flush()
        t.delete("k = 1")
        t.tag("keep")
        t.compact()
        removed = t.cleanup()
        assert removed > 0
        t.append([{"k": 9, "blob_like": "y"}])
    recorded = integrity.load(uri)
    assert recorded
    on_disk = {os.path.relpath(p, uri) for p in glob.glob(uri + "/**/*", recursive=True) if os.path.isfile(p)}
    committed = {r for r in on_disk if integrity.is_immutable(r)}
    assert committed == set(recorded), "every committed file recorded, cleanup's removals pruned"
    for rel, digest in recorded.items():
        assert integrity.check_file(uri, rel, digest, cache=False) is None
    ds = lance.dataset(uri)  # Lance opens, checks out and lists versions with the sidecar present
    assert sorted(ds.to_table().column("k").to_pylist()) == [0, 2, 3, 9]
    assert ds.checkout_version("keep").count_rows() == 3
    assert verify(str(tmp_path)).healthy


def test_a_flipped_integer_is_a_corruption_error_not_data(tmp_path: Path) -> None:
    uri = _int_table(tmp_path)
    data = sorted(glob.glob(uri + "/data/*.lance"))
    target = next(p for p in data if b"name-1" in open(p, "rb").read())
    _flip(target, _value_offset(target, b"name-1") + 5)  # "name-1" -> "name-0": valid, wrong
    integrity.forget()
    with pytest.raises(CorruptionError) as err:
        Table(uri, read_only=True)
    assert os.path.basename(target) in str(err.value)
    report = verify(str(tmp_path))
    assert not report.healthy and any(os.path.basename(target) in f.path for f in report.problems)


def test_a_deleted_newest_manifest_is_noticed_not_a_silent_rollback(tmp_path: Path) -> None:
    uri = _int_table(tmp_path)
    newest = max(glob.glob(uri + "/_versions/*.manifest"), key=lambda p: integrity.manifest_version(
        os.path.relpath(p, uri)) or 0)
    os.unlink(newest)
    with pytest.raises(CorruptionError, match="manifest for version 3 is missing"):
        Table(uri, read_only=True)
    assert not verify(str(tmp_path)).healthy


def test_a_damaged_digest_record_is_named(tmp_path: Path) -> None:
    uri = _int_table(tmp_path)
    record = sorted(glob.glob(uri + "/_persisting/digests/*.json"))[0]
    _flip(record, 30)
    integrity.forget()
    with pytest.raises(CorruptionError, match="digest record"):
        Table(uri, read_only=True)
    assert not verify(str(tmp_path)).healthy


def test_truncated_data_file_is_a_corruption_error_on_every_read(tmp_path: Path) -> None:
    uri = _int_table(tmp_path)
    t = Table(uri, read_only=True)  # opened (and verified) before the damage
    target = sorted(glob.glob(uri + "/data/*.lance"))[0]
    with open(target, "r+b") as f:
        f.truncate(100)
    integrity.forget()  # another process, which has not seen the file yet
    with pytest.raises(CorruptionError) as err:
        t.scan()
    assert os.path.basename(target) in str(err.value)
    with pytest.raises(CorruptionError):
        list(t.iter_batches())
    t.close()


def test_malformed_filters_are_config_errors_naming_the_filter(tmp_path: Path) -> None:
    uri = _int_table(tmp_path)
    with Table(uri, read_only=True) as t:
        for bad in ("k >>= 3", "nope = 1", "k = 'x'", "name LIKE"):
            with pytest.raises(ConfigError, match="filter"):
                t.scan(filter=bad)
            with pytest.raises(ConfigError):
                t.count(filter=bad)
            with pytest.raises(ConfigError):
                list(t.iter_batches(filter=bad))
        assert t.count(filter="k > 0") == 2


def test_old_tables_without_digests_still_open(tmp_path: Path) -> None:
    uri = _int_table(tmp_path)
    import shutil

    shutil.rmtree(os.path.join(uri, "_persisting"))
    with Table(uri, read_only=True) as t:
        assert t.count() == 3
    report = verify(str(tmp_path))
    assert report.healthy and any("no digests" in w.message for w in report.warnings)


class PanicException(BaseException):
    """What pyo3 raises for a Rust panic (``pyo3_runtime.PanicException``): not an Exception."""


def test_rust_panics_are_typed_and_interrupts_pass(tmp_path: Path) -> None:
    from persisting.engine.lance_io import lance_errors

    uri = _int_table(tmp_path)
    with pytest.raises(CorruptionError, match="unwrap"):
        with lance_errors(uri, "rows"):
            raise PanicException("called `Result::unwrap()` on an `Err` value")
    with pytest.raises(KeyboardInterrupt):
        with lance_errors(uri, "rows"):
            raise KeyboardInterrupt


def test_errors_from_a_sweep_of_one_table_are_all_typed(tmp_path: Path) -> None:
    """Every byte-flip of the newest manifest: a typed error or the exact rows, never others."""
    uri = _int_table(tmp_path)
    with Table(uri, read_only=True) as t:
        expected = t.scan().to_pylist()
    manifest = min(glob.glob(uri + "/_versions/*.manifest"))  # V2 names count down: the newest
    size = os.path.getsize(manifest)
    original = open(manifest, "rb").read()
    for off in range(0, size, max(1, size // 40)):
        _flip(manifest, off)
        integrity.forget()
        try:
            with Table(uri, read_only=True) as t:
                assert t.scan().to_pylist() == expected, f"offset {off}: wrong rows served"
        except PersistingError:
            pass
        open(manifest, "wb").write(original)


def _blob_table(path: Path, declared: bool) -> tuple[str, list[bytes]]:
    """A table whose blob column carries an xxh3-128 per payload (declared or by the X__xxh3 rule)."""
    import xxhash

    from persisting.engine.payloads import PayloadColumn

    uri = str(path / "b.lance")
    payloads = [bytes([i]) * ((1 << 20) + 4096 * i) for i in range(4)]
    check = "sum" if declared else "data__xxh3"
    schema = pa.schema([pa.field("k", pa.int64()), pa.field(check, pa.binary()),
                        pa.field("data", pa.large_binary(), metadata={"lance-encoding:blob": "true"})])
    with Table(uri, options=TableOptions(durability="none"), schema=schema) as t:
        if declared:
            t.payloads = (PayloadColumn("data", "sum"),)
        for part in (payloads[:3], payloads[3:]):
            t.append([{"k": len(p), check: xxhash.xxh3_128_digest(p), "data": p} for p in part])
            t.flush()
    return uri, payloads


@pytest.mark.parametrize("declared", [True, False])
def test_blob_files_are_recorded_from_payload_checksums_and_damage_is_still_found(tmp_path: Path, declared: bool) -> None:
    uri, payloads = _blob_table(tmp_path, declared)
    recorded = integrity.load(uri)
    assert recorded is not None
    blobs = sorted(r for r in recorded if r.endswith(".blob"))
    assert len(blobs) == 2
    # recorded without reading the files back: from the payload checksums, in file order
    assert all(recorded[r][1].startswith("seg:") for r in blobs)
    assert recorded[blobs[0]][0] + recorded[blobs[1]][0] == sum(len(p) for p in payloads)
    assert not [f for f in verify(str(tmp_path)).findings if f.severity == "problem"]
    for rel in blobs:
        assert integrity.check_file(uri, rel, recorded[rel], cache=False) is None

    first = os.path.join(uri, blobs[0])
    _flip(first, (1 << 20) + 100)  # inside the second payload of the file
    problem = integrity.check_file(uri, blobs[0], recorded[blobs[0]], cache=False)
    assert problem is not None and first in problem
    assert any(f.severity == "problem" and f.path == first for f in verify(str(tmp_path)).findings)
    _flip(first, (1 << 20) + 100)
    assert integrity.check_file(uri, blobs[0], recorded[blobs[0]], cache=False) is None
    with open(first, "ab") as f:
        f.write(b"x")  # one byte more than its payloads: not the committed file
    size = recorded[blobs[0]][0]
    assert integrity.check_file(uri, blobs[0], (size + 1, recorded[blobs[0]][1]), cache=False) is not None


def test_blob_files_without_payload_checksums_are_hashed_from_disk(tmp_path: Path) -> None:
    uri = str(tmp_path / "p.lance")
    schema = pa.schema([pa.field("k", pa.int64()),
                        pa.field("data", pa.large_binary(), metadata={"lance-encoding:blob": "true"})])
    with Table(uri, options=TableOptions(durability="none"), schema=schema) as t:
        t.append([{"k": 1, "data": b"z" * (1 << 20)}])
        t.flush()
    recorded = integrity.load(uri) or {}
    blobs = [r for r in recorded if r.endswith(".blob")]
    assert blobs and not recorded[blobs[0]][1].startswith("seg:")
