"""Validation of user-supplied names that become parts of paths."""

from __future__ import annotations

from persisting.errors import InvalidNameError

__all__ = ["check_name"]

_MAX_NAME = 255


def check_name(name: object, *, what: str = "name") -> str:
    """Return ``name`` if it is safe as one path component, else raise InvalidNameError.

    Refuses empty names, ``.``/``..``, path separators, NUL and control characters, so that
    no topic, namespace or tag can reach outside the directory of its store.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a str, got {type(name).__name__}: {name!r}")
    problem = None
    if not name:
        problem = "is empty"
    elif name in (".", ".."):
        problem = "is a relative directory reference"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in name):
        problem = "contains NUL or a control character"
    elif len(name.encode()) > _MAX_NAME:
        problem = f"is longer than {_MAX_NAME} bytes"
    if problem:
        raise InvalidNameError(
            f"{what} {name!r} {problem}; use letters, digits, '-', '_' or '.' "
            "(no '/', '..' or NUL)",
            name=name,
        )
    return name
