"""TableOptions refuse bad values with a ConfigError naming the option (issue 14, finding 9:
``wal_sync_interval=nan`` was accepted and the sync thread busy-looped; ``compact_fragments=-5``
was accepted)."""

from __future__ import annotations

from typing import Any

import pytest

from persisting.engine import TableOptions
from persisting.errors import ConfigError

BAD = [
    ("wal_sync_interval", float("nan")),
    ("wal_sync_interval", float("inf")),
    ("wal_sync_interval", -0.5),
    ("wal_sync_interval", "1"),
    ("wal_sync_interval", True),
    ("compact_fragments", -5),
    ("compact_fragments", 2.5),
    ("flush_rows", 0),
    ("flush_rows", None),
    ("flush_bytes", -1),
    ("max_wal_size", 0),
    ("max_wal_size", "big"),
    ("wal_sync_bytes", 0),
    ("background_flush", "yes"),
    ("durability", "sometimes"),
    ("recovery", "best"),
    ("column_compression", "snappy"),
]


@pytest.mark.parametrize(("option", "value"), BAD, ids=[f"{o}={v!r}" for o, v in BAD])
def test_a_bad_option_is_a_config_error_naming_it(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option) as info:
        TableOptions(**{option: value})
    assert info.value.details["option"] == option


def test_good_values_are_kept_and_integral_floats_become_ints() -> None:
    o = TableOptions(wal_sync_interval=0, flush_bytes=1e6, compact_fragments=0, wal_sync_bytes=4096)
    assert o.wal_sync_interval == 0.0 and o.wal_sync == "always"
    assert o.flush_bytes == 1_000_000 and isinstance(o.flush_bytes, int)
    assert o.compact_fragments == 0 and o.wal_sync_bytes == 4096
