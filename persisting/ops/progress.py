"""A plain progress bar on stderr: redrawn in place on a terminal, one line per step otherwise."""

from __future__ import annotations

import sys
import time
from typing import Self, TextIO

__all__ = ["Progress"]


class Progress:
    """``with Progress(total, "compact") as bar: bar.step("table")`` draws ``[####    ] 3/8 label``."""

    def __init__(self, total: int, title: str, *, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total, 0)
        self.title = title
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = time.monotonic()

    def step(self, label: str = "") -> None:
        """Mark one unit of work as started (``label`` names it)."""
        self._draw(label)
        self.done += 1

    def _draw(self, label: str) -> None:
        filled = self.width * self.done // self.total if self.total else self.width
        bar = "#" * filled + " " * (self.width - filled)
        line = f"{self.title} [{bar}] {self.done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._draw(f"done in {time.monotonic() - self._start:.1f}s")
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
