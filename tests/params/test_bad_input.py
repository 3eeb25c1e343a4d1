"""Bad input raises typed errors before anything is written; corrupt chunks are never served."""

from __future__ import annotations

import glob
import os
import socket
import struct

import numpy as np
import pytest
import torch

from persisting.errors import (
    AlreadyExistsError,
    CorruptionError,
    InvalidNameError,
    InvalidRecordError,
    NotFoundError,
)
from persisting.params import ParamStore


def _intact(store: ParamStore) -> None:
    assert [i.step for i in store.list()] == [1]
    assert torch.equal(store.load()["w"], torch.ones(8))


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: {"w": torch.ones(8), "f": lambda x: x}, id="lambda"),
        pytest.param(lambda: {"w": torch.ones(8), "s": {1, 2}}, id="set"),
        pytest.param(lambda: {"w": torch.ones(8), "o": object()}, id="object"),
        pytest.param(lambda: {"w": torch.ones(8), (1, 2): "tuple key"}, id="tuple-key"),
        pytest.param(lambda: {"w": torch.ones(8), 1.5: "float key"}, id="float-key"),
        pytest.param(lambda: {"w": torch.ones(8), "a": np.array([object()])}, id="object-array"),
        pytest.param(lambda: {"big": torch.ones(1 << 16), "q": torch.ones(2).to(torch.float8_e4m3fnuz)}, id="dtype"),
    ],
)
def test_unsupported_values_are_refused_and_nothing_is_written(store_path: str, bad) -> None:
    with ParamStore(store_path) as store:
        store.save({"w": torch.ones(8)}, step=1)
        chunks = store.stats()["chunks"]
        with pytest.raises(InvalidRecordError):
            store.save(bad(), step=2)
        assert store.stats()["chunks"] == chunks  # not even an orphan chunk
        _intact(store)


def test_unsupported_socket_and_cycles(store_path: str) -> None:
    cyclic: dict = {"w": torch.ones(1)}
    cyclic["self"] = cyclic
    with ParamStore(store_path) as store, socket.socket() as sock:
        store.save({"w": torch.ones(8)}, step=1)
        for state in ({"sock": sock}, cyclic):
            with pytest.raises(InvalidRecordError):
                store.save(state, step=2)
        with pytest.raises(InvalidRecordError):
            store.save_async({"sock": sock}, step=2)
        _intact(store)


def test_bad_tags_steps_and_metadata(store_path: str) -> None:
    with ParamStore(store_path) as store:
        store.save({"w": torch.ones(8)}, step=1, tags=["best"])
        for tag in ("../escape", "", "a/b", "nul\x00"):
            with pytest.raises(InvalidNameError):
                store.save({"w": torch.ones(8)}, step=2, tags=[tag])
        with pytest.raises(AlreadyExistsError, match="step 1"):
            store.save({"w": torch.zeros(8)}, step=1)  # the step exists
        for step in (-1, 1.5, "3", True):
            with pytest.raises(InvalidRecordError):
                store.save({"w": torch.zeros(8)}, step=step)  # type: ignore[arg-type]
        with pytest.raises(InvalidRecordError):
            store.save({"w": torch.zeros(8)}, step=2, metadata={"t": torch.ones(1)})
        with pytest.raises(NotFoundError):
            store.load(42)
        with pytest.raises(NotFoundError):
            store.load(tag="missing")
        with pytest.raises(InvalidNameError):
            store.load(tag="../x")
        _intact(store)


def test_corrupted_chunk_raises_and_is_not_served(store_path: str) -> None:
    marker = 7.25
    with ParamStore(store_path) as store:
        store.save({"w": torch.ones(8)}, step=1)
        store.save({"w": torch.ones(8), "victim": torch.full((1 << 14,), marker)}, step=2)
    pattern = struct.pack("<f", marker) * 256
    hits = []
    for path in glob.glob(os.path.join(store_path, "chunks.lance", "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                at = f.read().find(pattern)
            if at >= 0:
                hits.append((path, at))
    assert len(hits) == 1
    path, at = hits[0]
    with open(path, "r+b") as f:
        f.seek(at + 1001)
        byte = f.read(1)
        f.seek(at + 1001)
        f.write(bytes([byte[0] ^ 0x01]))
    with ParamStore(store_path) as store:
        with pytest.raises(CorruptionError):
            store.load(2)
        with pytest.raises(CorruptionError):
            store.load(2, keys="victim")
        assert torch.equal(store.load(2, keys="w")["w"], torch.ones(8))  # other chunks still serve
        assert torch.equal(store.load(1)["w"], torch.ones(8))
