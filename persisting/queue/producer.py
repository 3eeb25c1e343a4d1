"""Producer: puts that ride through a node's death, stored once.

Pulsing's ``Queue.put`` neither retries nor forgets its cached proxy of a bucket whose node
died, so a producer keeps failing ("Circuit breaker is open") long after the bucket moved.
:class:`Producer` wraps a queue writer from :func:`persisting.queue.write_queue` and, when a
put fails, drops the cached proxy of that bucket and retries until ``deadline`` seconds have
passed; Pulsing then resolves (or creates) the bucket on its new owner, whose backend takes
the bucket's lease over and replays what the dead owner acknowledged.

A put can fail *after* the old owner logged it (the acknowledgement was lost). Each record is
stamped with ``_producer`` (this producer's id) and ``_seq`` (1, 2, ...), and a bucket opened
with ``backend_options={"dedup": True}`` stores a record only if its ``_seq`` is above the
highest it has from that producer -- so the retry is stored once. Puts of one producer must
be sequential (await each before the next) for that rule to hold.

:meth:`Producer.put_many` sends many records at once: it stamps them in order, groups them by
bucket and sends each group with the bucket actor's ``put_batch`` -- one WAL append (one PUT
with ``wal="object"``) per group, all or none -- the buckets concurrently, each group retried
like ``put``. A bucket's chunks go one after another: Pulsing's bucket actor runs messages
concurrently and may start a later one first, which would make the dedup rule drop the earlier.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from persisting.errors import ConfigError, InvalidRecordError
from persisting.queue.options import DEDUP_FIELDS

__all__ = ["Producer"]


class Producer:
    """Sequential, retried, idempotent puts into one Pulsing queue writer."""

    def __init__(self, writer: Any, *, producer_id: str | None = None, deadline: float = 60.0, retry_interval: float = 0.2) -> None:
        queue = getattr(writer, "queue", writer)
        if not hasattr(queue, "_bucket_refs") or not hasattr(queue, "_hash_partition"):
            raise ConfigError(
                f"Producer needs a Pulsing queue writer (from write_queue), got {type(writer).__name__}", argument="writer"
            )
        if not deadline > 0 or not retry_interval > 0:
            raise ConfigError(f"deadline={deadline!r} and retry_interval={retry_interval!r} must be > 0", argument="deadline")
        self.queue = queue
        self.producer_id = producer_id or secrets.token_hex(8)
        self.deadline = deadline
        self.retry_interval = retry_interval
        self.seq = 0
        self.retries = 0
        self._many = asyncio.Lock()  # put_many calls run one at a time (sequence order per bucket)

    async def put(self, record: dict[str, Any]) -> dict[str, Any]:
        """Put one record (a stamped copy; the caller's dict is not changed), retrying on the
        bucket's next owner until the deadline; re-raises the last error after it."""
        if not isinstance(record, dict):
            raise ConfigError(f"record must be a dict, got {type(record).__name__}", argument="record")
        stamped = self._stamp(record)
        bucket_id = self.queue._hash_partition(stamped.get(self.queue.bucket_column))
        give_up = time.monotonic() + self.deadline
        # a ValueError/TypeError is the record itself: retrying cannot help
        return await self._retrying(bucket_id, lambda: self.queue.put(stamped), give_up, fatal=(ValueError, TypeError))

    async def put_many(self, records: list[dict[str, Any]], *, max_batch: int | None = None) -> list[dict[str, Any]]:
        """Put records (stamped copies) with one ``put_batch`` per bucket -- at most
        ``max_batch`` records per call -- buckets concurrently, order kept within a bucket.

        Returns ``{"bucket_id", "status"}`` per record in input order, as Pulsing's
        ``Queue.put(list)`` does. Bad input raises before anything is sent. A group failing past
        the deadline raises its last error once every bucket is done; the other buckets' groups
        (and this bucket's earlier chunks) are stored.
        """
        if not isinstance(records, list):
            raise ConfigError(f"records must be a list of dict records, got {type(records).__name__}", argument="records")
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ConfigError(f"max_batch must be an int >= 1 or None, got {max_batch!r}", argument="max_batch")
        column = self.queue.bucket_column
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise InvalidRecordError(
                    f"record {i} of put_many is a {type(record).__name__}, not a dict; nothing was sent", index=i
                )
            if column not in record:
                raise InvalidRecordError(
                    f"record {i} of put_many has no bucket column {column!r}; nothing was sent", index=i, field=column
                )
        async with self._many:
            groups: dict[int, list[dict[str, Any]]] = {}
            placed: list[int] = []
            for record in records:
                stamped = self._stamp(record)
                bucket_id = self.queue._hash_partition(stamped[column])
                groups.setdefault(bucket_id, []).append(stamped)
                placed.append(bucket_id)
            give_up = time.monotonic() + self.deadline
            step = max_batch or max(1, max(map(len, groups.values()), default=1))
            outcomes = await asyncio.gather(
                *(self._send_group(b, group, step, give_up) for b, group in groups.items()), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        return [{"bucket_id": b, "status": "ok"} for b in placed]

    async def _send_group(self, bucket_id: int, group: list[dict[str, Any]], step: int, give_up: float) -> None:
        """One bucket's records, ``step`` at a time in order, each chunk retried until ``give_up``."""
        for start in range(0, len(group), step):
            chunk = group[start : start + step]

            async def send(chunk: list[dict[str, Any]] = chunk) -> None:
                bucket = await self.queue._ensure_bucket(bucket_id)
                await bucket.put_batch(chunk)

            await self._retrying(bucket_id, send, give_up)

    def _stamp(self, record: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``record`` with this producer's id and its next sequence number."""
        self.seq += 1
        return {**record, DEDUP_FIELDS[0]: self.producer_id, DEDUP_FIELDS[1]: self.seq}

    async def _retrying(
        self, bucket_id: int, send: Callable[[], Awaitable[Any]], give_up: float,
        fatal: tuple[type[BaseException], ...] = (),
    ) -> Any:
        """``send()`` until it succeeds; after a failure (other than ``fatal``) drop the cached
        proxy of ``bucket_id`` so the bucket is resolved afresh on its next owner, until
        ``give_up`` (then the last error is raised)."""
        while True:
            try:
                return await send()
            except fatal:
                raise
            except Exception:  # noqa: BLE001 - a dead or moving bucket owner: retry on the next one
                if time.monotonic() >= give_up:
                    raise
                self.retries += 1
                self.queue._bucket_refs.pop(bucket_id, None)
                await asyncio.sleep(self.retry_interval)
