"""A power-loss simulator for the crash tests: only fsynced bytes survive.

``shim.c`` is compiled at test time into an ``LD_PRELOAD`` library. In a child run with
:meth:`PowerCut.env`, every ``fsync``/``fdatasync`` under the watched root snapshots the
file's bytes (or the directory's entries) into a shadow store before it returns. After the
child is SIGKILLed at a random moment, :meth:`PowerCut.materialise` builds the disk a power
cut would leave: start at the root (assumed durable itself), follow each directory's last
fsynced listing, give each file its last fsynced bytes (empty if it never was fsynced).

Writes that bypass fsync (``O_SYNC`` opens, ``sync()``/``syncfs()``, ``sync_file_range``)
are not modelled as durable: the model is strict, so it may report a loss that a kinder disk
would hide, never hide one. Both Python's ``os.fsync`` and Lance's Rust code reach fsync
through glibc's dynamic symbols, which the shim interposes (``test_shim_sees_*`` checks).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import struct
import subprocess
import threading
from dataclasses import dataclass, field

__all__ = ["Event", "PowerCut", "build_shim", "run_until_cut"]

HERE = os.path.dirname(os.path.abspath(__file__))
_built: dict[str, str] = {}


def build_shim(workdir: str) -> str:
    """Compile shim.c once per test session; return the .so path (raises if gcc fails)."""
    if "so" in _built and os.path.exists(_built["so"]):
        return _built["so"]
    out = os.path.join(workdir, "pcut_shim.so")
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-Wno-format-truncation", "-o", out, os.path.join(HERE, "shim.c"),
         "-ldl", "-lpthread"],
        check=True,
        capture_output=True,
    )
    _built["so"] = out
    return out


@dataclass(frozen=True)
class Event:
    """One fsync seen by the shim, in the global order the shim took its lock."""

    pid: int
    tid: int
    call: str
    kind: str  # "file" or "dir"
    path: str


@dataclass
class PowerCut:
    """A watched ``root`` and the shadow store the shim writes what fsync made durable into."""

    root: str
    shadow: str
    shim: str
    _dev: int = field(default=0, repr=False)
    _root_key: tuple[int, int] = field(default=(0, 0), repr=False)
    last_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        st = os.stat(self.root)
        self._dev = st.st_dev
        self._root_key = (st.st_ino, _btime(self.root))

    @classmethod
    def create(cls, base: str, shim: str) -> PowerCut:
        root = os.path.join(base, "disk")
        shadow = os.path.join(base, "shadow")
        os.makedirs(root)
        os.makedirs(shadow)
        return cls(os.path.realpath(root), os.path.realpath(shadow), shim)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"LD_PRELOAD": self.shim, "PCUT_ROOT": self.root, "PCUT_SHADOW": self.shadow})
        env.update(extra or {})
        return env

    def events(self) -> list[Event]:
        path = os.path.join(self.shadow, "events.log")
        if not os.path.exists(path):
            return []
        out = []
        with open(path) as f:
            for line in f:
                pid, tid, call, kind, p = line.rstrip("\n").split(" ", 4)
                out.append(Event(int(pid), int(tid), call, kind, p))
        return out

    def _key(self, prefix: str, ino: int, btime: int) -> str:
        return os.path.join(self.shadow, f"{prefix}_{self._dev}_{ino}_{btime}")

    def materialise(self, dest: str) -> dict[str, int]:
        """Write the crash image of the root into ``dest`` (created); return counts of what
        survived: ``files``, ``dirs``, ``empty_files`` (listed but never fsynced)."""
        counts = {"files": 0, "dirs": 0, "empty_files": 0}
        os.makedirs(dest)
        self._copy_dir(self._key("d", *self._root_key), dest, counts)
        return counts

    def _copy_dir(self, listing: str, dest: str, counts: dict[str, int]) -> None:
        if not os.path.exists(listing):
            return  # never fsynced: the directory exists (its parent says so) but is empty
        with open(listing) as f:
            entries = [line.rstrip("\n").split(" ", 3) for line in f]
        for kind, ino, btime, name in entries:
            target = os.path.join(dest, name)
            if kind == "d":
                os.mkdir(target)
                counts["dirs"] += 1
                self._copy_dir(self._key("d", int(ino), int(btime)), target, counts)
            elif kind == "f":
                src = self._key("f", int(ino), int(btime))
                if os.path.exists(src):
                    shutil.copyfile(src, target)
                    counts["files"] += 1
                else:
                    open(target, "wb").close()
                    counts["empty_files"] += 1

    def cut_over(self) -> str:
        """Replace the root with its crash image (same path, so stored paths still hold);
        the pre-crash tree is kept beside it for debugging. Returns the root."""
        old = self.root + ".before-cut"
        os.rename(self.root, old)
        image = self.root + ".image"
        counts = self.materialise(image)
        os.rename(image, self.root)
        self.last_counts = counts
        return self.root


def _btime(path: str) -> int:
    """The birth time in ns, as the shim keys it (0 when the filesystem reports none)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statx(-100, os.fsencode(path), 0, 0x800 | 0x100, buf) != 0:  # AT_FDCWD, BTIME|INO
        raise OSError(ctypes.get_errno(), f"statx {path}")
    mask = struct.unpack_from("<I", buf, 0)[0]
    if not mask & 0x800:
        return 0
    sec, nsec = struct.unpack_from("<qI", buf, 80)
    return sec * 1_000_000_000 + nsec


_libc = ctypes.CDLL(None, use_errno=True)


def run_until_cut(argv: list[str], env: dict[str, str], cut_after: float, *, ready: str = "GO",
                  timeout: float = 60.0, after: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """Run a child, SIGKILL it ``cut_after`` seconds after it prints ``ready`` -- or, with
    ``after``, after its first line starting with one of those prefixes (its first
    acknowledgement, so a loaded machine cannot make every cut land before any) -- unless the
    shim killed it first at ``PCUT_KILL_AT``; return every line it printed and its exit code."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()
    acked = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(ready):
                started.set()
            if after and line.startswith(after):
                acked.set()
        started.set()
        acked.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not started.wait(timeout):
        proc.kill()
        raise TimeoutError(f"child {argv} never printed {ready}")
    if after:
        acked.wait(timeout)
    try:
        proc.wait(cut_after)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
    rc = proc.wait(timeout)
    reader.join(timeout)
    err = proc.stderr.read() if proc.stderr else ""
    if rc not in (0, -signal.SIGKILL):
        raise RuntimeError(f"child {argv} failed with {rc}:\n{err[-4000:]}")
    return lines, rc

