"""A workaround for Pulsing 0.1.2: a bucket whose actor is gone is created again.

Pulsing's ``StorageManager`` caches the bucket actor it resolved or created
(``StorageManager._buckets``) and returns that reference forever. When the actor is gone -- its
node died, or it was stopped -- every later ``get_bucket`` on that node answers "ready" with the
dead reference, and producers fail with ``named_actor_not_found`` / ``no_healthy_instances``
until the process restarts. In a cluster this happens when a survivor becomes a dead node's
bucket owner while name resolution still reports the dead node's bucket as healthy (during
Pulsing's 15-30 s failure detection): the survivor caches the dead actor and never creates the
bucket (seen in ``tests/queue/test_queue_node_death.py`` on a loaded machine: the producer gave
up after 180 s).

:func:`install` wraps ``_get_or_create_bucket`` so that a cached reference whose name no longer
resolves is dropped first; the original code then resolves again or creates the bucket here. It
costs one name lookup per ``get_bucket`` call, which clients make only when they have no
reference of their own (first use, or after a failure). :func:`persisting.queue.register`
installs it.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["install"]

_MARK = "_persisting_revalidates_buckets"


def install(streaming: Any) -> bool:
    """Install the workaround on ``streaming.manager.StorageManager``; False if this Pulsing
    has no such method (then nothing is changed)."""
    manager = getattr(streaming, "manager", None)
    cls = getattr(getattr(manager, "StorageManager", None), "_cls", None)
    original = getattr(cls, "_get_or_create_bucket", None)
    if original is None or not hasattr(cls, "get_bucket"):
        return False
    if getattr(original, _MARK, False):
        return True

    @functools.wraps(original)
    async def get_or_create_bucket(self: Any, topic: str, bucket_id: int, *args: Any, **kwargs: Any) -> Any:
        key = (topic, bucket_id)
        buckets = getattr(self, "_buckets", None)
        if isinstance(buckets, dict) and key in buckets:
            try:
                await self.system.resolve_named(f"bucket_{topic}_{bucket_id}")
            except Exception:  # noqa: BLE001 - not found / no healthy instance: the actor is gone
                buckets.pop(key, None)
        return await original(self, topic, bucket_id, *args, **kwargs)

    setattr(get_or_create_bucket, _MARK, True)
    cls._get_or_create_bucket = get_or_create_bucket
    return True
