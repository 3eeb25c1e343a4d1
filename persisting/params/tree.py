"""State trees <-> JSON without pickle: plain values inline, tensors by reference.

A training state is a nested structure of dicts (str or int keys), lists, tuples, tensors and
plain scalars. :func:`encode_tree` turns it into a JSON-able tree in which every tensor (torch or
numpy) is replaced by a numbered reference, and returns the tensors in that order with their
dotted names (``"model.layer.weight"``, ``"optim.state.0.exp_avg"``). :func:`decode_tree`
rebuilds the structure; integer keys stay integers and tuples stay tuples, so
``optimizer.load_state_dict`` and RNG setters take the result as they are. Nothing here can
execute code on load: the format knows only JSON values and a few one-letter tags.
"""

from __future__ import annotations

import base64
import fnmatch
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from persisting.errors import InvalidRecordError

__all__ = [
    "NUMPY", "NUMPY_SCALAR", "TORCH", "Stored", "TensorRef", "decode_tree", "encode_plain", "encode_tree",
    "is_dict_node", "match_tensors", "select", "top_level", "tree_tensor_indices",
]

# container tags: one-key JSON objects, so they never collide with a plain value
_DICT, _ODICT, _LIST, _TUPLE, _TENSOR, _BYTES, _FLOAT = "d", "o", "l", "t", "T", "b", "f"
# tensor kinds kept in the manifest
TORCH, NUMPY, NUMPY_SCALAR = "torch", "numpy", "numpy_scalar"


@dataclass(frozen=True)
class TensorRef:
    """A tensor found in a state tree: its dotted name, its kind and the object itself."""

    name: str
    kind: str
    value: Any


@dataclass(frozen=True)
class Stored:
    """A tensor whose chunks are already durable in the store (written by another rank of a
    multi-rank save): encoded as a tensor reference of ``kind``; ``entry`` (a manifest
    TensorEntry) says where it is, ``new_chunks``/``new_bytes`` what its writer added."""

    kind: str
    entry: Any
    new_chunks: int = 0
    new_bytes: int = 0


def _is_torch_tensor(x: object) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(x, torch.Tensor)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _plain_float(x: float) -> Any:
    # JSON has no NaN/inf; keep them (and -0.0) exact as a tagged string
    if math.isfinite(x) and not (x == 0.0 and math.copysign(1.0, x) < 0):
        return x
    return {_FLOAT: repr(x)}


