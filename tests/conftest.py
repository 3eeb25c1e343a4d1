"""Fixtures shared across the suite: an S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

S3_REGION = "us-east-1"
S3_KEY = "testing"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on loopback (skips when moto[server] is not installed)."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=S3_REGION, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY
    )


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"persisting-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_options(s3_endpoint: str) -> dict[str, str]:
    """Lance ``storage_options`` for the moto server."""
    return {
        "aws_access_key_id": S3_KEY,
        "aws_secret_access_key": S3_KEY,
        "aws_endpoint": s3_endpoint,
        "aws_region": S3_REGION,
        "allow_http": "true",
    }
