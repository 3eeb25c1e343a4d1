"""A lost newest manifest of checkpoints.lance is detected, never a silent rollback."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest
import torch

from persisting.errors import CorruptionError
from persisting.params import ParamStore
HEAD_NAME = "checkpoints.head.json"  # persisting.params.head.HEAD_NAME


def _newest_manifest(path: str) -> str:
    versions = os.path.join(path, "checkpoints.lance", "_versions")
    manifests = [n for n in os.listdir(versions) if n.endswith(".manifest")]
    # Lance names version v "2**64 - 1 - v" (newest sorts first); older layouts use "v.manifest"
    newest = min(manifests) if all(len(n) > 25 for n in manifests) else max(manifests, key=lambda n: int(n.split(".")[0]))
    return os.path.join(versions, newest)


def test_deleting_the_newest_manifest_is_detected(tmp_path: Any) -> None:
    path = str(tmp_path / "ckpt")
    with ParamStore(path) as store:
        store.save({"w": torch.ones(4)}, step=1)
        store.save({"w": torch.full((4,), 2.0)}, step=2)
        version = store._manifests.version
    os.unlink(_newest_manifest(path))
    for read_only in (False, True):
        with pytest.raises(CorruptionError, match=f"version {version}"):
            ParamStore(path, read_only=read_only)


def test_a_checkpoint_table_rolled_back_whole_is_detected(tmp_path: Any) -> None:
    """checkpoints.lance replaced by an older copy of itself (a restore, a sync tool, a lost
    directory): everything inside it is self-consistent, only the record beside it knows."""
    path = str(tmp_path / "ckpt")
    table = os.path.join(path, "checkpoints.lance")
    with ParamStore(path) as store:
        store.save({"w": torch.ones(4)}, step=1)
        shutil.copytree(table, str(tmp_path / "backup"))
        store.save({"w": torch.full((4,), 2.0)}, step=2)
        version = store._manifests.version
    shutil.rmtree(table)
    shutil.copytree(str(tmp_path / "backup"), table)
    for read_only in (False, True):
        with pytest.raises(CorruptionError) as info:
            ParamStore(path, read_only=read_only)
        msg = str(info.value)
        assert f"version {version}" in msg and "step 2" in msg and HEAD_NAME in msg
        assert info.value.details["expected_version"] == version and info.value.details["step"] == 2
    # the documented way to accept the rollback
    os.unlink(os.path.join(path, HEAD_NAME))
    with ParamStore(path) as store:
        assert store.latest().step == 1  # type: ignore[union-attr]
        store.save({"w": torch.full((4,), 3.0)}, step=3)
    with ParamStore(path, read_only=True) as store:
        assert [i.step for i in store.list()] == [1, 3]


def test_deletes_retention_and_reopens_raise_no_false_alarm(tmp_path: Any) -> None:
    path = str(tmp_path / "ckpt")
    with ParamStore(path, keep_last=2) as store:
        for step in range(5):
            store.save({"w": torch.full((4,), float(step))}, step=step)
        store.delete(4)
    head = json.loads(open(os.path.join(path, HEAD_NAME)).read())
    with ParamStore(path) as store:
        assert head == {"format": 1, "version": store._manifests.version, "step": 3}
        assert [i.step for i in store.list()] == [3]
        reader = ParamStore(path, read_only=True)  # a reader beside a live writer
        store.save({"w": torch.zeros(4)}, step=5)
        reader.close()
    with ParamStore(path, read_only=True) as store:
        assert store.latest().step == 5  # type: ignore[union-attr]


def test_a_damaged_record_is_a_typed_error(tmp_path: Any) -> None:
    path = str(tmp_path / "ckpt")
    with ParamStore(path) as store:
        store.save({"w": torch.ones(2)}, step=1)
    with open(os.path.join(path, HEAD_NAME), "wb") as f:
        f.write(b'{"format": 1, "vers')
    with pytest.raises(CorruptionError, match=HEAD_NAME):
        ParamStore(path, read_only=True)
