"""Writer leases on object storage: who owns a writer identity, in which epoch.

One object ``<writer>/LEASE`` per writer identity holds ``{"epoch", "owner", "expires",
"released"}`` as JSON. It is created with ``If-None-Match: *`` and changed only by
compare-and-swap (``If-Match: <etag>``), so at most one process moves it to a given epoch.
A lease may be taken when it is released or when its ``expires`` (wall-clock seconds) has
passed; taking it bumps the epoch. The holder renews it every ``ttl / 3`` in the background
and treats it as valid only until ``expires - ttl / 4`` by its own clock, so a holder paused
past its lease (SIGSTOP, a long GC, a partition) finds out before it acknowledges or commits
anything: its renewal loses the compare-and-swap and it raises :class:`FencedError`.

A released lease of an identity that left no object behind is deleted by ``Table.cleanup()``
once older than the lease time, by a conditional DELETE (a lease taken meanwhile stays);
re-taking that identity starts at the epoch above its newest commit, never at an old one.
If the store is unreachable at release, the lease just expires.

What wall clocks must do: hosts' clocks agree within ``ttl / 4``. The WAL's own fencing does
not depend on clocks (see :mod:`persisting.engine.remote_wal`); only the check before a Lance
commit does, and a commit that passed it and then stalled is stopped by the new owner's Lance
fence (:func:`persisting.engine.commits.fence_commits`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from persisting.engine.objstore import ObjectStore, PreconditionFailed
from persisting.errors import CorruptionError, FencedError, LockedError, StorageError

__all__ = ["Lease", "LeaseState", "read_lease"]


@dataclass(frozen=True)
class LeaseState:
    """A lease object's content."""

    epoch: int
    owner: str
    expires: float
    released: bool

    def encode(self) -> bytes:
        return json.dumps(
            {"epoch": self.epoch, "owner": self.owner, "expires": self.expires, "released": self.released}
        ).encode()

    @property
    def free(self) -> bool:
        return self.released or time.time() > self.expires


def _lease_key(writer: str) -> str:
    return f"{writer}/LEASE"


def read_lease(store: ObjectStore, writer: str) -> tuple[LeaseState, str] | None:
    """The lease of ``writer`` and its ETag, or None if it was never taken."""
    got = store.get(_lease_key(writer))
    if got is None:
        return None
    body, etag = got
    try:
        d = json.loads(body)
        return LeaseState(int(d["epoch"]), str(d["owner"]), float(d["expires"]), bool(d["released"])), etag
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptionError(
            f"{store.uri}/{_lease_key(writer)}: unreadable writer lease ({exc}); delete it only if no "
            "process writes as this writer", path=f"{store.uri}/{_lease_key(writer)}", offset=0,
        ) from exc


class Lease:
    """A held lease: its epoch, renewed in the background until released or lost."""

    def __init__(self, store: ObjectStore, writer: str, ttl: float, state: LeaseState, etag: str, previous: int) -> None:
        self.store, self.writer, self.ttl = store, writer, ttl
        self.epoch = state.epoch
        self.previous_epoch = previous  # the epoch it was taken from (0: never held before)
        self._state, self._etag = state, etag
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"persisting-lease-{writer}", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(
        cls, store: ObjectStore, writer: str, *, ttl: float, wait: float, min_epoch: Callable[[], int] | None = None
    ) -> Lease:
        """Take ``writer``'s lease, waiting up to ``wait`` s for a live holder's lease to
        expire; LockedError if it does not. ``min_epoch`` gives the first epoch when no lease
        object exists (cleanup removed a released one): epochs, hence LSNs, never go back."""
        owner = secrets.token_hex(8)
        deadline = time.monotonic() + wait
        while True:
            found = read_lease(store, writer)
            now = time.time()
            try:
                if found is None:
                    state = LeaseState(max(1, min_epoch() if min_epoch else 1), owner, now + ttl, False)
                    return cls(store, writer, ttl, state, store.put_new(_lease_key(writer), state.encode()), 0)
                old, etag = found
                if old.free:
                    state = LeaseState(old.epoch + 1, owner, now + ttl, False)
                    new_etag = store.put_if_match(_lease_key(writer), state.encode(), etag)
                    return cls(store, writer, ttl, state, new_etag, old.epoch)
            except PreconditionFailed:
                continue  # another process moved it first: look again
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockedError(
                    f"writer {writer!r} of {store.uri} is held by a live process (epoch {old.epoch}, lease "
                    f"expires in {old.expires - now:.1f} s); wait for it to close or die, or use another writer id",
                    path=f"{store.uri}/{_lease_key(writer)}",
                )
            time.sleep(min(0.05 + max(0.0, old.expires - now), left, 0.25))

    def _cas(self, state: LeaseState) -> None:
        """Move the lease to ``state``; FencedError if someone else moved it."""
        try:
            self._etag = self.store.put_if_match(_lease_key(self.writer), state.encode(), self._etag)
            self._state = state
        except PreconditionFailed:
            self._lost = f"epoch {self.epoch} was taken over"
            raise self.fenced() from None

    def fenced(self) -> FencedError:
        return FencedError(
            f"writer {self.writer!r} of {self.store.uri} lost its lease ({self._lost}); another process "
            "owns it now. Nothing more is logged or committed by this table: open it again",
            path=f"{self.store.uri}/{_lease_key(self.writer)}", epoch=self.epoch,
        )

    def check(self) -> None:
        """Raise FencedError unless the lease is surely still ours (renewing it if needed)."""
        with self._lock:
            if self._lost is not None:
                raise self.fenced()
            if time.time() < self._state.expires - self.ttl / 4:
                return
            start = time.time()
            self._cas(LeaseState(self.epoch, self._state.owner, start + self.ttl, False))

    def lose(self, why: str) -> None:
        """Record that the lease is gone (a fenced PUT proved it)."""
        with self._lock:
            self._lost = self._lost or why

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                if self._lost is not None:
                    return
                start = time.time()
                try:
                    self._cas(LeaseState(self.epoch, self._state.owner, start + self.ttl, False))
                except FencedError:
                    return
                except Exception:  # noqa: BLE001 - a failed renewal is retried; check() decides
                    continue

    def release(self) -> None:
        """Stop renewing and mark the lease released, so the next owner need not wait."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._lost is None:
                try:
                    self._cas(LeaseState(self.epoch, self._state.owner, time.time(), True))
                except (FencedError, StorageError):
                    pass  # taken over, or the store is unreachable: the lease then simply expires
                self._lost = "released"
