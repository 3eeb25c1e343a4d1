"""A small S3 client for the object-store WAL: conditional PUTs, GET, LIST, DELETE.

Built from the same ``storage_options`` Lance takes (``aws_endpoint``, ``aws_access_key_id``,
``aws_secret_access_key``, ``aws_session_token``, ``aws_region``), so a table configured for
its dataset needs nothing more for its WAL. Only the operations the WAL needs exist here:
``put_new`` (``If-None-Match: *``: create or fail), ``put_if_match`` (compare-and-swap on an
ETag), ``get``, ``list``, ``delete`` and ``delete_if_match`` (a conditional DELETE, so cleanup
never removes a lease that was taken meanwhile). A 412 from S3 becomes :class:`PreconditionFailed`;
any other failure becomes :class:`~persisting.errors.StorageError` naming the key.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from persisting.errors import ConfigError, StorageError

__all__ = ["ObjectStore", "PreconditionFailed"]


class PreconditionFailed(Exception):
    """A conditional PUT lost: the key exists (If-None-Match) or changed (If-Match)."""


@dataclass(frozen=True)
class _Location:
    bucket: str
    prefix: str  # no leading or trailing slash


def _parse(uri: str) -> _Location:
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
        raise ConfigError(f"wal_uri {uri!r} is not an s3://bucket/prefix URI", option="wal_uri")
    return _Location(parsed.netloc, parsed.path.strip("/"))


_CLIENTS: dict[tuple[tuple[str, str], ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _client(options: dict[str, str] | None) -> Any:
    """One boto3 client per distinct ``storage_options`` (clients are thread-safe; making one
    costs ~10 ms, which a read-only open would otherwise pay every time)."""
    key = tuple(sorted((str(k), str(v)) for k, v in (options or {}).items()))
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = _new_client(options)
        return _CLIENTS[key]


def _new_client(options: dict[str, str] | None) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - boto3 is the "s3" extra
        raise ConfigError("a WAL on object storage needs boto3: pip install 'persisting[s3]'", option="wal_uri") from exc
    o = {k.lower(): v for k, v in (options or {}).items()}
    endpoint = o.get("aws_endpoint") or o.get("endpoint") or o.get("aws_endpoint_url")
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=o.get("aws_region") or o.get("region") or None,
        aws_access_key_id=o.get("aws_access_key_id") or o.get("access_key_id"),
        aws_secret_access_key=o.get("aws_secret_access_key") or o.get("secret_access_key"),
        aws_session_token=o.get("aws_session_token") or o.get("session_token"),
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=10),
    )


class ObjectStore:
    """Objects under one ``s3://bucket/prefix``; keys passed in are relative to the prefix."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None) -> None:
        self.uri = uri.rstrip("/")
        self._loc = _parse(uri)
        self._s3 = _client(storage_options)

    def _key(self, name: str) -> str:
        return f"{self._loc.prefix}/{name}" if self._loc.prefix else name

    def _fail(self, what: str, name: str, exc: Exception) -> StorageError:
        return StorageError(f"cannot {what} {self.uri}/{name}: {exc}", path=f"{self.uri}/{name}")

    def _call(self, what: str, name: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self._loc.bucket, **kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412 or err.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise PreconditionFailed(f"{self.uri}/{name}") from exc
            if err.get("Code") == "NoSuchBucket":
                raise self._fail(what, name, exc) from exc  # not "the object is missing": the place is
            if status == 404 or err.get("Code") in ("NoSuchKey", "404"):
                raise KeyError(name) from exc
            raise self._fail(what, name, exc) from exc
        except BotoCoreError as exc:
            raise self._fail(what, name, exc) from exc

    def put_new(self, name: str, body: bytes) -> str:
        """Create ``name``; PreconditionFailed if it exists. Returns the new ETag."""
        r = self._call("create", name, self._s3.put_object, Key=self._key(name), Body=body, IfNoneMatch="*")
        return str(r["ETag"])

    def put_if_match(self, name: str, body: bytes, etag: str) -> str:
        """Replace ``name`` only if its ETag is still ``etag``; returns the new ETag."""
        try:
            r = self._call("replace", name, self._s3.put_object, Key=self._key(name), Body=body, IfMatch=etag)
        except KeyError:
            raise PreconditionFailed(f"{self.uri}/{name} is gone") from None
        return str(r["ETag"])

    def get(self, name: str) -> tuple[bytes, str] | None:
        """``(body, etag)`` of ``name``, or None if it does not exist."""
        try:
            r = self._call("read", name, self._s3.get_object, Key=self._key(name))
        except KeyError:
            return None
        return r["Body"].read(), str(r["ETag"])

    def list(self, under: str = "") -> list[str]:
        """Every key below ``under`` (relative names), sorted."""
        return [name for name, _ in self.list_sized(under)]

    def list_sized(self, under: str = "") -> list[tuple[str, int]]:
        """``(name, size)`` of every key below ``under`` (relative names), sorted."""
        return [(name, size) for name, size, _ in self.list_meta(under)]

    def list_meta(self, under: str = "") -> list[tuple[str, int, float]]:
        """``(name, size, last modified as epoch seconds)`` of every key below ``under``, sorted."""
        prefix = self._key(under) if under else (self._loc.prefix + "/" if self._loc.prefix else "")
        out: list[tuple[str, int, float]] = []
        token: str | None = None
        cut = len(self._loc.prefix) + 1 if self._loc.prefix else 0
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            r = self._call("list", under, self._s3.list_objects_v2, **kwargs)
            out.extend((o["Key"][cut:], int(o["Size"]), o["LastModified"].timestamp()) for o in r.get("Contents", []))
            if not r.get("IsTruncated"):
                return sorted(out)
            token = r.get("NextContinuationToken")

    def delete(self, names: list[str]) -> None:
        """Delete ``names`` (missing ones are fine), 1000 per request."""
        for i in range(0, len(names), 1000):
            chunk = names[i : i + 1000]
            objects = [{"Key": self._key(n)} for n in chunk]
            self._call("delete", chunk[0], self._s3.delete_objects, Delete={"Objects": objects, "Quiet": True})

    def delete_if_match(self, name: str, etag: str) -> bool:
        """Delete ``name`` only if its ETag is still ``etag``; False if it changed or is gone."""
        try:
            self._call("delete", name, self._s3.delete_object, Key=self._key(name), IfMatch=etag)
        except (PreconditionFailed, KeyError):
            return False
        return True
