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
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from persisting.errors import ConfigError
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

    async def put(self, record: dict[str, Any]) -> dict[str, Any]:
        """Put one record (a stamped copy; the caller's dict is not changed), retrying on the
        bucket's next owner until the deadline; re-raises the last error after it."""
        if not isinstance(record, dict):
            raise ConfigError(f"record must be a dict, got {type(record).__name__}", argument="record")
        self.seq += 1
        stamped = {**record, DEDUP_FIELDS[0]: self.producer_id, DEDUP_FIELDS[1]: self.seq}
        column = self.queue.bucket_column
        bucket_id = self.queue._hash_partition(stamped.get(column))
        give_up = time.monotonic() + self.deadline
        while True:
            try:
                return await self.queue.put(stamped)  # type: ignore[no-any-return]
            except (ValueError, TypeError):
                raise  # the record itself is bad: retrying cannot help
            except Exception:  # noqa: BLE001 - a dead or moving bucket owner: retry on the next one
                if time.monotonic() >= give_up:
                    raise
                self.retries += 1
                self.queue._bucket_refs.pop(bucket_id, None)  # resolve the bucket afresh next time
                await asyncio.sleep(self.retry_interval)
