"""After a compaction that merges the small fragments at the end, a sampler re-reads only the
rows after the full fragments before them (not the whole table), and samples stay right."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np

from persisting.engine import TableOptions
from persisting.trajectory import TrajectoryStore


def test_compacting_the_tail_rereads_only_the_tail(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    big = 1 << 20  # Lance's target fragment size: compaction leaves a full fragment alone
    with TrajectoryStore(path, options=TableOptions(flush_rows=2_000_000)) as store:
        with store.episode() as ep:
            steps = np.arange(big, dtype=np.int64)
            ep.add_steps({"value": steps * 10 + 0, "reward": np.ones(big)})
        store.flush()
        first = ep.id
        small = []
        for _ in range(12):  # small commits: small fragments after the full one
            with store.episode() as ep:
                ep.add_steps({"value": np.arange(50, dtype=np.int64) * 10 + 1, "reward": np.ones(50)})
            small.append(ep.id)
            store.flush()
        reader = TrajectoryStore(path, read_only=True)
        reader.sample_steps(8, seed=0)
        view = reader._reads.view
        assert view.rebuilds == 1 and view.partial_rebuilds == 0
        before = len(lance.dataset(str(tmp_path / "store" / "steps.lance")).get_fragments())
        store.compact()
        after = lance.dataset(str(tmp_path / "store" / "steps.lance")).get_fragments()
        assert len(after) < before and after[0].metadata.physical_rows == big  # the full one stayed
        out = reader.sample_steps(4096, seed=1)
        assert view.rebuilds == 1 and view.partial_rebuilds == 1  # only the tail was read again
        # every sampled row is the right one: value encodes (episode, step)
        for eid, step, value in zip(out["episode_id"], out["step"], out["value"]):
            assert value == step * 10 + (0 if eid == first else 1), (eid, step, value)
        assert set(out["episode_id"].tolist()) <= {first, *small}
        assert reader.num_steps() == big + 12 * 50
        got = reader.episode(small[-1])
        assert np.array_equal(got["value"], np.arange(50) * 10 + 1)
        reader.close()
