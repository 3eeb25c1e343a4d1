"""A ParamStore save on S3 that the object store refuses leaves nothing a later save reuses
(the S3 twin of test_failed_save.py). The fault is real: the store talks to moto through a
small HTTP relay that answers PUT/POST of chunk data files with S3's 403 AccessDenied while
armed (as a bucket policy or an expired role would), and relays everything else unchanged."""

from __future__ import annotations

import http.client
import http.server
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import torch

from persisting.errors import StorageError
from persisting.params import ParamStore

_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
           b"<Message>Access Denied</Message></Error>")
_HOP = {"connection", "transfer-encoding", "keep-alive"}


class _Relay(http.server.ThreadingHTTPServer):
    daemon_threads = True
    target: tuple[str, int]
    refuse: str | None = None  # a path fragment whose writes are refused
    refused = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Relay

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _relay(self) -> None:
        body = self._body()
        refuse = self.server.refuse
        if refuse and self.command in ("PUT", "POST") and refuse in self.path:
            self.server.refused += 1
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_DENIED)))
            self.end_headers()
            self.wfile.write(_DENIED)
            return
        conn = http.client.HTTPConnection(*self.server.target, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay


@pytest.fixture(scope="module")
def relay(s3_endpoint: str) -> Iterator[_Relay]:
    server = _Relay(("127.0.0.1", 0), _Handler)
    url = urlparse(s3_endpoint)
    server.target = (url.hostname or "127.0.0.1", url.port or 80)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(timeout=10)


_LOAD = textwrap.dedent(
    """
    import json, sys, torch
    from persisting.params import ParamStore
    with ParamStore(sys.argv[1], storage_options=json.loads(sys.argv[2]), read_only=True) as store:
        out = store.load(3)
        print(json.dumps({"steps": [i.step for i in store.list()],
                          "bias_zero": bool(torch.equal(out["bias"], torch.zeros(1 << 20))),
                          "opt_one": bool(torch.equal(out["opt"], torch.ones(1 << 20)))}))
    """
)


@pytest.mark.parametrize("refused", ["data/", "_versions/"])
def test_refused_save_on_s3_leaves_nothing_a_later_save_reuses(refused: str, relay: _Relay, s3_bucket: str,
                                                                s3_options: dict[str, str], tmp_path: Path) -> None:
    """``refused``: the chunk data files, or (after they were stored) the commit's manifest."""
    uri = f"s3://{s3_bucket}/ckpt"
    via_relay = dict(s3_options, aws_endpoint=f"http://127.0.0.1:{relay.server_address[1]}")
    with ParamStore(uri, storage_options=via_relay, wal_dir=str(tmp_path / "locks")) as store:
        store.save({"w": torch.ones(8)}, step=1)
        state = torch.zeros(1 << 20)  # 4 MiB of zeros, e.g. a fresh optimizer moment
        relay.refuse, relay.refused = f"/{s3_bucket}/ckpt/chunks.lance/{refused}", 0
        try:
            with pytest.raises(StorageError) as info:
                store.save({"opt": state}, step=2)
        finally:
            relay.refuse = None
        assert relay.refused >= 1, "the save never wrote a chunk data file through the relay"
        assert "chunks.lance" in str(info.value)
        assert [i.step for i in store.list()] == [1]
        state.add_(1.0)  # training goes on, in place
        store.save({"bias": torch.zeros(1 << 20), "opt": state}, step=3)
    out = subprocess.run([sys.executable, "-c", _LOAD, uri, json.dumps(s3_options)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == {"steps": [1, 3], "bias_zero": True, "opt_one": True}
    from persisting.ops.verify import verify

    report = verify(uri, storage_options=s3_options)
    assert report.healthy, report.to_json()
    assert report.tables == 2 and report.payloads >= 3  # every stored chunk checked against its key
