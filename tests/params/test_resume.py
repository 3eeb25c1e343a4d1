"""Resume is bit-exact: a fresh process restoring step 10 reproduces steps 11-20 exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = os.path.join(os.path.dirname(__file__), "train_child.py")


def _run(path: str, mode: str) -> list[str]:
    proc = subprocess.run([sys.executable, _SCRIPT, path, mode], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_resume_in_new_process_is_bit_exact(store_path: str) -> None:
    full = _run(store_path, "full")
    resumed = _run(store_path, "resume")
    assert len(full) == 20 and len(resumed) == 10
    assert resumed == full[10:]
    # the losses move: the test would be vacuous on a constant loss
    assert len(set(full)) > 10


def test_empty_store_has_nothing_to_resume(store_path: str) -> None:
    from persisting.errors import NotFoundError
    from persisting.params import ParamStore

    with ParamStore(store_path) as store, pytest.raises(NotFoundError):
        store.load()
