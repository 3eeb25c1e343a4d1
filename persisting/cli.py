"""The ``persisting`` command. ``persisting demo`` shows the product working on local disk; the
operator commands (ls, inspect, verify, compact, gc, export, metrics serve) live in :mod:`persisting.ops`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _fresh_dir(path: str | None) -> str:
    base = os.path.abspath(path or "persisting-demo")
    if os.path.exists(base) and os.listdir(base):
        base = os.path.join(base, time.strftime("run-%Y%m%d-%H%M%S"))
    os.makedirs(base, exist_ok=True)
    return base


def cmd_demo(args: argparse.Namespace) -> int:
    from persisting.demos import run_all

    root = _fresh_dir(args.path)
    print(f"Persisting demo in {root}")
    failed = run_all(root)
    print(f"\nEverything above is on disk under {root}.")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persisting", description="Persistent storage for AI systems.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every store end to end on local disk and print what happened")
    demo.add_argument("--path", default=None, help="directory to use (default ./persisting-demo)")
    demo.set_defaults(func=cmd_demo)
    from persisting.ops.commands import add_commands
    from persisting.ops.index import add_index_command

    add_commands(sub)
    add_index_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of our output went away (``persisting inspect ... | head``): stop quietly,
    as ``cat`` would, with 128 + SIGPIPE. stdout is pointed at /dev/null so the interpreter's
    final flush does not print a second error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
