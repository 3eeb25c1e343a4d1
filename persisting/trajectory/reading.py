"""Reading a TrajectoryStore: episodes by query, one episode by id, and sampling.

Episode rows are revisions (see :mod:`persisting.trajectory.store`); every read keeps the
newest revision of each episode. Every read first moves to the newest commits of every writer
process, episodes before steps (see :meth:`EpisodeReads.catch_up`); steps are then found through
the :class:`StepIndex` by ``(episode_id, step)``, never by position ranges, since rows of
different writers interleave and other writers' compactions move them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from persisting.engine.table import Table
from persisting.errors import ClosedError, ConfigError, NotFoundError
from persisting.trajectory.blobs import gather_blobs
from persisting.trajectory.fields import CHECKSUM_SUFFIX, FieldSpec, to_numpy
from persisting.trajectory.index import StepIndex
from persisting.trajectory.registry import FieldRegistry
from persisting.trajectory.schema import EPISODE_COLUMNS, EPISODE_SCHEMA, STATUSES, STEP_KEYS
from persisting.trajectory.sampling import CommitProbe, StepView

if TYPE_CHECKING:
    from persisting.trajectory.episode import Episode

__all__ = ["EPISODE_COLUMNS", "EPISODE_SCHEMA", "STATUSES", "STEP_KEYS", "EpisodeReads"]



class EpisodeReads:
    """The read side of a :class:`~persisting.trajectory.TrajectoryStore`, owned by the store:
    its tables, field registry and open episodes are handed in; the sampling view, the commit
    probes and the random generator are its own."""

    def __init__(self, *, path: str, lock: threading.RLock, steps: Table, episodes: Table, fields: FieldRegistry,
                 open_episodes: dict[int, Episode], closed: Callable[[], bool], saved_view: str | None) -> None:
        self.path = path
        self._lock = lock
        self._steps = steps
        self._episodes = episodes
        self._fields = fields
        self._open = open_episodes
        self._is_closed = closed
        self._saved_view = saved_view
        self._view = StepView(saved_view)
        self._steps_probe = CommitProbe(steps.uri)
        self._episodes_probe = CommitProbe(episodes.uri)
        self._own_rng: np.random.Generator | None = None

    @property
    def view(self) -> StepView:
        return self._view

    def reset_view(self) -> None:
        """Drop the sampling view (after this handle compacted): the next read rebuilds it."""
        self._view = StepView(self._saved_view)

    def latest(self, filter: str | None = None, ids: Sequence[int] | None = None, *,
                visible_only: bool = True) -> pa.Table:
        """The newest revision of each episode (matching ``filter``), by episode_id.

        Skips revisions that count more steps than this handle can see (an end row whose steps
        its writer has not committed yet: another process's two tables commit independently):
        the episode shows as it was before that row. ``visible_only=False`` (recovery) skips
        nothing and reads the tables as they are pinned now.
        """
        idx = self.catch_up() if visible_only else None
        if self._episodes.count() == 0:
            return EPISODE_SCHEMA.empty_table()
        revs = self._episodes.scan(columns=["episode_id", "rev", "status", "length"])
        eids = revs.column("episode_id").to_numpy()
        rv = revs.column("rev").to_numpy()
        if idx is not None:
            seen = self._visible(revs, idx)
            eids, rv = eids[seen], rv[seen]
            if not len(eids):
                return self._episodes.scan().slice(0, 0)
        order = np.lexsort((rv, eids))
        sorted_ids = eids[order]
        last = np.r_[sorted_ids[1:] != sorted_ids[:-1], True]
        uids, newest = sorted_ids[last], rv[order][last]
        where = [] if filter is None else [f"({filter})"]
        if ids is not None:
            where.append(f"episode_id IN ({', '.join(str(int(i)) for i in ids)})")
        rows = self._episodes.scan(filter=" AND ".join(where) if where else None)
        rid = rows.column("episode_id").to_numpy()
        pos = np.clip(np.searchsorted(uids, rid), 0, len(uids) - 1)
        keep = (uids[pos] == rid) & (newest[pos] == rows.column("rev").to_numpy())
        out = rows.filter(pa.array(keep))
        return out.take(pa.array(np.argsort(out.column("episode_id").to_numpy(), kind="stable")))

    def _visible(self, revs: pa.Table, idx: StepIndex) -> np.ndarray:
        """Which episode revisions are backed by the steps this handle sees: open ones, and
        ended ones whose ``length`` is at most the episode's visible step count."""
        eids = revs.column("episode_id").to_numpy()
        length = revs.column("length").fill_null(0).to_numpy()
        have = np.zeros(len(eids), np.int64)
        if len(idx.ids):
            at = np.clip(np.searchsorted(idx.ids, eids), 0, len(idx.ids) - 1)
            found = idx.ids[at] == eids
            have[found] = idx.lengths[at[found]]
        is_open = np.asarray(pc.equal(revs.column("status"), "open").fill_null(False))
        return is_open | (length <= have)

    def episodes(self, filter: str | None = None) -> pa.Table:
        """One row per episode, newest state, sorted by id. ``filter`` is a SQL predicate on
        the episode columns, pushed down to Lance: ``"return > 100 AND env = 'CartPole-v1'"``."""
        with self._lock:
            self._check_open()
            latest = self.latest(filter)
            return latest.drop_columns(["rev"])

    def _check_open(self) -> None:
        if self._is_closed():
            raise ClosedError(f"trajectory store {self.path} is closed; open it again to use it")

    def catch_up(self, *, episodes: bool = True, view: bool = True) -> StepIndex:
        """Pin what this read sees and catch the step view up with it: every writer's newest
        episodes, then steps (a writer hands steps over before the end row that counts them,
        so an end row seen here has its steps seen too, once they are committed), plus this
        handle's own open episodes' steps, handed to the table first. Step sampling reads no
        episode rows (``episodes=False``) and catches the view up in :meth:`_positions`
        (``view=False``)."""
        if episodes and self._episodes_probe.changed():
            self._episodes.refresh()
        for ep in list(self._open.values()):
            ep.flush()
        if self._steps_probe.changed():
            self._steps.refresh()
        self._follow_specs()
        if view:
            with self._steps.pinned():
                self._view.refresh(self._steps, self._fields.specs)
        return self._view.index

    @contextmanager
    def _positions(self) -> Iterator[StepView]:
        """The step view, with row positions that stay valid for takes inside the block: the
        steps table's own background commit cannot land meanwhile (call :meth:`catch_up`
        first, outside: handing steps off may wait for that commit)."""
        with self._steps.pinned():
            self._view.refresh(self._steps, self._fields.specs)
            yield self._view

    def _follow_specs(self) -> None:
        """Learn step fields other writers added."""
        self._fields.follow(self._steps.schema)

    @property
    def fields(self) -> dict[str, FieldSpec]:
        """The step fields stored so far and how each is stored."""
        return dict(self._fields.specs)

    def _rng(self, seed: int | np.random.Generator | None) -> np.random.Generator:
        """A generator for ``seed``; without one, this handle's own (seeded from the OS once)."""
        if seed is None:
            if self._own_rng is None:
                self._own_rng = np.random.default_rng()
            return self._own_rng
        return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def _names(self, fields: Sequence[str] | None) -> list[str]:
        """The stored step fields to return (all by default); unknown names raise."""
        stored = self._steps.schema.names if self._steps.schema is not None else []
        names = [n for n in stored if n in self._fields.specs] if fields is None else list(fields)
        unknown = [n for n in names if n not in self._fields.specs]
        if unknown:
            raise NotFoundError(f"trajectory store {self.path} has no step field(s) {unknown}; it has {sorted(self._fields.specs)}")
        return [n for n in names if n in stored]  # a field only in steps not yet handed off reads as absent

    def _gather(self, view: StepView, sorted_idx: np.ndarray, names: Sequence[str],
                valid: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """``episode_id``, ``step`` and the named fields of the steps at these sorted indices:
        cached fields from memory, the others in one Lance take (unique positions only).
        ``valid`` receives the validity mask of the last name."""
        idx = view.index
        positions = idx.positions[sorted_idx]
        out: dict[str, np.ndarray] = dict(zip(STEP_KEYS, idx.split(sorted_idx)))
        rest = [n for n in names if not view.has(n)]
        blobs = [n for n in rest if self._fields.specs[n].kind == "blob"]
        direct: dict[str, object] = {}
        if rest:
            uniq, inverse = np.unique(positions, return_inverse=True)
            # one take for the small columns and the blob checksums; the blob payloads are read
            # straight into one array each through the engine's payload path
            first = self._steps.take(uniq.tolist(), columns=[n for n in rest if n not in blobs]
                                     + [n + CHECKSUM_SUFFIX for n in blobs])
            for n in blobs:
                got = gather_blobs(self._steps, self._fields.specs[n], uniq, first.column(n + CHECKSUM_SUFFIX))
                if got is not None:
                    direct[n] = got[inverse]
            late = [n for n in blobs if n not in direct]  # the generic path: one more take
            if late:
                more = self._steps.take(uniq.tolist(), columns=late)
                for n in late:
                    first = first.append_column(more.schema.field(n), more.column(n))
            taken = first.take(pa.array(inverse.astype(np.int64)))
        for name in names:
            if view.has(name):
                out[name] = view.gather(name, positions)
            elif name in direct:
                out[name] = direct[name]  # type: ignore[assignment]
            else:
                out[name] = to_numpy(taken, self._fields.specs[name])
        if valid is not None and names:
            last = names[-1]
            if view.has(last):
                valid.append(view.valid(last, positions))
            elif last in direct:
                valid.append(np.ones(len(positions), np.bool_))  # the payload path needs every row present
            else:
                valid.append(np.asarray(taken.column(last).is_valid()))
        return out

    def read_episode(self, episode_id: int, *, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """An episode's steps as ``{field: array with steps along axis 0}``, plus
        ``episode_id`` and ``step``. Unknown ids raise NotFoundError."""
        with self._lock:
            self._check_open()
            self.catch_up()
            names = self._names(fields)
            with self._positions() as view:
                sl = view.index.episode_slice(int(episode_id))
                if sl.stop > sl.start:
                    return self._gather(view, np.arange(sl.start, sl.stop), names)
            if not len(self.latest(ids=[int(episode_id)])):
                raise NotFoundError(f"trajectory store {self.path} has no episode {episode_id}", episode_id=episode_id)
            return {"episode_id": np.empty(0, np.int64), "step": np.empty(0, np.int64)}

    def sample_steps(self, n: int, *, seed: int | np.random.Generator | None = None,
                     fields: Sequence[str] | None = None, obs_field: str = "obs") -> dict[str, np.ndarray]:
        """``n`` transitions drawn uniformly (with replacement) from every stored step.

        Adds ``next_<obs_field>``: the next step's observation where the episode continues,
        else the step's ``final_<obs_field>`` if recorded (see RecordEpisodes), else zeros/NaN;
        ``has_next`` says which rows hold a real next observation.
        """
        rng = self._rng(seed)
        with self._lock:
            self._check_open()
            self.catch_up(episodes=False, view=False)
            names = self._names(fields)
            with self._positions() as view:
                return self._sample_steps(view, rng, n, names, obs_field)

    def _sample_steps(self, view: StepView, rng: np.random.Generator, n: int,
                      names: list[str], obs_field: str) -> dict[str, np.ndarray]:
        idx = view.index
        if not len(idx.keys):
            raise NotFoundError(f"trajectory store {self.path} has no steps to sample")
        draw = rng.integers(0, len(idx.keys), size=n)
        stored = self._steps.schema.names if self._steps.schema is not None else []
        if obs_field not in self._fields.specs or obs_field not in stored:
            return self._gather(view, draw, names)
        final_name = "final_" + obs_field
        extra = [c for c in (obs_field, final_name) if c in self._fields.specs and c in stored and c not in names]
        nxt_idx = np.minimum(draw + 1, len(idx.keys) - 1)
        # one gather for the sampled rows and their successors: each Lance take has a fixed cost
        wanted = names + extra
        if final_name in wanted:  # last, so _gather reports its validity
            wanted = [c for c in wanted if c != final_name] + [final_name]
        valid: list[np.ndarray] = []
        both = self._gather(view, np.concatenate([draw, nxt_idx]), wanted, valid)
        out = {k: v[:n] for k, v in both.items() if k not in extra}
        nxt = both[obs_field][n:]
        has_next = idx.has_next(draw)
        if final_name in both and not has_next.all():
            final = both[final_name][:n]
            final_valid = valid[0][:n]
            use = ~has_next & final_valid
            nxt = nxt.copy()
            nxt[use] = final[use]
            has_next = has_next | final_valid
        if not has_next.all() and nxt.dtype != object:
            nxt = nxt.copy()
            nxt[~has_next] = np.nan if nxt.dtype.kind == "f" else 0
        out["next_" + obs_field] = nxt
        out["has_next"] = has_next
        return out

    def sample_episodes(self, n: int, *, seed: int | np.random.Generator | None = None,
                        status: Sequence[str] | None = None, replace: bool = False) -> list[dict[str, np.ndarray]]:
        """``n`` whole episodes chosen uniformly (without replacement unless ``replace``);
        ``status`` limits the choice, e.g. ``("complete", "truncated")``."""
        rng = self._rng(seed)
        with self._lock:
            self._check_open()
            bad = [x for x in (status or ()) if x not in STATUSES]
            if bad:
                raise ConfigError(f"unknown status {bad}; statuses are {STATUSES}")
            where = None if status is None else "status IN (" + ", ".join(f"'{x}'" for x in status) + ")"
            ids = self.latest(where).column("episode_id").to_numpy()
            if not len(ids) or (n > len(ids) and not replace):
                raise NotFoundError(f"cannot sample {n} episodes from {len(ids)} stored; pass replace=True or ask for fewer")
            chosen = rng.choice(ids, size=n, replace=replace)
            names = self._names(None)
            with self._positions() as view:
                out = []
                for e in chosen:
                    sl = view.index.episode_slice(int(e))
                    out.append(self._gather(view, np.arange(sl.start, sl.stop), names))
                return out

    def sample_slices(self, n: int, length: int, *, seed: int | np.random.Generator | None = None,
                      fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``n`` runs of ``length`` consecutive steps, each within one episode, uniform over
        every valid start. Arrays are shaped ``(n, length, ...)``."""
        if length <= 0 or n <= 0:
            raise ConfigError(f"sample_slices needs n > 0 and length > 0, got n={n}, length={length}")
        rng = self._rng(seed)
        with self._lock:
            self._check_open()
            self.catch_up(episodes=False, view=False)
            names = self._names(fields)
            with self._positions() as view:
                starts = view.index.slice_starts(length, rng, n)
                sorted_idx = (starts[:, None] + np.arange(length)[None, :]).reshape(-1)
                flat = self._gather(view, sorted_idx, names)
            return {k: v.reshape((n, length) + v.shape[1:]) for k, v in flat.items()}