def encode_tree(
    state: Any, *, allow_tensors: bool = True, what: str = "state", allow_stored: bool = False
) -> tuple[Any, list[TensorRef]]:
    """Return (JSON-able tree, tensors in reference order); raise InvalidRecordError on values
    that cannot be stored without pickle (a lambda, a set, an arbitrary object...).
    ``allow_stored`` accepts :class:`Stored` placeholders as tensors (multi-rank saves)."""
    tensors: list[TensorRef] = []
    active: set[int] = set()

    def enc(x: Any, path: str) -> Any:
        if isinstance(x, np.generic):
            pass  # numpy scalars (np.float64 is a float subclass) keep their type as 0-d tensors
        elif x is None or isinstance(x, (bool, str)):
            return x
        elif isinstance(x, int):
            return int(x)
        elif isinstance(x, float):
            return _plain_float(float(x))
        elif isinstance(x, (bytes, bytearray)):
            return {_BYTES: base64.b64encode(bytes(x)).decode("ascii")}
        elif allow_stored and isinstance(x, Stored):
            tensors.append(TensorRef(path or "<root>", x.kind, x))
            return {_TENSOR: len(tensors) - 1}
        is_np_scalar = isinstance(x, np.generic)
        if _is_torch_tensor(x) or isinstance(x, np.ndarray) or is_np_scalar:
            if not allow_tensors:
                raise InvalidRecordError(f"{what} at {path or '<root>'!r} holds a tensor; only plain values are allowed here", key=path)
            kind = TORCH if _is_torch_tensor(x) else (NUMPY_SCALAR if is_np_scalar else NUMPY)
            if kind == NUMPY and x.dtype == object:
                raise InvalidRecordError(f"{what} at {path!r}: numpy arrays of dtype object cannot be stored", key=path)
            tensors.append(TensorRef(path or "<root>", kind, x))
            return {_TENSOR: len(tensors) - 1}
        if isinstance(x, (dict, list, tuple)):
            if id(x) in active:
                raise InvalidRecordError(f"{what} at {path!r} contains itself (a reference cycle)", key=path)
            active.add(id(x))
            try:
                if isinstance(x, dict):
                    if type(x) not in (dict, OrderedDict):
                        raise InvalidRecordError(
                            f"{what} at {path!r} is a {type(x).__name__}; only dict and OrderedDict are stored",
                            key=path, value_type=type(x).__name__,
                        )
                    items = []
                    for k, v in x.items():
                        if isinstance(k, bool) or not isinstance(k, (str, int)):
                            raise InvalidRecordError(
                                f"{what} at {path or '<root>'!r} has key {k!r} of type {type(k).__name__}; "
                                "keys must be str or int",
                                key=path, key_type=type(k).__name__,
                            )
                        items.append([k if isinstance(k, str) else int(k), enc(v, _join(path, k))])
                    if isinstance(x, OrderedDict):
                        # module.state_dict(): keep the type and its version _metadata
                        meta = getattr(x, "_metadata", None)
                        return {_ODICT: [items, None if meta is None else enc(dict(meta), _join(path, "_metadata"))]}
                    return {_DICT: items}
                if type(x) not in (list, tuple):
                    raise InvalidRecordError(
                        f"{what} at {path!r} is a {type(x).__name__}; only plain lists and tuples are stored",
                        key=path, value_type=type(x).__name__,
                    )
                tag = _LIST if isinstance(x, list) else _TUPLE
                return {tag: [enc(v, _join(path, i)) for i, v in enumerate(x)]}
            finally:
                active.discard(id(x))
        raise InvalidRecordError(
            f"{what} at {path or '<root>'!r} is a {type(x).__name__} ({x!r:.60}); storable values are "
            "tensors, numpy arrays, int, float, str, bool, None, bytes and dicts/lists/tuples of them",
            key=path, value_type=type(x).__name__,
        )

    return enc(state, ""), tensors


def encode_plain(value: Any, *, what: str) -> Any:
    """Encode a tensor-free value (checkpoint metadata)."""
    tree, _ = encode_tree(value, allow_tensors=False, what=what)
    return tree


def decode_tree(tree: Any, tensor: Callable[[int], Any]) -> Any:
    """Rebuild a structure from :func:`encode_tree`'s tree; ``tensor(i)`` gives reference i."""
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, dict) and len(tree) == 1:
        (tag, body), = tree.items()
        if tag == _DICT:
            return {k: decode_tree(v, tensor) for k, v in body}
        if tag == _ODICT:
            items, meta = body
            out = OrderedDict((k, decode_tree(v, tensor)) for k, v in items)
            if meta is not None:
                out._metadata = decode_tree(meta, tensor)  # type: ignore[attr-defined]
            return out
        if tag == _LIST:
            return [decode_tree(v, tensor) for v in body]
        if tag == _TUPLE:
            return tuple(decode_tree(v, tensor) for v in body)
        if tag == _TENSOR:
            return tensor(int(body))
        if tag == _BYTES:
            return base64.b64decode(body)
        if tag == _FLOAT:
            return float(body)
    raise ValueError(f"not a state tree node: {tree!r:.80}")


