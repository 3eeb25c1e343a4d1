"""``KVCacheStore.get(framework=...)`` refuses frameworks it cannot return (issue 14, finding 9:
``framework="jax"`` was accepted and a miss or numpy came back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from persisting.errors import ConfigError
from persisting.kvcache import KVCacheStore


@pytest.mark.parametrize("framework", ["jax", "pt", ""])
def test_get_refuses_an_unknown_framework(tmp_path: Path, framework: str) -> None:
    with KVCacheStore(tmp_path / "kv", namespace="m", chunk_size=4) as store:
        toks = list(range(8))
        store.put(toks, np.ones((2, 8, 3), np.float32))
        for tokens in (toks, [99, 98, 97, 96]):  # a hit and a miss alike
            with pytest.raises(ConfigError, match="framework") as info:
                store.get(tokens, framework=framework)  # type: ignore[arg-type]
            assert info.value.details["option"] == "framework"
        assert store.get(toks, framework="numpy").shape == (2, 8, 3)
