"""Validation of user-supplied names that become parts of paths."""

from __future__ import annotations

from persisting.errors import InvalidNameError

__all__ = ["RESERVED_COLUMNS", "check_name", "field_name_problem"]

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


# Lance refuses these as column names (its row-id/address/offset/version meta columns), or
# (``_distance``, ``_score``) adds them to vector and full-text search results, where a stored
# column of that name would be shadowed.
RESERVED_COLUMNS = frozenset({
    "_rowid", "_rowaddr", "_rowoffset", "_row_created_at_version", "_row_last_updated_at_version",
    "_distance", "_score",
})


def field_name_problem(name: object, *, top_level: bool) -> str | None:
    """Why ``name`` cannot be a field name in a Lance table, or None when it can.

    Measured on Lance 14.0.2: a top-level name with ``.`` is refused at commit; the reserved
    names above are refused at commit (or shadowed in search results); an empty name or one
    with a backtick is committed but can then never be read, projected or filtered, so the
    next commit fails; NUL silently truncates the name; ``*`` projects every column. Struct
    children may hold dots and reserved names (Lance quotes them: ``s.`a.b```), but not the
    rest.
    """
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a str"
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains NUL (Lance would silently cut the name there)"
    if "`" in name:
        return "contains a backtick, which Lance cannot quote in a column path"
    if name == "*":
        return "is '*', which Lance reads as 'every column'"
    if top_level and "." in name:
        return ("contains '.', which Lance refuses in a top-level column name (it means a nested "
                "field); nest it as {'a': {'b': ...}} or use another separator such as '_' or '/'")
    if top_level and name in RESERVED_COLUMNS:
        return "is reserved by Lance for its own row and search columns; rename it"
    return None
