"""``persisting demo``: each store run end to end on local disk, printed in plain words.

One module per store; each exposes ``run(root: str) -> None`` and needs only its own extras.
A demo whose extra is missing is skipped with the pip command that adds it.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable, Sequence

__all__ = ["DEMOS", "run_all", "table"]


def table(rows: Sequence[tuple[str, object]]) -> str:
    """A two-column, aligned plain-text table."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"     {k.ljust(width)}  {v}" for k, v in rows)


# (title, module, extra modules needed, pip extra)
DEMOS: list[tuple[str, str, tuple[str, ...], str]] = [
    ("Engine: a Lance table with a write-ahead log in front", "engine", (), ""),
    ("KV cache: a prompt's attention cache saved and reused", "kvcache", ("torch", "transformers"), "transformers"),
    ("Checkpoints: a training loop saved and resumed", "params", ("torch",), "torch"),
    ("Trajectories: a gymnasium CartPole run logged and sampled", "trajectory", ("gymnasium",), "gym"),
    ("Queue: a durable Pulsing queue across a restart", "queue", ("pulsing",), "pulsing"),
]


def run_all(root: str, *, echo: Callable[[str], None] = print) -> int:
    """Run every demo whose module exists; return how many failed."""
    failed = 0
    for n, (title, name, needs, extra) in enumerate(DEMOS, 1):
        if importlib.util.find_spec(f"persisting.demos.{name}") is None:
            continue
        echo(f"\n{n}. {title}")
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            echo(f"   skipped: {', '.join(missing)} not installed (pip install 'persisting[{extra}]')")
            continue
        module = importlib.import_module(f"persisting.demos.{name}")
        start = time.perf_counter()
        try:
            module.run(root)
        except Exception as exc:  # noqa: BLE001 - one broken demo must not hide the others
            failed += 1
            echo(f"   FAILED: {type(exc).__name__}: {exc}")
        else:
            echo(f"   ({time.perf_counter() - start:.1f} s)")
    return failed


