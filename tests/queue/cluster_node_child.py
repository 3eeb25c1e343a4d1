"""A Pulsing node for the node-death cluster test: joins SEED at ADDR, registers the
Persisting backends, runs a StorageManager, prints ``READY`` once it sees ``MEMBERS`` alive
members, and serves buckets until killed or told ``EXIT`` on stdin.

Usage: ``python cluster_node_child.py ADDR SEED MEMBERS`` (always a fresh interpreter: Lance is
not fork-safe).
"""

from __future__ import annotations

import asyncio
import sys

import pulsing as pul
from pulsing.streaming import get_storage_manager

import persisting.queue


async def node(addr: str, seed: str, members: int) -> None:
    system = await pul.actor_system(addr=addr, seeds=[seed])
    await get_storage_manager(system)
    for _ in range(300):
        alive = [m for m in await system.members() if (m.get("status") or m.get("state")) == "Alive"]
        if len(alive) >= members:
            break
        await asyncio.sleep(0.1)
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() not in ("EXIT", ""):
        pass
    await system.shutdown()
    await asyncio.sleep(0.3)


if __name__ == "__main__":
    persisting.queue.register()
    asyncio.run(node(sys.argv[1], sys.argv[2], int(sys.argv[3])))
