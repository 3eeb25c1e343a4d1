"""The options of the two queue backends, in one typed place with their defaults.

Pulsing hands a backend its ``backend_options`` as keyword arguments; :meth:`from_kwargs`
turns them into a frozen dataclass, refusing unknown names and wrong types with a message that
names the option, so a typo such as ``enable_wall=True`` fails at once instead of being ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from persisting.engine import TableOptions
from persisting.engine.names import check_name
from persisting.errors import ConfigError

__all__ = ["LanceBackendOptions", "PersistingBackendOptions"]

DEFAULT_FLUSH_THRESHOLD = 1000
DEFAULT_WAL_FLUSH_THRESHOLD = 10_000
FLUSH_BYTES = 64 * 1024 * 1024
DEDUP_FIELDS = ("_producer", "_seq")  # the idempotency key persisting.queue.Producer stamps
# Lance's column encodings: "snappy" is refused (Lance has none; storing lz4 under that name
# would report a codec that was never used).
_LANCE_ENCODING = {None: None, "zstd": "zstd", "lz4": "lz4"}


def _check_int(owner: str, name: str, value: object, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{owner} option {name}={value!r} must be an int >= {minimum}", option=name
        )


def _check_bool(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner} option {name}={value!r} must be True or False", option=name)


@dataclass(frozen=True)
class LanceBackendOptions:
    """Options of :class:`~persisting.queue.LanceBackend`.

    flush_threshold: records held in the write buffer before they are committed to Lance
        (``None``: 1,000). Buffered records are readable at once, durable once committed.
    max_record_size: bytes one record may take in Arrow form (64 MiB); larger records are
        refused with ``InvalidRecordError`` before anything is written.
    topic: the Pulsing topic this bucket belongs to (``persisting.queue.write_queue`` passes
        it). The bucket records it on first open; a backend told another topic refuses the
        bucket with ``TopicMismatchError`` instead of mixing two topics' records.
    uri: keep the buckets on object storage: bucket N of a topic is the Lance dataset
        ``<uri>/<topic>/bucket_N.lance`` (``<uri>/bucket_N.lance`` without a topic), shared by
        every node, so the node that owns the bucket next finds its records. ``storage_path``
        then only holds a local WAL (PersistingBackend with ``wal="local"``).
    storage_options: Lance/S3 options for ``uri`` (``aws_endpoint``, keys, ``aws_region``...).
    """

    flush_threshold: int | None = None
    max_record_size: int = 64 * 1024 * 1024
    topic: str | None = None
    uri: str | None = None
    storage_options: dict[str, str] | None = None

    backend_name: ClassVar[str] = "LanceBackend"

    def __post_init__(self) -> None:
        if self.flush_threshold is not None:
            _check_int(self.backend_name, "flush_threshold", self.flush_threshold)
        _check_int(self.backend_name, "max_record_size", self.max_record_size)
        if self.topic is not None:
            check_name(self.topic, what="topic")
        if self.uri is not None and (not isinstance(self.uri, str) or "://" not in self.uri):
            raise ConfigError(
                f"{self.backend_name} option uri={self.uri!r} must be an object-store URI such as "
                "s3://bucket/queues (local buckets go in storage_path)", option="uri",
            )
        so = self.storage_options
        if so is not None and (not isinstance(so, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in so.items())):
            raise ConfigError(f"{self.backend_name} option storage_options must be a dict of str to str", option="storage_options")
        if so is not None and self.uri is None:
            raise ConfigError(f"{self.backend_name} option storage_options needs uri (where the buckets live)", option="storage_options")

    def bucket_uri(self, name: str) -> str | None:
        """Where bucket ``name`` lives on object storage, or None (local, in storage_path)."""
        if self.uri is None:
            return None
        base = self.uri.rstrip("/")
        return f"{base}/{self.topic}/{name}.lance" if self.topic else f"{base}/{name}.lance"

    @property
    def remote_wal(self) -> bool:
        return False

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> LanceBackendOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            hint = " (WAL, compression and metrics are PersistingBackend options)" if cls is LanceBackendOptions else ""
            raise ConfigError(
                f"{cls.backend_name} got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"known options: {', '.join(sorted(known))}{hint}",
                option=unknown[0],
            )
        return cls(**options)

    @property
    def wal_enabled(self) -> bool:
        return False

    @property
    def threshold(self) -> int:
        """The flush threshold in effect."""
        return self.flush_threshold if self.flush_threshold is not None else DEFAULT_FLUSH_THRESHOLD

    @property
    def column_compression(self) -> str | None:
        """The Lance compression of the bucket's string, binary and list columns."""
        return None

    def table_options(self) -> TableOptions:
        """Without a WAL the backend buffers records itself and hands the table one batch of
        ``flush_threshold`` records, which the table commits in the background."""
        return TableOptions(durability="none", flush_rows=self.threshold, flush_bytes=FLUSH_BYTES,
                            column_compression=self.column_compression)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PersistingBackendOptions(LanceBackendOptions):
    """Options of :class:`~persisting.queue.PersistingBackend`: those of LanceBackend plus

    enable_wal: log every acknowledged record to the write-ahead log (False: durable on flush).
    compression: None, "zstd" or "lz4": how Lance compresses the bucket's string, binary and
        list columns (``lance-encoding:compression``); None stores them uncompressed, the
        engine's default. "snappy" is refused with ``ConfigError``: Lance has no snappy column
        encoding, and storing another codec under that name would misreport what is on disk.
        Numbers keep Lance's own encodings.
    enable_metrics: add a ``metrics`` dict to ``stats()`` and count bytes read.
    wal_sync_interval: seconds between WAL fsyncs (group commit); 0 fsyncs every write.
    max_wal_size: bytes at which a WAL segment file rotates (100 MiB).
    flush_threshold: as for LanceBackend, but 10,000 by default with the WAL on: the WAL
        already makes buffered records durable, and each Lance commit costs ~30 ms of fsyncs.
    wal: ``"local"`` (a WAL directory in storage_path) or ``"object"``: the WAL beside the
        bucket on object storage (needs ``uri``; turns the WAL on), owned by the bucket's
        identity under a lease: the node that owns the bucket next replays it, and a put is
        acknowledged only once its group's PUT succeeded (``wal_sync_interval`` is unused).
    wal_lease_seconds: with ``wal="object"``: a dead owner's bucket is taken over this long after
        its last lease renewal (keep it below Pulsing's ~15 s failure detection).
    wal_group_interval: with ``wal="object"``: seconds a group of puts waits before its PUT.
    dedup: store a record carrying ``_producer`` and ``_seq`` only if ``_seq`` is above the
        highest seen from that producer in this bucket (``persisting.queue.Producer`` sets them),
        so a put retried after a lost acknowledgement is stored once.
    """

    enable_wal: bool = False
    compression: str | None = None
    enable_metrics: bool = False
    wal_sync_interval: float = 1.0
    max_wal_size: int = 100 * 1024 * 1024
    wal: str = "local"
    wal_lease_seconds: float = 10.0
    wal_group_interval: float = 0.0
    dedup: bool = False

    backend_name: ClassVar[str] = "PersistingBackend"

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = self.backend_name
        _check_bool(owner, "enable_wal", self.enable_wal)
        _check_bool(owner, "enable_metrics", self.enable_metrics)
        if self.compression == "snappy":
            raise ConfigError(
                f"{owner} option compression='snappy' is not available for queue records: Lance has no "
                "snappy column encoding; choose 'lz4' (fast) or 'zstd' (smaller)",
                option="compression",
            )
        if self.compression not in _LANCE_ENCODING:
            raise ConfigError(
                f"{owner} option compression={self.compression!r} is not supported; choose one of "
                f"{', '.join(repr(c) for c in _LANCE_ENCODING)}",
                option="compression",
            )
        interval = self.wal_sync_interval
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval <= 86_400:
            raise ConfigError(
                f"{owner} option wal_sync_interval={interval!r} must be a number of seconds from 0 "
                "(0 fsyncs every write) to 86400 (not NaN or infinity)",
                option="wal_sync_interval",
            )
        _check_int(owner, "max_wal_size", self.max_wal_size)
        _check_bool(owner, "dedup", self.dedup)
        if self.wal not in ("local", "object"):
            raise ConfigError(f"{owner} option wal={self.wal!r} must be 'local' or 'object'", option="wal")
        if self.wal == "object" and self.uri is None:
            raise ConfigError(f"{owner} option wal='object' needs uri: the WAL lives beside the bucket", option="wal")

    @property
    def wal_enabled(self) -> bool:
        return self.enable_wal or self.wal == "object"

    @property
    def remote_wal(self) -> bool:
        return self.wal == "object"

    @property
    def threshold(self) -> int:
        if self.flush_threshold is not None:
            return self.flush_threshold
        return DEFAULT_WAL_FLUSH_THRESHOLD if self.enable_wal else DEFAULT_FLUSH_THRESHOLD

    @property
    def column_compression(self) -> str | None:
        return _LANCE_ENCODING[self.compression]

    def table_options(self) -> TableOptions:
        if not self.wal_enabled:
            return super().table_options()
        return TableOptions(
            durability="always" if self.wal_sync_interval == 0 or self.remote_wal else "batch",
            wal_lease_seconds=self.wal_lease_seconds,
            wal_group_interval=self.wal_group_interval,
            dedup=DEDUP_FIELDS if self.dedup else None,
            wal_sync_interval=float(self.wal_sync_interval),
            max_wal_size=self.max_wal_size,
            flush_rows=self.threshold,
            flush_bytes=FLUSH_BYTES,
            column_compression=self.column_compression,  # type: ignore[arg-type]
        )
