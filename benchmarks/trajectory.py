"""TrajectoryStore against its anchors, side by side in one run.

1. Logging overhead per step: the same environment loop (Pendulum-v1 run to 500 steps, a
   seeded random policy) bare, under ``RecordEpisodes``, under Minari's ``DataCollector``
   (HDF5 and Arrow, including ``create_dataset``), and under a LeRobot-style
   parquet-file-per-episode writer. Overhead = (time - bare time) / steps.
2. Reads on that data: ``episode(id)`` p50 against Minari's episode lookup and reading one
   parquet file; ``sample_steps(256)`` p50.
3. A large store (``--big-steps``, written with vectorised ``add_steps``) against TorchRL's
   ``LazyMemmapStorage`` in the same run: write rate vs ``extend``, ``sample_steps(256)`` and
   ``sample_slices(32, 64)`` p50 vs ``sample()`` (batch 256) and ``SliceSampler``, open + first
   sample, ``episode(id)`` p50; then the TorchRL adapter (``--adapter-steps``): extend rate,
   sample p50 and restore time of a ``TensorDictReplayBuffer`` on ``TrajectoryStorage``.
4. Many writers (``--writers 1,3``): N actor processes log into one store at once (step by
   step, ``add_step``); aggregate steps/s, and ``sample_steps(256)`` p50 of a reader meanwhile.

Run: ``python benchmarks/trajectory.py [--episodes 300 --steps 500 --big-steps 10000000 --writers 1,3]``.
Needs ``gymnasium``; Minari, h5py and TorchRL anchors are skipped when not installed.
"""

from __future__ import annotations

import os
import sys

# benchmarks/queue.py would shadow the stdlib ``queue`` that pyarrow imports: drop this
# script's directory from the import path before anything imports pyarrow.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from persisting.engine import TableOptions
from persisting.trajectory import TrajectoryStore
from persisting.trajectory.gym import RecordEpisodes

ENV_ID = "Pendulum-v1"


def make_env() -> gym.Env:  # type: ignore[type-arg]
    return gym.make(ENV_ID, max_episode_steps=ARGS.steps)


