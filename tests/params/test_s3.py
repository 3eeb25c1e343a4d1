"""ParamStore on an S3-compatible object store (moto's server); writer locks on local disk."""

from __future__ import annotations

import os

import torch

from persisting.params import ParamStore


def test_save_load_gc_on_s3(s3_bucket: str, s3_options: dict[str, str], tmp_path: os.PathLike[str]) -> None:
    opts = s3_options
    path = f"s3://{s3_bucket}/ckpt"
    locks = os.path.join(tmp_path, "locks")
    base = torch.randn(256, 256)
    with ParamStore(path, storage_options=opts, wal_dir=locks, keep_last=1) as store:
        store.save({"base": base, "head": torch.zeros(4), "step": 1}, step=1)
        info = store.save({"base": base, "head": torch.ones(4), "step": 2}, step=2)
        assert info.new_bytes == 16  # base deduplicated
        assert [i.step for i in store.list()] == [2]  # retention ran, with its gc
    with ParamStore(path, storage_options=opts, read_only=True) as reader:
        state = reader.load()
        assert state["step"] == 2 and torch.equal(state["base"], base) and torch.equal(state["head"], torch.ones(4))