def tree_tensor_indices(tree: Any) -> Iterable[int]:
    """Every tensor reference in ``tree``."""
    if isinstance(tree, dict) and len(tree) == 1:
        (tag, body), = tree.items()
        if tag == _TENSOR:
            yield int(body)
        elif tag in (_DICT, _ODICT):
            for _, v in body if tag == _DICT else body[0]:
                yield from tree_tensor_indices(v)
        elif tag in (_LIST, _TUPLE):
            for v in body:
                yield from tree_tensor_indices(v)


def match_tensors(tree: Any, state: Any, accept: Callable[[Any], bool]) -> dict[int, Any]:
    """Tensor reference -> the object at the same position of ``state`` (a live state shaped
    like the saved one), for those ``accept`` takes.

    Positions are matched key by key, never by dotted name: a key ``"a.b"`` and a nested
    ``a -> b`` are different places, so each stored tensor gets its own destination.
    """
    out: dict[int, Any] = {}

    def child(node: Any, key: Any) -> Any:
        if isinstance(node, Mapping):
            if key in node:
                return node[key]
            if isinstance(key, int) and str(key) in node:  # int keys offered as str
                return node[str(key)]
            return _MISSING
        if isinstance(node, (list, tuple)) and isinstance(key, int) and 0 <= key < len(node):
            return node[key]
        return _MISSING

    def walk(t: Any, node: Any) -> None:
        if node is _MISSING or not (isinstance(t, dict) and len(t) == 1):
            return
        (tag, body), = t.items()
        if tag == _TENSOR:
            if accept(node):
                out[int(body)] = node
        elif tag in (_DICT, _ODICT):
            for k, v in body if tag == _DICT else body[0]:
                walk(v, child(node, k))
        elif tag in (_LIST, _TUPLE):
            for i, v in enumerate(body):
                walk(v, child(node, i))

    walk(tree, state)
    return out


_MISSING = object()


class _Matcher:
    """Dotted prefixes (a set lookup per ancestor) and globs (fnmatch)."""

    def __init__(self, patterns: list[str]) -> None:
        self.globs = [p for p in patterns if any(c in p for c in "*?[")]
        self.prefixes = {p for p in patterns if p not in self.globs}

    def __call__(self, path: str) -> bool:
        if path in self.prefixes:
            return True
        if self.prefixes:
            at = path.find(".")
            while at >= 0:
                if path[:at] in self.prefixes:
                    return True
                at = path.find(".", at + 1)
        return any(fnmatch.fnmatchcase(path, g) for g in self.globs)


def select(tree: Any, keys: str | Iterable[str]) -> Any:
    """The part of ``tree`` whose dotted paths match ``keys`` (prefixes or globs), or None.

    Dicts are pruned key by key; a list or tuple with any match inside is kept whole, so its
    positions stay meaningful. The root dict is returned (possibly empty) when nothing matches.
    """
    matches = _Matcher([keys] if isinstance(keys, str) else list(keys))

    def sel(node: Any, path: str) -> Any:
        if path and matches(path):
            return node
        if isinstance(node, dict) and len(node) == 1:
            (tag, body), = node.items()
            if tag in (_DICT, _ODICT):
                items = body if tag == _DICT else body[0]
                kept = [[k, s] for k, v in items if (s := sel(v, _join(path, k))) is not None]
                if not kept:
                    return None
                return {_DICT: kept} if tag == _DICT else {_ODICT: [kept, body[1]]}
            if tag in (_LIST, _TUPLE) and any(sel(v, _join(path, i)) is not None for i, v in enumerate(body)):
                return node
        return None

    out = sel(tree, "")
    if out is None:
        return {_DICT: []} if is_dict_node(tree) else None
    return out


def top_level(tree: Any) -> dict[Any, Any]:
    """The root dict's (key, subtree) pairs, or {} when the root is not a dict."""
    if not is_dict_node(tree):
        return {}
    (tag, body), = tree.items()
    return {k: v for k, v in (body if tag == _DICT else body[0])}


def is_dict_node(node: Any) -> bool:
    return isinstance(node, dict) and len(node) == 1 and (_DICT in node or _ODICT in node)
