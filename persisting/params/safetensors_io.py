"""safetensors export and import for :class:`ParamStore` checkpoints.

Tensors are written under their flat dotted names (``"model.layer.weight"``), as Hugging Face
tools expect. The rest of the state (step, optimizer hyper-parameters, RNG tuples...) travels in
the header metadata as the store's JSON tree, so a file exported by us imports back exactly;
a file from elsewhere imports as a flat ``{name: tensor}`` dict.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from persisting.errors import (
    CorruptionError,
    InvalidRecordError,
    NotFoundError,
    StorageError,
)
from persisting.params.manifest import CheckpointInfo
from persisting.params.tree import NUMPY, NUMPY_SCALAR, TORCH, encode_tree

if TYPE_CHECKING:
    from persisting.params.store import Keys, ParamStore

__all__ = ["export_safetensors", "import_safetensors"]

_TREE_KEY = "persisting.tree"
_KINDS_KEY = "persisting.tensors"


def export_safetensors(
    store: ParamStore, step: int | None, path: str, *, tag: str | None = None, keys: Keys | None = None,
    strip_prefix: str | None = None,
) -> None:
    """Write a checkpoint to ``path`` (atomically: a temporary file, fsync, rename; mode 0666
    less the umask, as any new file).

    ``keys`` selects parts as :meth:`ParamStore.load` does (``"model"``, ``"model.*.weight"``).
    ``strip_prefix`` removes a prefix from every tensor name and writes a plain file for Hugging
    Face (``keys="model", strip_prefix="model."`` gives the names ``from_pretrained`` expects, no
    optimizer state); a tensor whose name lacks the prefix is refused (narrow ``keys``). Such a
    file imports back as a flat ``{name: tensor}`` dict; without ``strip_prefix`` the file also
    carries the non-tensor state and imports back exactly.
    """
    import torch
    from safetensors.torch import save_file

    info = store.info(step, tag=tag)
    state = store.load(info.step, keys=keys) if keys is not None else store.load(info.step)
    tree, refs = encode_tree(state)
    tensors: dict[str, Any] = {}
    kinds: list[list[str]] = []
    for ref in refs:
        if strip_prefix is not None:
            if not ref.name.startswith(strip_prefix) or ref.name == strip_prefix:
                raise InvalidRecordError(
                    f"step {info.step}: tensor {ref.name!r} does not start with strip_prefix {strip_prefix!r}; "
                    f"pass keys={strip_prefix.rstrip('.')!r} to export only those tensors",
                    key=ref.name,
                )
            ref = dataclasses.replace(ref, name=ref.name[len(strip_prefix):])
        if ref.name in tensors:
            raise InvalidRecordError(
                f"step {info.step}: two tensors share the flat name {ref.name!r} (e.g. keys 'a.b' and "
                "'a' -> 'b'); rename one to export to safetensors",
                key=ref.name,
            )
        value = ref.value if ref.kind == TORCH else torch.from_numpy(_np_array(ref.value))
        tensors[ref.name] = value.contiguous()
        kinds.append([ref.name, ref.kind])
    if not tensors:
        raise NotFoundError(f"step {info.step} has no tensors matching keys={keys!r}", step=info.step, keys=keys)
    metadata = {"format": "pt"}
    if strip_prefix is None:
        metadata.update({_TREE_KEY: json.dumps(tree, allow_nan=False), _KINDS_KEY: json.dumps(kinds)})
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # safetensors writes 0600; an exported file is for sharing
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise StorageError(f"cannot write safetensors file {path}: {exc}", path=path) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (no race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def import_safetensors(
    store: ParamStore, path: str, *, step: int, tags: Iterable[str] = (), metadata: Mapping[str, Any] | None = None
) -> CheckpointInfo:
    """Save the tensors of a safetensors file as checkpoint ``step``."""
    from safetensors import SafetensorError, safe_open

    from persisting.params.tree import decode_tree

    if not os.path.isfile(path):
        raise NotFoundError(f"safetensors file {path} does not exist", path=path)
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CorruptionError(f"{path} is not a valid safetensors file: {exc}", path=path) from exc
    except OSError as exc:
        raise StorageError(f"cannot read safetensors file {path}: {exc}", path=path) from exc
    if _TREE_KEY in header and _KINDS_KEY in header:
        kinds = json.loads(header[_KINDS_KEY])
        values = [_as_kind(tensors[name], kind) for name, kind in kinds]
        state: Any = decode_tree(json.loads(header[_TREE_KEY]), values.__getitem__)
    else:
        state = tensors
    return store.save(state, step=step, tags=tags, metadata=metadata)


def _np_array(value: Any) -> Any:
    import numpy as np

    return np.ascontiguousarray(np.asarray(value))


def _as_kind(t: Any, kind: str) -> Any:
    if kind == NUMPY:
        return t.numpy()
    if kind == NUMPY_SCALAR:
        return t.numpy()[()]
    return t
