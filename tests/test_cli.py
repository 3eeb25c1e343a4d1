"""The `persisting` command, run as a real subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_recovers_every_acknowledged_record(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "persisting.cli", "demo", "--path", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"records recovered after the kill\s+500 of 500", out.stdout), out.stdout
    assert re.search(r"records read back\s+300 of 300", out.stdout), out.stdout
    assert re.search(r"generated tokens equal a fresh run\s+yes", out.stdout), out.stdout
    assert re.search(r"equal an uninterrupted run\s+yes, bit for bit", out.stdout), out.stdout
    assert re.search(r"actions identical to the env's\s+30 of 30", out.stdout), out.stdout
    assert "FAILED" not in out.stdout and "skipped" not in out.stdout
    assert re.search(r"duplicates\s+0\b", out.stdout), out.stdout
    assert (tmp_path / "demo" / "engine" / "events.lance" / "_versions").is_dir()


def test_help_and_unknown_command() -> None:
    ok = subprocess.run([sys.executable, "-m", "persisting.cli", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "demo" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "persisting.cli", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2
