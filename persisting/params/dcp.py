"""torch.distributed.checkpoint storage backed by a :class:`ParamStore`.

DCP plans what to write and resharding on load; we store the result as one checkpoint of the
store, so DCP users get versions, retention, dedup across steps and checksums::

    dcp.save(state, storage_writer=ParamStoreWriter(store, step=100))
    dcp.load(state, storage_reader=ParamStoreReader(store))          # newest, resharded by DCP

DCP's own metadata (tensor sizes, chunks, planner data) is kept as JSON, never pickled. DCP
turns every non-tensor value of a state dict into a ``torch.save`` blob, and its planner
unpickles such blobs with ``weights_only=False``: a crafted checkpoint would run code on load.
So both ends refuse them by default. The writer takes them only with
``ParamStoreWriter(..., allow_pickled_values=True)``; the reader, whoever wrote the store (a
plain ``ParamStore.save`` of the same tree included), refuses them with
:class:`~persisting.errors.InvalidRecordError` naming the value, before any tensor is loaded,
unless ``ParamStoreReader(..., allow_pickled_values=True)``. Even then a blob is only ever
unpickled with ``torch.load(weights_only=True)`` (torch's restricted unpickler: tensors,
containers and plain scalars), and what DCP's planner receives is a fresh ``torch.save`` of that
result, never the stored bytes. Keep hyper-parameters in ``ParamStore.save`` metadata instead.

Multi-rank saves go into ONE store: every rank opens the store (same path) and calls
``dcp.save`` with its own ``ParamStoreWriter``. Each rank's ``write_data`` writes its own
chunks to the shared chunk table and makes them durable before it returns; the coordinator's
``finish`` (which DCP runs only after every rank's writes succeeded) commits the one manifest
row that makes the checkpoint visible. If any rank fails, DCP raises on every rank, no manifest
is committed, and the chunks already written are orphans for ``ParamStore.gc``. Loading with
another world size is DCP's resharding: ``read_metadata`` hands DCP the saved layout and
``read_data`` serves each requested slice from the stored shards. Readers (evaluation jobs)
only ever see whole checkpoints; with ``step=None`` a multi-rank load agrees on one step (the
coordinator's newest, broadcast over the default group, so every rank of it must load).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import torch
from torch.distributed.checkpoint import StorageReader, StorageWriter
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import WriteResult

from persisting.errors import AlreadyExistsError, CorruptionError, InvalidRecordError
from persisting.params.manifest import TensorEntry
from persisting.params.store import ParamStore
from persisting.params.tree import TORCH, Stored, TensorRef, decode_tree, encode_plain

__all__ = ["ParamStoreReader", "ParamStoreWriter"]

_ROOT = "dcp"


def _item_key(index: MetadataIndex) -> str:
    offset = "" if index.offset is None else ",".join(str(int(o)) for o in index.offset)
    return f"{index.fqn}@{offset}"


def _done(value: Any) -> torch.futures.Future[Any]:
    f: torch.futures.Future[Any] = torch.futures.Future()
    f.set_result(value)
    return f


def _name(obj: Any) -> str:
    return str(obj).removeprefix("torch.")


def _metadata_to_plain(md: Metadata) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for fqn, m in md.state_dict_metadata.items():
        if isinstance(m, BytesStorageMetadata):
            entries[fqn] = {"kind": "bytes"}
        else:
            p = m.properties
            entries[fqn] = {
                "kind": "tensor",
                "dtype": _name(p.dtype), "layout": _name(p.layout), "requires_grad": bool(p.requires_grad),
                "memory_format": _name(p.memory_format), "pin_memory": bool(p.pin_memory),
                "size": [int(s) for s in m.size],
                "chunks": [[[int(o) for o in c.offsets], [int(s) for s in c.sizes]] for c in m.chunks],
            }
    storage = [
        [i.fqn, None if i.offset is None else [int(o) for o in i.offset], i.index, key]
        for i, key in (md.storage_data or {}).items()
    ]
    return {
        "entries": entries,
        "planner_data": md.planner_data,
        "storage": storage,
        "version": getattr(md, "version", None),
    }


def _metadata_from_plain(doc: dict[str, Any]) -> Metadata:
    entries: dict[str, Any] = {}
    for fqn, e in doc["entries"].items():
        if e["kind"] == "bytes":
            entries[fqn] = BytesStorageMetadata()
            continue
        props = TensorProperties(
            dtype=getattr(torch, e["dtype"]), layout=getattr(torch, e["layout"]),
            requires_grad=e["requires_grad"], memory_format=getattr(torch, e["memory_format"]),
            pin_memory=e["pin_memory"],
        )
        chunks = [ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s)) for o, s in e["chunks"]]
        entries[fqn] = TensorStorageMetadata(properties=props, size=torch.Size(e["size"]), chunks=chunks)
    storage = {
        MetadataIndex(fqn=fqn, offset=None if off is None else torch.Size(off), index=index): key
        for fqn, off, index, key in doc["storage"]
    }
    md = Metadata(state_dict_metadata=entries, planner_data=doc["planner_data"], storage_data=storage)
    if doc.get("version") is not None and any(f.name == "version" for f in dataclasses.fields(Metadata)):
        md.version = doc["version"]
    return md


class ParamStoreWriter(StorageWriter):
    """A DCP StorageWriter that saves the whole DCP checkpoint as ``store`` step ``step``.

    Every rank passes its own writer over its own handle on the same store; the checkpoint
    becomes visible when the coordinator's ``finish`` commits it, after every rank's chunks
    are durable."""

    def __init__(
        self, store: ParamStore, *, step: int, tags: tuple[str, ...] = (), metadata: dict[str, Any] | None = None,
        allow_pickled_values: bool = False,
    ) -> None:
        super().__init__()
        self.store = store
        self.step = step
        self.tags = tags
        self.metadata = metadata
        self.allow_pickled_values = allow_pickled_values

    def reset(self, checkpoint_id: Any = None) -> None:
        pass

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        # every rank refuses before writing a byte (DCP raises it on all ranks)
        self.store._check_writable()
        if any(i.step == self.step for i in self.store.list()):
            raise AlreadyExistsError(
                f"{self.store.path} already holds a checkpoint at step {self.step}; delete it first or use another step",
                step=self.step,
            )
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return plans

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> torch.futures.Future[list[WriteResult]]:
        """Write this rank's chunks durably; the results carry their manifest entries (and
        non-tensor values) to the coordinator."""
        refs: list[TensorRef] = []
        tensor_items: list[Any] = []
        results: list[WriteResult] = []
        for item in plan.items:
            key = _item_key(item.index)
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                if not self.allow_pickled_values:
                    raise InvalidRecordError(
                        f"DCP value {item.index.fqn!r} is not a tensor: DCP pickles such values and unpickles "
                        "them on load, which can execute code; store tensors only, keep plain values in "
                        "ParamStore.save(..., metadata=) or pass allow_pickled_values=True",
                        key=item.index.fqn,
                    )
                raw = data.getvalue() if isinstance(data, io.BytesIO) else bytes(data)
                results.append(WriteResult(index=item.index, size_in_bytes=len(raw), storage_data=("bytes", raw)))
            else:
                assert isinstance(data, torch.Tensor)
                refs.append(TensorRef(f"{_ROOT}.tensors.{key}", TORCH, data.detach().to("cpu").contiguous()))
                tensor_items.append(item)
        for item, (entry, new_chunks, new_bytes) in zip(tensor_items, self.store._store_tensors(refs)):
            body = ("tensor", entry.to_json(), new_chunks, new_bytes)
            results.append(WriteResult(index=item.index, size_in_bytes=entry.nbytes, storage_data=body))
        return _done(results)

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """On the coordinator, after every rank wrote: commit the manifest row."""
        tensors: dict[str, Any] = {}
        blobs: dict[str, bytes] = {}
        for rank in results:
            for r in rank:
                key = _item_key(r.index)
                if r.storage_data[0] == "bytes":
                    blobs[key] = r.storage_data[1]
                else:
                    _, entry, new_chunks, new_bytes = r.storage_data
                    tensors[key] = Stored(TORCH, TensorEntry.from_json(entry), new_chunks, new_bytes)
        metadata.storage_data = {r.index: _item_key(r.index) for rank in results for r in rank}
        state = {
            _ROOT: {
                "metadata": encode_plain(_metadata_to_plain(metadata), what="DCP metadata"),
                "tensors": tensors,
                "bytes": blobs,
            }
        }
        self.store._save_stored(state, step=self.step, tags=self.tags, metadata=self.metadata)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False  # we are addressed by a store and a step, never by a path


class ParamStoreReader(StorageReader):
    """A DCP StorageReader over checkpoint ``step`` (newest by default) of ``store``."""

    def __init__(
        self, store: ParamStore, *, step: int | None = None, tag: str | None = None,
        allow_pickled_values: bool = False,
    ) -> None:
        """``allow_pickled_values`` lets non-tensor DCP values load; each is unpickled with
        ``torch.load(weights_only=True)``, which still refuses anything but tensors, containers
        and plain scalars. Only pass it for checkpoints you trust."""
        super().__init__()
        self.store = store
        self.step = store.info(step, tag=tag).step
        self._agree = step is None and tag is None  # "the newest": every rank must mean one step
        self.allow_pickled_values = allow_pickled_values
        self._metadata: Metadata | None = None

    def reset(self, checkpoint_id: Any = None) -> None:
        self._metadata = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self._agree and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            # a save may commit between two ranks' choices: take the coordinator's
            choice = [self.store.info().step if torch.distributed.get_rank() == 0 else None]
            torch.distributed.broadcast_object_list(choice, src=0)
            self.step = int(choice[0])  # type: ignore[arg-type]
            self._agree = False
        state = self.store.load(self.step, keys=f"{_ROOT}.metadata")
        if _ROOT not in state:
            raise CorruptionError(f"checkpoint step {self.step} of {self.store.path} was not written by DCP")
        doc = decode_tree(state[_ROOT]["metadata"], _no_tensor)
        return _metadata_from_plain(doc)

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self._metadata = metadata

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        if not self.allow_pickled_values:  # refuse before any tensor of the caller changes
            for item in plan.items:
                if item.type == LoadItemType.BYTE_IO:
                    _refuse(item.dest_index.fqn, self.step)
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> torch.futures.Future[None]:
        from torch.distributed._shard._utils import narrow_tensor_by_index

        assert self._metadata is not None
        storage = self._metadata.storage_data
        keys = {storage[item.storage_index] for item in plan.items}
        patterns = [f"{_ROOT}.{part}.{_escape(k)}" for k in keys for part in ("tensors", "bytes")]
        loaded = self.store.load(self.step, keys=patterns).get(_ROOT, {})
        tensors, blobs = loaded.get("tensors", {}), loaded.get("bytes", {})
        for item in plan.items:
            key = storage[item.storage_index]
            if item.type == LoadItemType.BYTE_IO:
                fqn = item.dest_index.fqn
                if not self.allow_pickled_values:
                    _refuse(fqn, self.step)
                if key not in blobs:
                    raise CorruptionError(f"DCP value {fqn!r} of step {self.step} is missing", step=self.step, key=fqn)
                planner.load_bytes(item, _restricted_copy(blobs[key], fqn, self.step))
                continue
            src = narrow_tensor_by_index(tensors[key], item.storage_offsets, item.lengths)
            target = planner.resolve_tensor(item).detach()
            target.copy_(src)
            planner.commit_tensor(item, target)
        return _done(None)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False


def _escape(key: str) -> str:
    """A glob that matches ``key`` literally (fqns may hold '[', '*' or '?')."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in key) if any(c in key for c in "*?[") else key


def _refuse(fqn: str, step: int) -> None:
    raise InvalidRecordError(
        f"DCP value {fqn!r} of checkpoint step {step} is a pickle (a non-tensor value); unpickling "
        "stored bytes can execute code, so it is not loaded. Leave it out of the state dict you "
        "load, or pass ParamStoreReader(..., allow_pickled_values=True) for a checkpoint you trust",
        key=fqn, step=step,
    )


def _restricted_copy(raw: bytes, fqn: str, step: int) -> io.BytesIO:
    """Unpickle ``raw`` with torch's restricted (weights_only) unpickler and hand back a fresh
    ``torch.save`` of the result: the planner's own ``torch.load(weights_only=False)`` then
    only ever sees bytes we made from vetted objects, never the stored ones."""
    import pickle

    try:
        value = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, AttributeError, TypeError) as exc:
        raise InvalidRecordError(
            f"DCP value {fqn!r} of checkpoint step {step} holds objects that torch.load(weights_only=True) "
            f"refuses ({str(exc).splitlines()[0][:200]}); it is not loaded. Store such values as plain "
            "ParamStore metadata instead",
            key=fqn, step=step,
        ) from None
    out = io.BytesIO()
    torch.save(value, out)
    out.seek(0)
    return out


def _no_tensor(i: int) -> Any:
    raise CorruptionError("DCP metadata refers to a tensor; it holds plain values only")

