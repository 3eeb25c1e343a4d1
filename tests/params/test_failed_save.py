"""A save that fails (here: the disk refuses the write, as when it is full) leaves nothing
behind that a later save could deduplicate against. The failed save's pending chunks point into
the caller's tensors; training then changes those tensors in place, and a later commit would
have stored the new bytes under the old content keys: a later checkpoint holding a tensor with
the old content (all zeros, say) referenced a corrupt chunk and could not be loaded.

The fault is real: a child process lowers RLIMIT_FSIZE, so Lance's blob write fails with EFBIG.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from persisting.engine import Table, TableOptions
from persisting.errors import ConfigError
from persisting.params import ParamStore

_CHILD = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from persisting.params import ParamStore
    from persisting.errors import StorageError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = ParamStore(sys.argv[1])
    store.save({"w": torch.ones(8)}, step=1)
    state = torch.zeros(1 << 20)                       # 4 MiB of zeros, e.g. a fresh optimizer moment
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        store.save({"opt": state}, step=2)
        sys.exit("the save succeeded under a 1 MiB file size limit")
    except StorageError as exc:
        print("failed as expected:", exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    state.add_(1.0)                                    # training goes on, in place
    store.save({"bias": torch.zeros(1 << 20), "opt": state}, step=3)
    store.close()
    """
)


def test_failed_save_leaves_nothing_a_later_save_reuses(tmp_path: Path) -> None:
    path = str(tmp_path / "ckpt")
    proc = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failed as expected" in proc.stdout
    with ParamStore(path, read_only=True) as store:
        assert [i.step for i in store.list()] == [1, 3]
        out = store.load(3)
        assert torch.equal(out["bias"], torch.zeros(1 << 20))
        assert torch.equal(out["opt"], torch.ones(1 << 20))
    report = subprocess.run(["persisting", "verify", path], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr


def test_discard_pending_only_where_nothing_was_acknowledged(tmp_path: Path) -> None:
    with Table(str(tmp_path / "a.lance"), options=TableOptions(durability="none")) as t:
        t.append([{"x": 1}])
        t.flush()
        t.append([{"x": 2}, {"x": 3}])
        assert t.discard_pending() == 2
        assert t.count() == 1 and t.flush() >= 0 and t.count() == 1
    with Table(str(tmp_path / "b.lance"), options=TableOptions(durability="batch")) as t:
        t.append([{"x": 1}])
        with pytest.raises(ConfigError, match="cannot be discarded"):
            t.discard_pending()
        assert t.count() == 1
