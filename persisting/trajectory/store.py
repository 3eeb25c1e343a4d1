"""TrajectoryStore: log RL episodes step by step, then query and sample them.

Layout under ``path``: three engine tables.

- ``steps.lance``: one row per step: ``episode_id``, ``step`` and the user's fields (see
  :mod:`persisting.trajectory.fields` for how values map to columns).
- ``episodes.lance``: one row per *revision* of an episode: ``episode_id``, ``rev``,
  ``status``, ``length``, ``return``, ``start_time``, ``end_time`` and user metadata. The
  engine appends only, so an episode's start, its end and every later
  :meth:`~TrajectoryStore.update_episodes` append a new revision; readers keep the newest.
- ``ids.lance``: reserved blocks of episode ids and the end of each writer session (see
  :mod:`persisting.trajectory.ids`).

Many writers: any number of processes (and stores in one process) may open the same path and
log at once. Each is a *session* (:mod:`persisting.trajectory.sessions`); its episode ids come
from blocks it reserved, so ids never collide and need no round trip per episode. Rows one
writer flushed are seen by every other handle's next read (``episodes()``, ``episode(id)``,
sampling): each read moves to the newest commits, episodes first, then steps, and shows an
ended episode only once every step its end row counts is visible.

Durability: steps are held in the episode until ``step_buffer`` of them gather, then handed
to the steps table (that is when a step is *acknowledged*); with durability ``"batch"`` the
table's WAL makes them durable within ``wal_sync_interval`` (1 s), :meth:`~TrajectoryStore.sync`
makes them durable now. When a writer dies, the next writer that opens the store adopts its
WALs and marks its episodes still ``open`` (and its steps whose episode row was lost)
``incomplete`` with every step that survived -- exactly once, and only that writer's episodes;
the other writers go on meanwhile. ``recovered`` lists the episodes this open recovered.

Where the WALs live (``wal``): ``"local"`` (default) -- a local directory (``wal_dir``, or
inside a local store) shared by every writer, with flocks for sessions, so all writers run on
one host; ``"object"`` -- an ``s3://`` store keeps its WALs, sessions and id counter on the
object store too (:mod:`persisting.trajectory.remote_sessions`), so writers may run on any
host and what a writer acknowledged survives its host's death.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Literal, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from persisting.engine.durable import is_local, local_path
from persisting.engine.options import Durability, TableOptions
from persisting.engine.shell import StoreShell, check_choice, check_int
from persisting.engine.table import Table
from persisting.engine.remote_wal import remote_wal_uri
from persisting.errors import ConfigError, InvalidRecordError, NotFoundError, SchemaError
from persisting.trajectory.episode import Episode, rows_of
from persisting.trajectory.fields import FieldSpec, arrow_category, check_column, value_category
from persisting.trajectory.ids import IDS_SCHEMA, EpisodeIds, SessionRanges, high_water, mark_recovered, open_sessions
from persisting.trajectory.registry import FieldRegistry
from persisting.trajectory.viewfile import view_dir
from persisting.trajectory.writing import EpisodeWriter
from persisting.trajectory.reading import EpisodeReads
from persisting.trajectory.schema import EPISODE_COLUMNS, EPISODE_SCHEMA, STATUSES
from persisting.trajectory.remote_sessions import RemoteSessions, writer_id
from persisting.trajectory.sessions import Sessions, new_session_id

__all__ = ["TrajectoryStore"]


def _metadata_value(key: str, value: Any) -> Any:
    check_column(key, value, what="episode metadata")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Mapping, set, frozenset)) or callable(value):
        raise InvalidRecordError(
            f"episode metadata {key!r} is a {type(value).__name__}; use scalars, strings or lists", field=key
        )
    return value


# Steps and episode rows are committed every 10,000 rows or once the oldest has waited 1 s:
# handles open in other processes (samplers, readers) see a writer's steps within about a
# second however slowly it writes (before, an open handle saw a writer of one step a second
# ~3 hours late; a handle opened later replays the WAL and saw them at once, as it still does).
DEFAULT_OPTIONS = TableOptions(flush_interval=1.0)


class TrajectoryStore:
    """Episodes and their steps in one directory (local path or object-store URI).

    durability: ``"batch"`` (default; steps durable within ``wal_sync_interval``),
        ``"always"`` (every hand-off fsynced) or ``"none"`` (durable at flush/close only).
    step_buffer: steps an episode holds before handing them to the table.
    blob_threshold: arrays of at least this many bytes are stored as tensor blobs.
    ragged: fields whose array values vary in length (stored as list columns).
    wal_dir: a local directory for the WALs and locks; required when ``path`` is remote
        and ``wal="local"``. Every writer of one store must use the same ``wal_dir`` (the
        default, for a local ``path``, is inside it): that is where writers find each other.
    options: the tables' engine options (default :data:`DEFAULT_OPTIONS`: commits every 10,000
        rows or 1 s after the oldest uncommitted step was handed over, whichever comes first).
    wal: ``"local"`` (default) or ``"object"``: an ``s3://`` store whose WALs, writer sessions
        and episode-id counter live on the object store beside it (no ``wal_dir``; writers on
        any host; a dead writer's acknowledged steps are adopted by the next opener anywhere).
        Costs an object PUT per group commit (``wal_sync_interval``) and per table and ~a dozen
        requests per open; a dead writer is noticed once its lease expires
        (``TableOptions.wal_lease_seconds``). Every writer of one store uses the same ``wal``.
    """

    def __init__(
        self,
        path: str,
        *,
        durability: Durability = "batch",
        storage_options: dict[str, str] | None = None,
        read_only: bool = False,
        wal_dir: str | None = None,
        step_buffer: int = 256,
        blob_threshold: int = 64 * 1024,
        ragged: Iterable[str] = (),
        options: TableOptions | None = None,
        wal: Literal["local", "object"] = "local",
    ) -> None:
        check_choice("wal", wal, ("local", "object"), store=f"TrajectoryStore {path}")
        remote_wal = wal == "object"
        if remote_wal and (wal_dir is not None or not str(path).startswith(("s3://", "s3a://"))):
            raise ConfigError(
                f"TrajectoryStore {path}: wal='object' keeps the WALs on the object store beside an s3:// "
                f"store; got path {path!r} and wal_dir {wal_dir!r} (use an s3:// path and no wal_dir, or "
                "wal='local')", argument="wal",
            )
        self._shell = StoreShell("TrajectoryStore", path, read_only=read_only, wal_dir=wal_dir, object_wal=remote_wal)
        self.step_buffer = check_int("step_buffer", step_buffer, store=str(self._shell), minimum=1)
        self.blob_threshold = check_int("blob_threshold", blob_threshold, store=str(self._shell), minimum=0)
        check_choice("durability", durability, ("none", "batch", "always"), store=str(self._shell))
        self.path = self._shell.path
        self.read_only = self._shell.read_only
        self.ragged = frozenset(ragged)
        self._lock = threading.RLock()
        self._open: dict[int, Episode] = {}
        self._meta_kinds: dict[str, str | None] = {}
        self._fields = FieldRegistry(ragged=self.ragged, blob_threshold=blob_threshold)
        self.recovered: list[int] = []
        self._sessions: Sessions | RemoteSessions | None = None
        self._session_id = new_session_id()
        opts = options or DEFAULT_OPTIONS
        opts = TableOptions(**{**opts.__dict__, "durability": durability})
        tables: list[Table] = []

        def table(name: str, topts: TableOptions, schema: pa.Schema | None = None) -> Table:
            uri = self._shell.table_uri(name)
            t = Table(
                uri, options=topts, schema=schema, storage_options=storage_options,
                read_only=read_only, wal_dir=self._shell.table_wal_dir(name),
                store="trajectory", name=name, follow=False,
                wal_uri=remote_wal_uri(uri) if remote_wal else None,
                writer_id=writer_id(self._session_id) if remote_wal and not read_only else None,
            )
            tables.append(t)
            return t

        try:
            if read_only:
                self._episodes = table("episodes", opts, EPISODE_SCHEMA)
                self._steps = table("steps", opts)
                self._load_specs()
            else:
                if remote_wal:
                    uris = {n: self._shell.table_uri(n) for n in ("ids", "episodes", "steps")}
                    self._sessions = RemoteSessions(self.path, storage_options, uris, opts.wal_lease_seconds)
                else:
                    wal_root = self._shell.wal_dir  # a remote store without one was refused by the shell
                    root = os.path.join(wal_root or local_path(self.path), "sessions")
                    self._sessions = Sessions(root, self.path)
                with self._sessions.locked():  # one opener at a time adopts and recovers dead writers
                    self._ids = table("ids", TableOptions(durability="always", compact_fragments=16,
                                                          wal_lease_seconds=opts.wal_lease_seconds), IDS_SCHEMA)
                    # episodes before steps: the writer hands steps to their table before the
                    # episode row that counts them, so a reader that pins episodes first sees them
                    self._episodes = table("episodes", opts, EPISODE_SCHEMA)
                    self._steps = table("steps", opts)
                    self._load_specs()
                    floor = self._recover()
                    self._sessions.start(self._session_id, {"steps": self._steps.writer_id,
                                                            "episodes": self._episodes.writer_id})
                    self._id_source = EpisodeIds(self._ids, self._sessions, self._session_id, floor)
                    self._id_source.reserve_locked()  # the first block now: the first episode costs no commit
        except BaseException:
            if self._sessions is not None:
                self._sessions.release()
            for t in reversed(tables):
                t.close()
            raise

    def _load_specs(self) -> None:
        self._fields.load(self._steps.schema)
        self._reads = EpisodeReads(
            path=self.path, lock=self._lock, steps=self._steps, episodes=self._episodes, fields=self._fields,
            open_episodes=self._open, closed=lambda: self._shell.closed,
            saved_view=view_dir(local_path(self.path)) if is_local(self.path) else None,
        )
        self._writer = EpisodeWriter(
            lock=self._lock, fields=self._fields, steps=self._steps, episodes=self._episodes,
            step_buffer=self.step_buffer, check_writable=self._shell.check_writable, check_metadata=self._check_metadata,
            ended=lambda ep: self._open.pop(ep.id, None), closed=lambda: self._shell.closed,
        )


    # -- ids and recovery -----------------------------------------------------------------
    def _new_id(self) -> int:
        return self._id_source.new_id()

    def _recover(self) -> int:
        """Recover every dead writer session (after this open adopted dead writers' WALs; under
        the store lock, or, with ``wal="object"``, with each dead session claimed by its lease);
        return the lowest id no episode uses yet."""
        assert self._sessions is not None
        sessions = self._sessions
        dead: dict[str, Any] = {d.session_id: d for d in sessions.dead(open_sessions(self._ids))}
        self._ids.refresh()  # after claiming: a session another opener just recovered is ended now
        if dead:  # and the WALs another opener adopted after these tables opened are committed now
            self._episodes.refresh()
            self._steps.refresh()
            self._fields.follow(self._steps.schema)
        waiting = sessions.unadopted(list(dead.values()), {"steps": self._steps, "episodes": self._episodes})
        recovered: list[int] = []
        try:
            for sid, ranges in sorted(open_sessions(self._ids).items()):
                d = dead.get(sid)
                if d is None:
                    continue  # alive (or claimed by another opener, which recovers it)
                if sid in waiting:
                    dead.pop(sid).release()  # died after this open adopted WALs: the next open recovers it
                    continue
                recovered += self._recover_session(ranges)
                mark_recovered(self._ids, sid)
            for d in dead.values():
                sessions.forget(d)
        finally:
            for d in dead.values():
                d.release()
        self.recovered = sorted(recovered)
        floor = high_water(self._ids)
        above = self._episodes.scan(columns=["episode_id"], filter=f"episode_id >= {floor}") if self._episodes.count() else None
        if above is not None and above.num_rows:
            floor = int(pc.max(above.column("episode_id")).as_py()) + 1
        return floor

    def _recover_session(self, ranges: SessionRanges) -> list[int]:
        """Mark a dead session's open episodes, and its steps whose episode row was lost,
        ``incomplete`` with the steps that survived; return their ids."""
        where = ranges.sql()
        latest = self._reads.latest(where, visible_only=False)
        known = {r["episode_id"]: r for r in latest.to_pylist()}
        specs = self._fields.specs
        has_reward = "reward" in specs and specs["reward"].kind == "scalar"
        cols = ["episode_id"] + (["reward"] if has_reward else [])
        found = self._steps.scan(columns=cols, filter=where) if self._steps.count() else None
        lengths: dict[int, int] = {}
        returns: dict[int, float] = {}
        if found is not None:
            rewards = found.column("reward").to_pylist() if has_reward else None
            for j, eid in enumerate(found.column("episode_id").to_pylist()):
                lengths[eid] = lengths.get(eid, 0) + 1
                if rewards is not None and rewards[j] is not None:
                    returns[eid] = returns.get(eid, 0.0) + float(rewards[j])
        dead = sorted({e for e, r in known.items() if r["status"] == "open"} | (set(lengths) - set(known)))
        now = datetime.now(timezone.utc)
        rows = []
        for eid in dead:
            row = dict(known.get(eid, {"episode_id": eid, "rev": -1}))
            row.update(rev=row["rev"] + 1, status="incomplete", length=lengths.get(eid, 0), end_time=now)
            row["return"] = returns.get(eid)
            rows.append(row)
        if rows:
            self._episodes.append(rows)
            self._episodes.flush()  # before the session is marked recovered
        return dead

    # -- writing --------------------------------------------------------------------------
    def _check_writable(self) -> None:
        self._shell.check_writable()

    def _check_metadata(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Copies of metadata values, refused (SchemaError) when a value's kind clashes with
        the column already stored or offered by an episode still open."""
        out = {}
        schema = self._episodes.schema
        for key, value in metadata.items():
            if key in EPISODE_COLUMNS or not isinstance(key, str) or not key:
                raise InvalidRecordError(f"episode metadata may not be named {key!r}: the store sets it", field=key)
            value = _metadata_value(key, value)
            offered = value_category(value)
            stored: str | None
            if schema is not None and key in schema.names:
                stored = arrow_category(schema.field(key).type)
            else:
                stored = self._meta_kinds.get(key)
            if offered is not None and stored is not None and offered != stored and {offered, stored} != {"int", "float"}:
                raise SchemaError(
                    f"episode metadata {key!r} is stored as {stored} but this episode offers {offered} ({value!r})",
                    field=key, stored_type=stored, offered_type=offered,
                )
            out[key] = value
        for key, value in out.items():
            self._meta_kinds.setdefault(key, value_category(value))
        return out

    @overload
    def episode(self, episode_id: int, /) -> dict[str, np.ndarray]: ...
    @overload
    def episode(self, **metadata: Any) -> Episode: ...

    def episode(self, *args: int, **metadata: Any) -> Any:
        """``episode(**metadata)`` begins an episode (use it with ``with``);
        ``episode(episode_id)`` reads one back as a dict of numpy arrays."""
        if args:
            if len(args) > 1 or metadata:
                raise InvalidRecordError("episode(episode_id) reads one episode; begin one with episode(**metadata)")
            return self.read_episode(args[0])
        return self.begin_episode(**metadata)

    def begin_episode(self, **metadata: Any) -> Episode:
        """Start an episode with metadata columns (``env="CartPole-v1"``, ``seed=3``...)."""
        with self._lock:
            self._check_writable()
            meta = self._check_metadata(metadata)
            ep = Episode(self._writer, self._new_id(), meta, datetime.now(timezone.utc))
            self._open[ep.id] = ep
            return ep

    def update_episodes(self, updates: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]] | pa.Table) -> int:
        """Merge fields into existing episodes by ``episode_id`` (e.g. rewards that arrive
        later); new fields become columns. Unknown ids raise NotFoundError and change nothing.
        Returns the number of episodes updated."""
        if isinstance(updates, pa.Table):
            updates = updates.to_pylist()
        elif isinstance(updates, Mapping):
            updates = rows_of(updates)
        else:
            updates = rows_of(updates)
        with self._lock:
            self._check_writable()
            merged: dict[int, dict[str, Any]] = {}
            for i, upd in enumerate(updates):
                if "episode_id" not in upd:
                    raise InvalidRecordError(f"update {i} has no 'episode_id'", index=i)
                eid = int(upd["episode_id"])
                fields = {k: v for k, v in upd.items() if k != "episode_id"}
                for key in ("rev", "start_time", "end_time"):
                    if key in fields:
                        raise InvalidRecordError(f"update {i} sets {key!r}, which only the store sets", field=key)
                if "status" in fields and fields["status"] not in STATUSES:
                    raise InvalidRecordError(f"update {i}: status {fields['status']!r} is not one of {STATUSES}")
                extra = {k: _metadata_value(k, v) for k, v in fields.items()}
                merged.setdefault(eid, {}).update(extra)
            if not merged:
                return 0
            still_open = {e: merged.pop(e) for e in list(merged) if e in self._open}
            for eid, fields in still_open.items():
                core = sorted(set(fields) & set(EPISODE_COLUMNS))
                if core:
                    raise InvalidRecordError(f"episode {eid} is still open: end it before setting {core}", episode_id=eid)
            if merged:
                self._episodes.refresh()  # the newest revision of any writer, to build on
            current = {r["episode_id"]: r for r in self._reads.latest(ids=list(merged), visible_only=False).to_pylist()} if merged else {}
            missing = sorted(set(merged) - set(current))
            if missing:
                raise NotFoundError(f"trajectory store {self.path} has no episode(s) {missing[:10]}; nothing was updated",
                                    episode_ids=missing)
            rows = [{**current[eid], **fields, "rev": current[eid]["rev"] + 1} for eid, fields in merged.items()]
            if rows:
                self._episodes.append(rows)
            for eid, fields in still_open.items():  # written with the episode's end row
                self._open[eid].metadata.update(fields)
            return len(rows) + len(still_open)

    def flush(self) -> None:
        """Hand every open episode's steps to the tables and commit them to Lance."""
        with self._lock:
            self._check_writable()
            for ep in list(self._open.values()):
                ep.flush()
            self._steps.flush()
            self._episodes.flush()

    def sync(self) -> None:
        """Make every step added so far durable now (hand off, then fsync the WALs)."""
        with self._lock:
            self._check_writable()
            for ep in list(self._open.values()):
                ep.flush()
            self._steps.sync()
            self._episodes.sync()

    def compact(self) -> None:
        """Merge small fragments of both tables, then save the sampling view beside them
        (local stores), so the next handle to open the store samples without a rebuild."""
        with self._lock:
            self._check_writable()
            self.flush()
            self._steps.compact()
            self._episodes.compact()
            self._reads.reset_view()
            self._reads.catch_up(episodes=False)
            self._reads.view.save()

    def refresh(self) -> None:
        """Move to every writer's newest commits now (each read does this on its own):
        episodes before steps, so every ended episode visible afterwards has all its steps."""
        with self._lock:
            self._check_open()
            self._reads.catch_up()

    # -- reading (the store's EpisodeReads does the work) ------------------------------------
    def _check_open(self) -> None:
        self._shell.check_open()

    def episodes(self, filter: str | None = None) -> pa.Table:
        return self._reads.episodes(filter)

    def read_episode(self, episode_id: int, *, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return self._reads.read_episode(episode_id, fields=fields)

    def sample_steps(self, n: int, *, seed: int | np.random.Generator | None = None,
                     fields: Sequence[str] | None = None, obs_field: str = "obs") -> dict[str, np.ndarray]:
        return self._reads.sample_steps(n, seed=seed, fields=fields, obs_field=obs_field)

    def sample_slices(self, n: int, length: int, *, seed: int | np.random.Generator | None = None,
                      fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return self._reads.sample_slices(n, length, seed=seed, fields=fields)

    def sample_episodes(self, n: int, *, seed: int | np.random.Generator | None = None,
                        status: Sequence[str] | None = None, replace: bool = False) -> list[dict[str, np.ndarray]]:
        return self._reads.sample_episodes(n, seed=seed, status=status, replace=replace)

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return self._reads.fields

    for _name in ("episodes", "read_episode", "sample_steps", "sample_slices", "sample_episodes", "fields"):
        locals()[_name].__doc__ = getattr(EpisodeReads, _name).__doc__
    del _name

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._shell.closed

    def num_steps(self) -> int:
        with self._lock:
            self._check_open()
            self._steps.refresh()
            return self._steps.count() + sum(e.pending_steps for e in self._open.values())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "path": self.path,
                "steps": self.num_steps(),
                "episode_revisions": self._episodes.count(),
                "open_episodes": len(self._open),
                "steps_table": self._steps.stats(),
                "episodes_table": self._episodes.stats(),
                "read_only": self.read_only,
            }

    def close(self) -> None:
        """End open episodes as ``incomplete``, commit everything, end this writer session."""
        with self._lock:
            if self._shell.closed:
                return
            errors: list[BaseException] = []
            try:
                if not self.read_only:
                    for ep in list(self._open.values()):
                        ep.end("incomplete")
            finally:
                self._shell.mark_closed()
                for t in (self._steps, self._episodes):
                    try:
                        t.close()
                    except Exception as exc:  # noqa: BLE001 - close every table, then raise the first error
                        errors.append(exc)
                if not self.read_only:
                    assert self._sessions is not None
                    try:
                        if not errors:  # only once steps and episodes are committed
                            if self._id_source.reserved:
                                self._id_source.close()
                            self._ids.close()
                            self._sessions.finish()
                    finally:
                        self._sessions.release()  # after an error: the next writer open recovers us
                        self._ids.close()
                if errors:
                    raise errors[0]

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writer"
        return f"TrajectoryStore({self.path!r}, {mode})"

