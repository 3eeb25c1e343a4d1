"""ParamStore on an S3-compatible object store (moto's server); writer locks on local disk."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest
import torch

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")

from persisting.params import ParamStore


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_save_load_gc_on_s3(endpoint: str, tmp_path: os.PathLike[str]) -> None:
    bucket = f"persisting-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    ).create_bucket(Bucket=bucket)
    opts = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_endpoint": endpoint,
            "aws_region": "us-east-1", "allow_http": "true"}
    path = f"s3://{bucket}/ckpt"
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
