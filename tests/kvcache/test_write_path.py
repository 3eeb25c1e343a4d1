"""KV put's pipelined write path (a group staged while the one before commits): an acknowledged
put survives kill -9, a kill between group commits leaves a whole prefix (parents before
children, nothing orphaned), and damage to a stored payload is found by verify and never
served. Real processes, real SIGKILLs, real Lance files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from persisting.kvcache import KVCacheStore
from persisting.ops.verify import verify

CHUNK, N_TOKENS = 4, 40  # ten chunks of 128 KiB; the child groups two chunks per commit: five commits


def _kv() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((2, N_TOKENS, 4096)).astype(np.float32)


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import persisting.kvcache.store as ks
    from persisting.kvcache import KVCacheStore
    ks._APPEND_BYTES = 256 * 1024  # two chunks per group, so one put is five pipelined commits
    kv = np.random.default_rng(7).standard_normal((2, {n}, 4096)).astype(np.float32)
    s = KVCacheStore(sys.argv[1], namespace="m", chunk_size={chunk})
    s.put(np.arange({n}), kv)
    print("ACK", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
).format(n=N_TOKENS, chunk=CHUNK)


def _run(root: Path, kill_point: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if kill_point is not None:
        env["PERSISTING_KILL_POINT"] = kill_point
    return subprocess.run([sys.executable, "-c", _CHILD, str(root)], capture_output=True, text=True, env=env, timeout=120)


def test_acknowledged_put_survives_kill_9(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == -signal.SIGKILL and "ACK" in proc.stdout, proc.stderr
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CHUNK) as s:
        assert s.lookup(np.arange(N_TOKENS)) == N_TOKENS
        assert np.array_equal(s.get(np.arange(N_TOKENS)), _kv())
    report = verify(str(tmp_path))
    assert report.healthy, [f.message for f in report.problems]
    assert report.payloads >= N_TOKENS // CHUNK


def test_kill_between_group_commits_leaves_a_whole_prefix(tmp_path: Path) -> None:
    proc = _run(tmp_path, kill_point="after_fsync")  # dies in the commit thread, after the first group
    assert proc.returncode == -signal.SIGKILL and "ACK" not in proc.stdout, proc.stderr
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CHUNK) as s:
        n = s.lookup(np.arange(N_TOKENS))
        assert n == 2 * CHUNK  # the first group only: later groups never commit before it
        assert len(s) == 2 and np.array_equal(s.get(np.arange(N_TOKENS)), _kv()[:, :n])
        s.put(np.arange(N_TOKENS), _kv())  # the rest is written again, nothing twice
        assert len(s) == N_TOKENS // CHUNK and np.array_equal(s.get(np.arange(N_TOKENS)), _kv())
    assert verify(str(tmp_path)).healthy


def test_damaged_payload_is_found_by_verify_and_never_served(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    table = tmp_path / "m.lance"
    # flip one byte in the middle of one payload's blob file (under data/<fragment>/)
    files = sorted(p for p in (table / "data").rglob("*.blob"))
    assert files  # 128 KiB payloads live in .blob files, read by the engine's preadv path
    victim = files[len(files) // 2]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    report = verify(str(tmp_path))
    assert not report.healthy
    assert any("fails its checksum" in f.message or str(victim.name) in f.message for f in report.problems)
    expected = _kv()
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CHUNK, read_only=True) as s:
        got = s.get(np.arange(N_TOKENS))
        # a prefix, never wrong bytes: the damaged chunk and everything after it are a miss
        assert got is None or (got.shape[1] < N_TOKENS and np.array_equal(got, expected[:, : got.shape[1]]))
