"""Helpers shared by the ParamStore tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

torch = pytest.importorskip("torch")


def run_child(code: str, *, env: dict[str, str] | None = None, timeout: float = 120, expect_kill: bool = False) -> Any:
    """Run ``code`` in a fresh interpreter (Lance is not fork-safe); return the JSON it printed
    last, or the return code when the child is expected to die by SIGKILL."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True,
        env=full_env, timeout=timeout,
    )
    if expect_kill:
        assert proc.returncode == -9, f"child was not killed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc.returncode
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def child() -> Any:
    return run_child


@pytest.fixture
def store_path(tmp_path: Any) -> str:
    return str(tmp_path / "ckpt")
