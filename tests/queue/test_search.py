"""Searching a queue topic's buckets, through real Pulsing actor systems."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pul = pytest.importorskip("pulsing")

from persisting.errors import ConfigError, NotFoundError
from persisting.queue import write_queue
from persisting.queue.search import bucket_paths, search_topic

DIM = 8


def vectors() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((60, DIM))


async def shutdown(system: Any) -> None:
    await system.shutdown()
    await asyncio.sleep(0.3)
    gc.collect()


def test_search_a_topic_across_buckets_while_its_writer_is_live(tmp_path: Path) -> None:
    root = str(tmp_path / "queues")
    x = vectors()

    async def go() -> None:
        system = await pul.actor_system()
        try:
            w = await write_queue(system, "memories", num_buckets=3, storage_path=root, backend="persisting",
                                  backend_options={"enable_wal": True})
            other = await write_queue(system, "other", num_buckets=1, storage_path=root, backend="persisting",
                                      backend_options={"enable_wal": True})
            await other.put({"id": "o", "emb": x[5].tolist(), "kind": "fact"})
            for i in range(40):
                await w.put({"id": f"m{i}", "emb": x[i].tolist(), "kind": "fact" if i % 2 else "chat"})
            await w.flush()
            for i in range(40, 60):  # in the WAL only: the writer has not committed them
                await w.put({"id": f"m{i}", "emb": x[i].tolist(), "kind": "fact" if i % 2 else "chat"})

            assert len(bucket_paths(root, "memories")) == 3
            got = search_topic(root, "memories", "emb", x[5], 5)
            assert got.column("id")[0].as_py() == "m5" and got.column("_distance")[0].as_py() == pytest.approx(0, abs=1e-9)
            assert set(got.column_names) >= {"id", "emb", "kind", "_distance", "bucket"}
            d = ((x[:60] - x[5]) ** 2).sum(1)
            assert got.column("id").to_pylist() == [f"m{i}" for i in np.argsort(d)[:5]]
            late = search_topic(root, "memories", "emb", x[55], 1, columns=["id"])
            assert late.column("id").to_pylist() == ["m55"]
            facts = search_topic(root, "memories", "emb", x[4], 6, filter="kind = 'fact'", columns=["id", "kind"])
            assert set(facts.column("kind").to_pylist()) == {"fact"} and facts.num_rows == 6
            with pytest.raises(ConfigError, match="'emb'"):
                search_topic(root, "memories", "emb", x[4][:3])
            with pytest.raises(NotFoundError, match="'nothing'"):
                search_topic(root, "memories", "nothing", x[4])
            with pytest.raises(NotFoundError, match="'absent'"):
                search_topic(root, "absent", "emb", x[4])
            await w.flush()
            await other.flush()
        finally:
            await shutdown(system)

    asyncio.run(go())
