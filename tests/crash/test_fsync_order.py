"""The order of fsyncs around a commit and a new WAL, read from the power-cut shim's log
(always) and from ``strace`` (when installed).

A power cut between two fsyncs keeps the first and loses the second, so order is the whole
guarantee: a commit's data files and their directories must be durable before its manifest
and the ``_versions`` directory that names it, and a new WAL directory's entry in its parent
before the first ``always`` append is acknowledged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from powercut import PowerCut, build_shim  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the power-cut shim")

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "powercut", "child.py")
Step = tuple[str, str]  # ("mark", name) or ("file" | "dir", path relative to the root)


def check_order(steps: list[Step]) -> None:
    """Assert the durable-ordering rules over one child's fsyncs and marks."""
    marks = {name: i for i, (kind, name) in enumerate(steps) if kind == "mark"}
    assert {"open", "ack0", "commit0", "ack1", "commit1"} <= set(marks), marks

    def index(lo: int, hi: int, pred: object) -> list[int]:
        return [i for i in range(lo, hi) if steps[i][0] != "mark" and pred(steps[i])]  # type: ignore[operator]

    # a new writer WAL (t.wal/writers/<id>/): segment, its directory, the directories holding
    # it, all before the first ack
    first = marks["ack0"]
    seg = re.compile(r"t\.wal/writers/[0-9a-f]+/00000001\.wal$")
    own = re.compile(r"t\.wal/writers/[0-9a-f]+$")
    assert index(0, first, lambda s: s[0] == "file" and seg.match(s[1])), "new segment not fsynced before ack"
    assert index(0, first, lambda s: s[0] == "dir" and own.match(s[1])), "writer WAL directory not fsynced before ack"
    assert index(0, first, lambda s: s == ("dir", "t.wal/writers")), "writers directory not fsynced before ack"
    assert index(0, first, lambda s: s == ("dir", "t.wal")), "WAL directory not fsynced before ack"
    assert index(0, first, lambda s: s == ("dir", "")), (
        "the new WAL directory's entry in its parent was not fsynced before the first 'always' append "
        f"was acknowledged: {steps[:first]}"
    )
    for n, (lo, hi) in enumerate(((marks["ack0"], marks["commit0"]), (marks["ack1"], marks["commit1"]))):
        data = index(lo, hi, lambda s: s[1].startswith("t.lance/data/") or s == ("dir", "t.lance/data"))
        manifest = index(lo, hi, lambda s: s[0] == "file" and s[1].startswith("t.lance/_versions/")
                         and s[1].endswith(".manifest"))
        versions = index(lo, hi, lambda s: s == ("dir", "t.lance/_versions"))
        window = steps[lo:hi]
        assert data and manifest and versions, f"commit {n}: expected data, manifest and _versions fsyncs: {window}"
        assert max(data) < min(manifest + versions), (
            f"commit {n}: a data file or the data directory is fsynced after the manifest or _versions: {window}"
        )
        if n == 0:  # the dataset directory is new: its entry in the root follows everything in it
            root = index(lo, hi, lambda s: s == ("dir", ""))
            assert root and min(root) > max(versions), f"commit 0: dataset entry in its parent not last: {window}"


def shim_steps(pc: PowerCut, out: str) -> list[Step]:
    """Interleave the shim's events with the child's marks (each mark counts events so far)."""
    events = [("file" if e.kind == "file" else "dir", os.path.relpath(e.path, pc.root).removeprefix("."))
              for e in pc.events()]
    steps: list[Step] = []
    done = 0
    for line in out.splitlines():
        if line.startswith("MARK "):
            _, name, n = line.split()
            steps.extend(events[done:int(n)])
            done = int(n)
            steps.append(("mark", name))
    steps.extend(events[done:])
    return steps


def test_fsync_order_from_shim_log(tmp_path) -> None:
    pc = PowerCut.create(str(tmp_path), build_shim(str(tmp_path)))
    out = subprocess.run([sys.executable, CHILD, "order", pc.root, "0"], env=pc.env(), capture_output=True,
                         text=True, check=True).stdout
    check_order(shim_steps(pc, out))


_STRACE = re.compile(r'^\d+\s+(fsync|fdatasync|write)\((\d+)<([^>]*)>(?:, "(.*?)")?')


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_fsync_order_under_strace(tmp_path) -> None:
    """The same rules read from the kernel's side, and proof that the shim sees every fsync
    (Python's and Lance's Rust code both reach it through glibc): strace's list of fsyncs
    under the root equals the shim's."""
    pc = PowerCut.create(str(tmp_path), build_shim(str(tmp_path)))
    trace = str(tmp_path / "trace")
    subprocess.run(["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,write", "-o", trace,
                    sys.executable, CHILD, "order", pc.root, "0"], env=pc.env(), capture_output=True, check=True)
    steps: list[Step] = []
    with open(trace) as f:
        for line in f:
            m = _STRACE.match(line)
            if not m:
                continue
            call, fd, path, text = m.groups()
            if call == "write":
                if fd == "1" and text and text.startswith("MARK "):
                    steps.append(("mark", text.split()[1]))
            elif path == pc.root or path.startswith(pc.root + "/"):
                # a writer's WAL directory is removed at its clean close: a vanished name
                # without an extension was a directory
                gone_dir = not os.path.exists(path) and "." not in os.path.basename(path).lstrip(".")
                kind = "dir" if os.path.isdir(path) or path == pc.root or gone_dir else "file"
                steps.append((kind, os.path.relpath(path, pc.root).removeprefix(".")))
    check_order(steps)
    seen = [s for s in steps if s[0] != "mark"]
    shim = [s for s in shim_steps(pc, "") if s[0] != "mark"]
    assert seen == shim, "the shim missed (or invented) fsyncs that strace saw"
