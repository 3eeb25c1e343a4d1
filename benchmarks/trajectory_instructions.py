"""Logging overhead of ``RecordEpisodes`` in instructions per step, independent of machine load.

Timed overheads on this shared 2-core machine swing by 1.5x between runs minutes apart, so
A/B comparisons of the logging path use instruction counts: the script re-runs itself under
valgrind's callgrind with counting switched on only around the measured loops (a 4-line C shim,
built with gcc, issues callgrind's client requests through ctypes). It prints the bare
environment loop's instructions per step and ``RecordEpisodes``' (store open and close
included, background threads counted), and the difference. Needs valgrind, gcc, gymnasium.

    python benchmarks/trajectory_instructions.py --episodes 60
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # benchmarks/queue.py would shadow the stdlib queue

import argparse
import ctypes
import glob
import shutil
import subprocess
import tempfile

SHIM = """
#include <valgrind/callgrind.h>
void cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
void cg_dump(void) { CALLGRIND_DUMP_STATS; }
"""
STEPS = 500


def child(episodes: int, shim: str) -> None:
    """Runs under callgrind: two counted regions, each dumped to its own file."""
    import gymnasium as gym
    import numpy as np

    from persisting.trajectory import TrajectoryStore
    from persisting.trajectory.gym import RecordEpisodes

    cg = ctypes.CDLL(shim)

    def make_env() -> gym.Env:  # type: ignore[type-arg]
        return gym.make("Pendulum-v1", max_episode_steps=STEPS)

    def run_loop(env: gym.Env, n: int) -> None:  # type: ignore[type-arg]
        actions = np.random.default_rng(0).uniform(-2, 2, size=(STEPS, 1)).astype(np.float32)
        for e in range(n):
            env.reset(seed=e)
            done, t = False, 0
            while not done:
                _, _, terminated, truncated, _ = env.step(actions[t % STEPS])
                t += 1
                done = terminated or truncated

    tmp = tempfile.mkdtemp()
    run_loop(make_env(), 2)  # imports and first calls outside the counts
    cg.cg_toggle()
    run_loop(make_env(), episodes)
    cg.cg_toggle()
    cg.cg_dump()
    cg.cg_toggle()
    store = TrajectoryStore(os.path.join(tmp, "store"))
    env = RecordEpisodes(make_env(), store)
    run_loop(env, episodes)
    env.close()
    store.close()
    cg.cg_toggle()
    cg.cg_dump()
    shutil.rmtree(tmp, ignore_errors=True)


def totals(out_dir: str) -> list[int]:
    counts = []
    files = glob.glob(os.path.join(out_dir, "cg.out.*"))
    for path in sorted(files, key=lambda p: int(p.rsplit(".", 1)[1])):
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    counts.append(int(line.split()[1]))
                    break
    return [c for c in counts if c > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.episodes, args.child)
        return
    if not shutil.which("valgrind") or not shutil.which("gcc"):
        sys.exit("needs valgrind and gcc")
    work = tempfile.mkdtemp(prefix="persisting-cg-")
    try:
        with open(os.path.join(work, "cg.c"), "w") as f:
            f.write(SHIM)
        shim = os.path.join(work, "cg.so")
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", shim, os.path.join(work, "cg.c")], check=True)
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--callgrind-out-file={work}/cg.out",
               sys.executable, os.path.abspath(__file__), "--episodes", str(args.episodes), "--child", shim]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        counts = totals(work)
        if len(counts) < 2:
            sys.exit(f"callgrind wrote {len(counts)} counted parts, expected 2 (see {work})")
        steps = args.episodes * STEPS
        bare, ours = counts[0] / steps, counts[1] / steps
        print(f"Pendulum-v1, {args.episodes} episodes x {STEPS} steps, instructions per step:")
        print(f"  bare environment loop          {bare:10.0f}")
        print(f"  under RecordEpisodes           {ours:10.0f}")
        print(f"  logging overhead               {ours - bare:10.0f}  ({(ours - bare) / bare:.2f}x the bare loop)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
