"""Every ```python block of README.md runs as written, each in a fresh interpreter in its own
temporary directory, so the README stays true. A block preceded by an HTML comment
``<!-- not-run: reason -->`` is skipped (blocks that need a cluster, torchrun, vLLM or a
caller's variables); the reason is required."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"(?P<before>(?:<!--[^\n]*-->\n)?)```python\n(?P<code>.*?)```", re.S)
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->")


def _blocks() -> list[tuple[str, str, str | None]]:
    """(id, code, skip reason or None) for every python block, in README order."""
    text = README.read_text()
    out = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code"))
        heading = [h for h in re.findall(r"^#+ (.*)$", text[: m.start()], re.M)][-1:] or ["top"]
        skip = _NOT_RUN.search(m.group("before"))
        out.append((f"line{line}-{re.sub(r'[^A-Za-z0-9]+', '-', heading[0]).strip('-')[:30]}", m.group("code"),
                    skip.group("reason") if skip else None))
    return out


BLOCKS = _blocks()


def test_readme_has_blocks_and_every_skip_has_a_reason() -> None:
    text = README.read_text()
    assert len(BLOCKS) >= 8
    assert text.count("<!-- not-run") == sum(1 for _, _, r in BLOCKS if r), "a not-run comment must sit right above its block"


@pytest.mark.parametrize("code,reason", [(c, r) for _, c, r in BLOCKS], ids=[i for i, _, _ in BLOCKS])
def test_readme_block_runs(code: str, reason: str | None, tmp_path: Path) -> None:
    if reason:
        pytest.skip(f"not-run: {reason}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=240, check=False)
    if proc.returncode == -6 and "PyGILState_Release" in proc.stderr and "pulsing" in code:
        # known: Pulsing 0.1.2 sometimes aborts at interpreter exit after the block has run
        # (about 1 run in 3); only that abort is excused: the block itself must have finished
        # without an exception and printed its result
        assert "Traceback" not in proc.stderr, f"README block raised before the exit abort:\n{proc.stderr[-4000:]}"
        assert proc.stdout.strip(), "README block printed nothing before the exit abort"
        pytest.xfail("Pulsing aborted at interpreter exit (PyGILState_Release), after the block ran")
    assert proc.returncode == 0, f"README block failed ({proc.returncode}):\n{code}\n--- stderr ---\n{proc.stderr[-4000:]}"
