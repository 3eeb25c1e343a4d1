"""Creating a dataset on object storage when writers on several hosts may do it at once.

Lance turns two concurrent creations of one dataset into an overwrite: measured on moto S3, two
of four processes each "created" ``t.lance`` and the second's version 2 replaced the first's
rows. On one host the local creation lock (:func:`persisting.engine.writers.creation_lock`)
serialises that; writers whose WAL lives on object storage may run on different hosts with no
shared directory, so they also take a lease (:mod:`persisting.engine.lease`) on the object
``<dataset uri>/_persisting/create/LEASE`` around the check-and-create. A creator that dies
holding it delays the others by at most the lease time; the lease is only taken while the
dataset does not exist yet, so it costs nothing once a table has rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from persisting.engine.lease import Lease
from persisting.engine.objstore import ObjectStore

__all__ = ["creation_lease"]


@contextmanager
def creation_lease(uri: str, storage_options: dict[str, str] | None, ttl: float) -> Iterator[None]:
    """Hold the creation lease of the dataset at ``uri`` (an ``s3://`` URI), waiting up to two
    lease times for another host's creator (LockedError after that)."""
    lease = Lease.acquire(ObjectStore(uri.rstrip("/") + "/_persisting", storage_options), "create",
                          ttl=ttl, wait=2 * ttl + 1.0)
    try:
        yield
    finally:
        lease.release()
