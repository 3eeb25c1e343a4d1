"""The engine's one payload checksum rule and how payload columns are found."""

from __future__ import annotations

import xxhash

from persisting.engine.payloads import PayloadColumn, payload_columns, payload_matches


def test_one_rule_for_raw_and_hex_digests() -> None:
    data = b"\x00tensor bytes\xff" * 100
    digest = xxhash.xxh3_128_digest(data)
    assert payload_matches(data, digest) and payload_matches(memoryview(data), bytearray(digest))
    assert payload_matches(data, digest.hex())  # a content key (params chunks) is the same digest
    assert not payload_matches(data[:-1], digest) and not payload_matches(data, digest.hex().upper()[:-1])
    assert not payload_matches(data, None)


def test_payload_columns_declared_then_suffix_rule() -> None:
    names = ["key", "payload", "checksum", "obs", "obs__xxh3", "stray__xxh3"]
    declared = (PayloadColumn("payload", "checksum"), PayloadColumn("data", "hash"))
    assert payload_columns(names, declared) == [PayloadColumn("payload", "checksum"), PayloadColumn("obs", "obs__xxh3")]
    assert payload_columns(names) == [PayloadColumn("obs", "obs__xxh3")]
