"""A plain progress bar on stderr: redrawn in place on a terminal, a line now and then otherwise.

Long commands (verify, export, compact, gc) report through it per table and per chunk of rows,
so an operator watching a large store sees where the work is; stdout stays for results.
"""

from __future__ import annotations

import sys
import time
from typing import Self, TextIO

__all__ = ["Progress"]

_TTY_EVERY = 0.1  # seconds between redraws on a terminal
_LOG_EVERY = 5.0  # seconds between lines in a log (also one line per tenth of the work and per label)


class Progress:
    """``with Progress(total, "compact") as bar: bar.step("table")`` draws ``[####    ] 3/8 label``;
    ``bar.advance(rows, "table")`` counts units of work (rows) done within a step."""

    def __init__(self, total: int, title: str, *, unit: str = "", stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total, 0)
        self.title = title
        self.unit = unit
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = time.monotonic()
        self._last = 0.0
        self._label: str | None = None
        self._tenth = -1

    def step(self, label: str = "") -> None:
        """Mark one unit of work as started (``label`` names it)."""
        self._draw(label)
        self.done += 1

    def advance(self, n: int, label: str = "") -> None:
        """Count ``n`` more units done (``n`` may be 0 to announce ``label``); draws when the
        label changes, another tenth is done, or enough time has passed."""
        self.done += n
        tenth = 10 * self.done // self.total if self.total else 10
        now = time.monotonic()
        if label != self._label or tenth != self._tenth or now - self._last >= (_TTY_EVERY if self.tty else _LOG_EVERY):
            self._draw(label)

    def _draw(self, label: str) -> None:
        self._label, self._last = label, time.monotonic()
        self._tenth = 10 * self.done // self.total if self.total else 10
        filled = min(self.width, self.width * self.done // self.total) if self.total else self.width
        bar = "#" * filled + " " * (self.width - filled)
        unit = f" {self.unit}" if self.unit else ""
        line = f"{self.title} [{bar}] {self.done}/{self.total}{unit} {label}"
        try:
            if self.tty:
                self.stream.write("\r\x1b[2K" + line)
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # nobody is watching any more: the work goes on
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._draw(f"done in {time.monotonic() - self._start:.1f}s")
        if self.tty:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                pass