def run_loop(env: gym.Env, episodes: int) -> int:  # type: ignore[type-arg]
    """The shared environment loop; returns the number of steps taken."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-2, 2, size=(ARGS.steps, 1)).astype(np.float32)
    n = 0
    for e in range(episodes):
        env.reset(seed=e)
        done = False
        t = 0
        while not done:
            _, _, terminated, truncated, _ = env.step(actions[t % len(actions)])
            t += 1
            done = terminated or truncated
        n += t
    return n


class ParquetPerEpisode(gym.Wrapper):  # type: ignore[type-arg]
    """LeRobot-style anchor: buffer an episode in lists, write one parquet file at its end."""

    def __init__(self, env: gym.Env, root: str) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        self.root, self.episode, self.rows = root, 0, []  # type: ignore[var-annotated]
        os.makedirs(root, exist_ok=True)

    def reset(self, **kw: Any) -> Any:
        obs, info = self.env.reset(**kw)
        self.obs, self.rows = obs, []
        return obs, info

    def step(self, action: Any) -> Any:
        obs, r, te, tr, info = self.env.step(action)
        self.rows.append((self.obs, action, r, te, tr))
        self.obs = obs
        if te or tr:
            o, a, rew, tes, trs = zip(*self.rows)
            table = pa.table({
                "obs": pa.FixedSizeListArray.from_arrays(pa.array(np.stack(o).reshape(-1)), len(o[0])),
                "action": pa.FixedSizeListArray.from_arrays(pa.array(np.stack(a).reshape(-1)), len(a[0])),
                "reward": pa.array(np.asarray(rew, np.float64)), "terminated": pa.array(tes), "truncated": pa.array(trs),
            })
            pq.write_table(table, os.path.join(self.root, f"episode_{self.episode:06d}.parquet"))
            self.episode += 1
        return obs, r, te, tr, info


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measured(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process CPU seconds of ``fn()`` (CPU time includes our background threads;
    it is the fairer number on a machine shared with other work)."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def p50_ms(fn: Callable[[int], Any], n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def row(name: str, value: float, unit: str, anchor: float | None = None, anchor_name: str = "") -> None:
    ratio = f"{value / anchor:6.2f}x {anchor_name}" if anchor else ""
    print(f"  {name:<44} {value:10.2f} {unit:<8} {ratio}")


def logging_section(tmp: str) -> None:
    episodes = ARGS.episodes
    print(f"== logging {episodes} episodes x {ARGS.steps} steps of {ENV_ID}, random policy ==")
    steps = episodes * ARGS.steps
    store_path = os.path.join(tmp, "persisting")
    contenders: dict[str, Callable[[int], Any]] = {}  # run r of each writes to its own place

    def persisting(r: int) -> None:
        store = TrajectoryStore(store_path + (f"-{r}" if r else ""))
        env = RecordEpisodes(make_env(), store)
        run_loop(env, episodes)
        env.close()
        store.close()

    contenders["persisting RecordEpisodes"] = persisting
    try:
        os.environ["MINARI_DATASETS_PATH"] = os.path.join(tmp, "minari")
        import minari
        from minari import DataCollector

        for fmt in ("hdf5", "arrow"):
            def minari_run(r: int, fmt: str = fmt) -> None:
                env = DataCollector(make_env(), data_format=fmt)
                run_loop(env, episodes)
                env.create_dataset(dataset_id=f"bench/pendulum-{fmt}{r or ''}-v0", algorithm_name="random")
                env.close()

            contenders[f"minari DataCollector ({fmt})"] = minari_run
    except ImportError:
        minari = None
        print("  minari not installed: pip install minari[create,hdf5,arrow] pillow")
    contenders["parquet file per episode"] = lambda r: run_loop(
        ParquetPerEpisode(make_env(), os.path.join(tmp, "parquet" + (f"-{r}" if r else ""))), episodes)

    # each contender right after its own bare run, so both see the same machine load; with
    # --log-repeats the rounds alternate contenders and the table shows each one's median
    runs: dict[str, list[tuple[float, float]]] = {}
    for r in range(ARGS.log_repeats):
        for name, fn in contenders.items():
            bw, bc = measured(lambda: run_loop(make_env(), episodes))
            try:
                w, c = measured(lambda: fn(r))
            except Exception as exc:  # noqa: BLE001 - an anchor that fails is reported, not fatal
                print(f"  {name}: skipped ({type(exc).__name__}: {exc})")
                continue
            runs.setdefault(name, []).append(((w - bw) / steps * 1e6, (c - bc) / steps * 1e6))
            print(f"  {name:<34} bare {bw / steps * 1e6:7.1f} us/step wall, {bc / steps * 1e6:7.1f} cpu"
                  + (f"; overhead {runs[name][-1][0]:5.1f} / {runs[name][-1][1]:5.1f}  (round {r + 1})" if ARGS.log_repeats > 1 else ""))
    overhead = {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for name, v in runs.items()}
    if ARGS.log_repeats > 1:
        print(f"  median of {ARGS.log_repeats} rounds; persisting's ratio to Minari hdf5 per round (wall, cpu): "
              + ", ".join(f"{a[0] / b[0]:.2f}/{a[1] / b[1]:.2f}" for a, b in
                          zip(runs.get("persisting RecordEpisodes", []), runs.get("minari DataCollector (hdf5)", []))))
    print(f"  {'logging overhead per step':<34} {'wall us':>9} {'cpu us':>9} {'wall ratio':>11} {'cpu ratio':>10}")
    ours = overhead.get("persisting RecordEpisodes")
    for name, (w, c) in overhead.items():
        ratio = "" if ours is None or name.startswith("persisting") else f"{ours[0] / w:10.2f}x {ours[1] / c:9.2f}x  (persisting / this)"
        print(f"  {name:<34} {w:9.1f} {c:9.1f} {ratio}")

    print("== reads on that data ==")
    store = TrajectoryStore(store_path, read_only=True)
    ids = store.episodes().column("episode_id").to_numpy()
    rng = np.random.default_rng(1)
    pick = rng.choice(ids, size=200)
    store.episode(int(pick[0]))
    ours = p50_ms(lambda i: store.episode(int(pick[i])), 200)
    anchors: dict[str, float] = {}
    if minari is not None:
        for fmt in ("hdf5", "arrow"):
            try:
                ds = minari.load_dataset(f"bench/pendulum-{fmt}-v0")
                anchors[f"minari ({fmt}) episode"] = p50_ms(lambda i, ds=ds: next(iter(ds.iterate_episodes([int(pick[i])]))), 200)
            except Exception as exc:  # noqa: BLE001
                print(f"  minari {fmt} read: skipped ({type(exc).__name__}: {exc})")
    files = sorted(os.listdir(os.path.join(tmp, "parquet")))
    anchors["parquet episode file"] = p50_ms(lambda i: pq.read_table(os.path.join(tmp, "parquet", files[int(pick[i])])), 200)
    for k, v in anchors.items():
        row(f"episode(id) p50 vs {k}", ours, "ms", v, k)
    store.sample_steps(256, seed=0)
    row("sample_steps(256) p50", p50_ms(lambda i: store.sample_steps(256, seed=i), 100), "ms")
    row("sample_slices(32, 64) p50", p50_ms(lambda i: store.sample_slices(32, 64, seed=i), 50), "ms")
    store.close()


def big_section(tmp: str) -> None:
    n = ARGS.big_steps
    per = 100_000
    print(f"== large store: {n:,} steps (4-float obs, int action, float reward; {n // per} episodes by add_steps of {per:,}) ==")
    path = os.path.join(tmp, "big")
    rng = np.random.default_rng(2)
    obs = rng.standard_normal((per, 4)).astype(np.float32)
    act = rng.integers(0, 2, per)
    rew = rng.standard_normal(per)

    def write(store: TrajectoryStore) -> None:  # committed and fsynced when flush returns
        for _ in range(n // per):
            with store.episode(kind="big") as ep:
                ep.add_steps({"obs": obs, "action": act, "reward": rew})
        store.flush()

    default_path = os.path.join(tmp, "big-default")
    with TrajectoryStore(default_path, durability="none") as store:
        default_write = n / timed(lambda: write(store))
    shutil.rmtree(default_path, ignore_errors=True)
    # bulk loads commit in larger batches: fewer commits, each fsynced
    store = TrajectoryStore(path, durability="none", options=TableOptions(flush_rows=1_000_000))
    ours_write = n / timed(lambda: write(store))
    compact_s = timed(store.compact)  # maintenance: merges fragments, saves the sampling view for reopening
    store.close()
    lance_write = lance_write_rate(os.path.join(tmp, "lance-raw"), obs, act, rew, n)
    rb = None
    anchor_write = anchor_sample = anchor_slices = None
    try:
        import torch
        from tensordict import TensorDict
        from torchrl.data import LazyMemmapStorage, ReplayBuffer
        from torchrl.data.replay_buffers.samplers import SliceSampler

        batches = [TensorDict({"obs": torch.from_numpy(obs), "action": torch.from_numpy(act), "reward": torch.from_numpy(rew),
                               "episode": torch.full((per,), e)}, batch_size=[per]) for e in range(2)]
        rb = ReplayBuffer(storage=LazyMemmapStorage(n, scratch_dir=os.path.join(tmp, "torchrl")), batch_size=256)

        def extend() -> None:
            for e in range(n // per):
                batches[e % 2]["episode"].fill_(e)
                rb.extend(batches[e % 2])

        anchor_write = n / timed(extend)
        anchor_sample = p50_ms(lambda i: rb.sample(), 200)
        slices = ReplayBuffer(storage=rb._storage, batch_size=32 * 64,
                              sampler=SliceSampler(slice_len=64, traj_key="episode", strict_length=True))
        slices.sample()
        anchor_slices = p50_ms(lambda i: slices.sample(), 50)
    except ImportError:
        print("  torchrl not installed: no LazyMemmapStorage anchor")
    row("write rate (add_steps + flush, flush_rows 1M)", ours_write / 1e6, "M st/s", anchor_write and anchor_write / 1e6,
        "torchrl extend (target >= 2x)")
    row("write rate, default TableOptions (flush_rows 10k)", default_write / 1e6, "M st/s", anchor_write and anchor_write / 1e6,
        "torchrl extend")
    row("write rate (flush_rows 1M) vs Lance's own write", ours_write / 1e6, "M st/s", lance_write / 1e6,
        "lance write_dataset, same rows, 1M-row appends, no fsync")
    row("then compact() + save the view (not in the rate)", compact_s * 1e3, "ms")
    t_open = time.perf_counter()
    store = TrajectoryStore(path, read_only=True)
    store.sample_steps(256, seed=0)
    row("open + first sample_steps(256) (target <= 1000)", (time.perf_counter() - t_open) * 1e3, "ms")
    ours = p50_ms(lambda i: store.sample_steps(256, seed=i), 200)
    row("sample_steps(256) p50 (target <= 1x)", ours, "ms", anchor_sample, "torchrl LazyMemmapStorage sample(256)")
    ours_slices = p50_ms(lambda i: store.sample_slices(32, 64, seed=i), 50)
    row("sample_slices(32, 64) p50 (target <= 2x)", ours_slices, "ms", anchor_sample, "torchrl sample(256)")
    if anchor_slices:
        row("sample_slices(32, 64) p50", ours_slices, "ms", anchor_slices, "torchrl SliceSampler(64) x 32")
    ids = store.episodes().column("episode_id").to_numpy()
    row(f"episode(id) p50, {per:,}-step episode, 1 field", p50_ms(lambda i: store.read_episode(int(ids[i % len(ids)]), fields=["action"]), 50), "ms")
    row(f"episode(id) p50, {per:,}-step episode, all fields", p50_ms(lambda i: store.episode(int(ids[i % len(ids)])), 50), "ms")
    store.close()
    if rb is not None and ARGS.adapter_steps > 0:
        del rb
        adapter_section(tmp, obs, act, rew, per, anchor_write)


def lance_write_rate(path: str, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, n: int) -> float:
    """Rows/s of Lance's own ``write_dataset`` appending the same step columns in 1M-row
    commits (what the store's bulk path commits), without the store's fsyncs: the ceiling a
    Lance-backed store writes at on this machine."""
    import lance

    per = len(obs)
    reps = max(1, 1_000_000 // per)
    eids = np.repeat(np.arange(reps, dtype=np.int64), per)
    batch = pa.table({"episode_id": eids, "step": np.tile(np.arange(per, dtype=np.int64), reps),
                      "obs": pa.FixedSizeListArray.from_arrays(pa.array(np.tile(obs, (reps, 1)).reshape(-1)), obs.shape[1]),
                      "action": np.tile(act, reps), "reward": np.tile(rew, reps)})
    commits = max(1, n // batch.num_rows)

    def write() -> None:
        for i in range(commits):
            lance.write_dataset(batch, path, mode="append" if i else "create")

    return commits * batch.num_rows / timed(write)


def interleaved_section(tmp: str) -> None:
    """A replay buffer's loop: write a little, sample, write, sample... on a store that already
    holds many steps, against TorchRL's ``extend`` + ``sample`` on ``LazyMemmapStorage``."""
    base, chunk, rounds = ARGS.interleave_base, 256, 200
    print(f"== write {chunk} steps then sample_steps(256), {rounds} times, on {base:,} steps already stored ==")
    rng = np.random.default_rng(3)
    per = 100_000
    obs, act, rew = rng.standard_normal((per, 4)).astype(np.float32), rng.integers(0, 2, per), rng.standard_normal(per)
    store = TrajectoryStore(os.path.join(tmp, "interleaved"), durability="none")
    for _ in range(base // per):
        with store.episode() as ep:
            ep.add_steps({"obs": obs, "action": act, "reward": rew})
    store.flush()
    store.sample_steps(256, seed=0)
    both, alone = [], []
    for i in range(rounds):
        t0 = time.perf_counter()
        with store.episode() as ep:
            ep.add_steps({"obs": obs[:chunk], "action": act[:chunk], "reward": rew[:chunk]})
        t1 = time.perf_counter()
        store.sample_steps(256, seed=i)
        t2 = time.perf_counter()
        both.append(t2 - t0)
        alone.append(t2 - t1)
    store.close()
    anchor_both = anchor_alone = None
    try:
        import torch
        from tensordict import TensorDict
        from torchrl.data import LazyMemmapStorage, ReplayBuffer

        rb = ReplayBuffer(storage=LazyMemmapStorage(base + chunk * rounds, scratch_dir=os.path.join(tmp, "torchrl-il")), batch_size=256)
        big = TensorDict({"obs": torch.from_numpy(obs), "action": torch.from_numpy(act), "reward": torch.from_numpy(rew)}, batch_size=[per])
        for _ in range(base // per):
            rb.extend(big)
        small = big[:chunk]
        tb, ta = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            rb.extend(small)
            t1 = time.perf_counter()
            rb.sample()
            t2 = time.perf_counter()
            tb.append(t2 - t0)
            ta.append(t2 - t1)
        anchor_both, anchor_alone = statistics.median(tb) * 1e3, statistics.median(ta) * 1e3
    except ImportError:
        print("  torchrl not installed: no anchor")
    row("write 256 + sample_steps(256) p50", statistics.median(both) * 1e3, "ms", anchor_both, "torchrl extend + sample")
    row("sample_steps(256) right after a write, p50", statistics.median(alone) * 1e3, "ms", anchor_alone, "torchrl sample after extend")


def adapter_section(tmp: str, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, per: int, anchor_write: float | None) -> None:
    """persisting.trajectory.torchrl's TrajectoryStorage under a TensorDictReplayBuffer."""
    import torch
    from tensordict import TensorDict

    from persisting.trajectory.torchrl import replay_buffer

    n = min(ARGS.big_steps, ARGS.adapter_steps)
    print(f"== TorchRL adapter: TensorDictReplayBuffer on TrajectoryStorage, {n:,} steps ==")
    batch = TensorDict({"obs": torch.from_numpy(obs), "action": torch.from_numpy(act), "reward": torch.from_numpy(rew)}, batch_size=[per])
    path = os.path.join(tmp, "adapter")
    with TrajectoryStore(path) as store:
        rb = replay_buffer(store, n, batch_size=256)
        w = timed(lambda: [rb.extend(batch) for _ in range(n // per)])
        row("extend rate (store durability batch)", n / w / 1e6, "M st/s", anchor_write and anchor_write / 1e6, "torchrl LazyMemmapStorage extend")
        row("sample() p50, batch 256", p50_ms(lambda i: rb.sample(), 200), "ms")
    t = time.perf_counter()
    with TrajectoryStore(path, read_only=True) as store:
        rb = replay_buffer(store, n, batch_size=256)
        assert len(rb) == n
        row("reopen: buffer restored from the store", (time.perf_counter() - t) * 1e3, "ms")


_WRITER = """
import sys, time
import numpy as np
from persisting.engine import TableOptions
from persisting.trajectory import TrajectoryStore
path, k, episodes, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = TrajectoryStore(path)
obs = np.zeros(3, np.float32)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
for e in range(episodes):
    with store.episode(actor=k) as ep:
        for t in range(steps):
            obs[0] = t
            ep.add_step(obs=obs, action=t % 3, reward=1.0)
store.close()
print(f"{t0} {time.perf_counter()}", flush=True)
"""


def writers_section(tmp: str) -> None:
    import subprocess

    episodes, steps = max(1, ARGS.episodes // 3), ARGS.steps
    print(f"== many writers: each logs {episodes} episodes x {steps} steps (add_step), one store ==")
    for n in (int(x) for x in ARGS.writers.split(",")):
        path = os.path.join(tmp, f"writers{n}")
        procs = [subprocess.Popen([sys.executable, "-c", _WRITER, path, str(k), str(episodes), str(steps)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for k in range(n)]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        samples: list[float] = []
        with TrajectoryStore(path, read_only=True) as reader:
            while any(p.poll() is None for p in procs):
                try:
                    t0 = time.perf_counter()
                    reader.sample_steps(256, seed=len(samples))
                    samples.append(time.perf_counter() - t0)
                except Exception:  # noqa: BLE001 - nothing flushed yet
                    time.sleep(0.01)
        spans = [tuple(map(float, p.communicate()[0].split())) for p in procs]
        wall = max(b for _, b in spans) - min(a for a, _ in spans)
        with TrajectoryStore(path, read_only=True) as reader:
            assert reader.num_steps() == n * episodes * steps and len(reader.episodes()) == n * episodes
        row(f"{n} writer(s): aggregate steps/s", n * episodes * steps / wall, "steps/s")
        if samples:
            row(f"{n} writer(s): reader sample_steps(256) p50", statistics.median(samples) * 1e3, "ms")


def main() -> None:
    warnings.filterwarnings("ignore", module="minari")  # dataset-card reminders
    tmp = tempfile.mkdtemp(prefix="persisting-bench-trajectory-", dir=ARGS.dir)
    try:
        print(f"gymnasium {gym.__version__}, cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
        if ARGS.writers:
            writers_section(tmp)
        logging_section(tmp)
        if ARGS.interleave_base:
            interleaved_section(tmp)
        if ARGS.big_steps:
            big_section(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--log-repeats", type=int, default=1, help="rounds of the logging section (medians reported)")
    parser.add_argument("--big-steps", type=int, default=10_000_000)
    parser.add_argument("--interleave-base", type=int, default=2_000_000,
                        help="steps stored before the write-then-sample section (0 skips it)")
    parser.add_argument("--adapter-steps", type=int, default=2_000_000, help="steps through the TorchRL adapter section")
    parser.add_argument("--writers", default="1,3", help="writer process counts for section 4 ('' skips it)")
    parser.add_argument("--dir", default=None, help="where to put the temporary stores")
    ARGS = parser.parse_args()
    main()
