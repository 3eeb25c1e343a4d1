from __future__ import annotations

import os
import subprocess
import sys

from collections.abc import Iterator

import pytest

CHILD = os.path.join(os.path.dirname(__file__), "trajectory_child.py")


class Children:
    """Child interpreters started by a test; :meth:`reap` kills the ones still running."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True, env=env)
        self.procs.append(p)
        return p

    def reap(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


@pytest.fixture
def spawn_child():
    """Start tests/trajectory/trajectory_child.py in a fresh interpreter; kill leftovers at teardown."""
    children = Children()
    yield lambda mode, path, *args: children.start([CHILD, mode, path, *args])
    children.reap()


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[None]:
    """One local Ray cluster per test module; the actors import that module by value."""
    ray = pytest.importorskip("ray")
    import ray.data

    module = request.module
    ray.cloudpickle.register_pickle_by_value(module)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024 * 1024, log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(module)
