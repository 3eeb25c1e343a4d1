"""The conformance suite every Pulsing storage backend passes (Pulsing's MemoryBackend too).

A test class subclasses :class:`BackendSuite` and implements ``make(tmp_path)``, returning a
fresh, empty backend built the way Pulsing builds one. The suite checks only what the
``StorageBackend`` protocol promises: offsets, limits, order, streaming with and without
``wait``, wake-ups, timeouts and empty reads.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest


def rec(i: int) -> dict[str, Any]:
    return {"id": f"k{i % 7}", "seq": i, "score": i / 4, "text": f"record {i}"}


def seqs(rows: list[dict[str, Any]]) -> list[int]:
    return [r["seq"] for r in rows]


async def collect(stream: Any) -> list[list[dict[str, Any]]]:
    return [chunk async for chunk in stream]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class BackendSuite:
    """Shared tests; subclasses provide ``make``."""

    def make(self, tmp_path: Path) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Any:
        b = self.make(tmp_path)
        yield b
        close = getattr(b, "close", None)
        if close is not None:
            close()

    # -- empty ---------------------------------------------------------------------------
    def test_empty_bucket_reads_nothing(self, backend: Any) -> None:
        async def go() -> None:
            assert backend.total_count() == 0
            assert await backend.get(10, 0) == []
            assert await backend.get(10, 5) == []
            assert await collect(backend.get_stream(10, 0)) == []
            assert (await backend.stats())["total_count"] == 0

        run(go())

    # -- order, offsets, limits ----------------------------------------------------------
    def test_put_then_get_returns_records_in_order(self, backend: Any) -> None:
        async def go() -> None:
            for i in range(5):
                await backend.put(rec(i))
            assert await backend.get(10, 0) == [rec(i) for i in range(5)]
            assert backend.total_count() == 5

        run(go())

    def test_offsets_and_limits(self, backend: Any) -> None:
        async def go() -> None:
            await backend.put_batch([rec(i) for i in range(250)])
            assert seqs(await backend.get(10, 0)) == list(range(10))
            assert seqs(await backend.get(10, 245)) == list(range(245, 250))
            assert seqs(await backend.get(300, 0)) == list(range(250))
            assert seqs(await backend.get(1, 137)) == [137]
            assert await backend.get(0, 0) == []
            assert await backend.get(10, 250) == []
            assert await backend.get(10, 10_000) == []

        run(go())

    def test_put_and_put_batch_interleave_in_order(self, backend: Any) -> None:
        async def go() -> None:
            await backend.put(rec(0))
            await backend.put_batch([rec(1), rec(2), rec(3)])
            await backend.put(rec(4))
            await backend.put_batch([rec(i) for i in range(5, 40)])
            assert seqs(await backend.get(100, 0)) == list(range(40))
            assert backend.total_count() == 40

        run(go())

    def test_reads_see_records_before_and_after_flush_alike(self, backend: Any) -> None:
        async def go() -> None:
            await backend.put_batch([rec(i) for i in range(30)])
            before = await backend.get(100, 0)
            await backend.flush()
            assert await backend.get(100, 0) == before
            await backend.put(rec(30))
            assert seqs(await backend.get(5, 28)) == [28, 29, 30]

        run(go())

    # -- streaming without wait ----------------------------------------------------------
    def test_stream_yields_lists_in_order_up_to_limit(self, backend: Any) -> None:
        async def go() -> None:
            await backend.put_batch([rec(i) for i in range(250)])
            chunks = await collect(backend.get_stream(1000, 0))
            assert all(isinstance(c, list) and 0 < len(c) <= 100 for c in chunks)
            assert seqs([r for c in chunks for r in c]) == list(range(250))
            part = [r for c in await collect(backend.get_stream(120, 50)) for r in c]
            assert seqs(part) == list(range(50, 170))
            assert await collect(backend.get_stream(10, 250)) == []
            assert await collect(backend.get_stream(0, 0)) == []

        run(go())

    # -- streaming with wait -------------------------------------------------------------
    def test_waiting_stream_wakes_when_records_arrive(self, backend: Any) -> None:
        async def go() -> None:
            async def produce() -> None:
                for i in range(3):
                    await asyncio.sleep(0.05)
                    await backend.put(rec(i))

            start = time.monotonic()
            producer = asyncio.create_task(produce())
            rows = [r for c in await collect(backend.get_stream(3, 0, wait=True, timeout=10)) for r in c]
            await producer
            assert seqs(rows) == [0, 1, 2]
            assert time.monotonic() - start < 5  # woken, not timed out

        run(go())

    def test_waiting_stream_at_the_end_gets_the_next_record(self, backend: Any) -> None:
        async def go() -> None:
            await backend.put_batch([rec(i) for i in range(10)])

            async def late() -> None:
                await asyncio.sleep(0.1)
                await backend.put_batch([rec(10), rec(11)])

            task = asyncio.create_task(late())
            rows = [r for c in await collect(backend.get_stream(2, 10, wait=True, timeout=10)) for r in c]
            await task
            assert seqs(rows) == [10, 11]

        run(go())

    def test_two_waiting_readers_both_wake(self, backend: Any) -> None:
        async def go() -> None:
            readers = [asyncio.create_task(collect(backend.get_stream(1, 0, wait=True, timeout=10))) for _ in range(2)]
            await asyncio.sleep(0.05)
            await backend.put(rec(0))
            results = await asyncio.wait_for(asyncio.gather(*readers), 5)
            assert [seqs([r for c in res for r in c]) for res in results] == [[0], [0]]

        run(go())

    def test_waiting_stream_times_out_on_an_idle_bucket(self, backend: Any) -> None:
        async def go() -> None:
            start = time.monotonic()
            assert await collect(backend.get_stream(5, 0, wait=True, timeout=0.2)) == []
            assert 0.15 <= time.monotonic() - start < 3

        run(go())

    def test_waiting_stream_returns_what_it_has_when_the_timeout_passes(self, backend: Any) -> None:
        async def go() -> None:
            await backend.put_batch([rec(0), rec(1)])
            start = time.monotonic()
            rows = [r for c in await collect(backend.get_stream(5, 0, wait=True, timeout=0.2)) for r in c]
            assert seqs(rows) == [0, 1]
            assert 0.15 <= time.monotonic() - start < 3

        run(go())

    def test_stats_report_bucket_and_count(self, backend: Any) -> None:
        async def go() -> None:
            await backend.put_batch([rec(i) for i in range(7)])
            stats = await backend.stats()
            assert stats["bucket_id"] == 0
            assert stats["total_count"] == 7

        run(go())
