"""Namespace names -> table names on disk, reversibly.

A namespace is usually a model id (``"meta-llama/Llama-3.1-8B"``), so it may hold ``/`` and
other characters that cannot be one path component. Its table is ``<storage_name>.lance``,
where the storage name percent-encodes ``%``, ``/``, ``\\``, control characters and a leading
``.``; every other character is kept, so names that were already safe map to themselves and
existing stores keep their tables. Decoding is exact (``%`` is always encoded), which is how
``persisting ls`` shows namespaces as given. No encoded name holds a separator, so ``..``
inside an id stays inside the store's directory.
"""

from __future__ import annotations

from urllib.parse import unquote

from persisting.errors import InvalidNameError

__all__ = ["check_namespace", "namespace_of", "storage_name"]

_MAX_COMPONENT = 255  # bytes in one path component on common file systems
_SUFFIX = ".lance"


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if it can name a KV namespace, else raise InvalidNameError.

    Any non-empty str without NUL whose storage name fits one path component is accepted.
    """
    if not isinstance(namespace, str):
        raise InvalidNameError(f"namespace must be a str, got {type(namespace).__name__}: {namespace!r}")
    problem = None
    if not namespace:
        problem = "is empty"
    elif "\x00" in namespace:
        problem = "contains NUL"
    elif len(storage_name(namespace, checked=False).encode()) + len(_SUFFIX) > _MAX_COMPONENT:
        problem = f"is too long: encoded for disk it must fit {_MAX_COMPONENT - len(_SUFFIX)} bytes"
    if problem:
        raise InvalidNameError(f"namespace {namespace!r} {problem}; pass a model id such as 'org/model-7b'",
                               name=namespace)
    return namespace


def _encode(c: str) -> str:
    return "".join(f"%{b:02X}" for b in c.encode())


def storage_name(namespace: str, *, checked: bool = True) -> str:
    """The table name (without ``.lance``) of ``namespace``: a single, safe path component."""
    if checked:
        check_namespace(namespace)
    out = []
    for i, c in enumerate(namespace):
        if c in "%/\\" or ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or (i == 0 and c == "."):
            out.append(_encode(c))
        else:
            out.append(c)
    return "".join(out)


def namespace_of(name: str) -> str:
    """The namespace a table name (without ``.lance``) was made from; the inverse of storage_name."""
    return unquote(name, errors="strict")
