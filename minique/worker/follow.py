"""Sentinel: the worker follows a master that moved at once, not when a connection to the old one fails.

A connection held or blocked on the old master learns of a switch only from an error: the old master
refusing a write (NOREPLICAS, READONLY), or the sentinels closing its clients when they demote it
(seconds after the switch in a planned failover; never while they cannot reach it). Meanwhile the
worker fetches from, and writes to, a server whose writes the failover throws away.

So the worker parent asks the sentinels where each master is on every heartbeat (`MasterWatch.moved`,
one SENTINEL MASTERS round trip), and between heartbeats notes where its own reconnections found it
(a write the old master refused asks the sentinels: connections.py). When one moved, it drops its own
connections to it and bumps a generation number in shared memory before waking its pool processes (the
control number and SIGUSR2: worker/main.py); each process, seeing a new generation, drops its
connections too (`leave`), its pipes' unanswered commands kept and sent again to the new master
(pipe.py). Nothing of this exists, and nothing costs, unless the broker or the result store is a
`sentinel://` URL.

The sentinels announce a move (+switch-master, and SENTINEL MASTERS then names the new master) when
the failover is over, a second or two after the promotion; the one asked first may learn of it from
the others up to ~2 s later. The worker follows within a heartbeat of the sentinel it asks knowing.
"""
from __future__ import annotations

import mmap
import struct
import threading
from typing import Any, Dict, List, Optional, Tuple

import redis

from ..connections import SentinelRedis

_U32 = struct.Struct("<I")


class MasterWatch:
    """Where the Sentinel masters of an app's clients are; made by the worker parent before it forks."""

    def __init__(self, clients: List[Any]):
        self.pools = sentinel_pools(clients)
        self._shared = mmap.mmap(-1, _U32.size)  # the generation: bumped by the parent, read by its processes
        self._known: Dict[int, Tuple[str, int]] = {}  # pool index -> the master address last seen

    @classmethod
    def of(cls, app: Any) -> Optional["MasterWatch"]:
        """A watch over the app's broker and result store clients; None when neither is a Sentinel group."""
        watch = cls([app.broker_client, app.backend_client])
        return watch if watch.pools else None

    # --- parent side --------------------------------------------------------------------------------
    def moved(self, ask: bool = True) -> List[str]:
        """Where each master is now: asked of the sentinels, or (`ask` False: no I/O) where this process's
        last (re)connection found it. For each that moved since the last look (none at the first), drop
        this process's idle connections to it and say so; any move bumps the generation the pool
        processes read. A sentinel group that does not answer now is asked again next time."""
        news = []
        for i, pool in enumerate(self.pools):
            try:  # (asking, redis-py drops the idle connections when the master moved)
                address = tuple(pool.get_master_address()) if ask else pool.master_address
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):  # (MasterNotFoundError too)
                continue
            if not address:
                continue
            before = self._known.get(i)
            self._known[i] = (str(address[0]), int(address[1]))
            if before is not None and before != self._known[i]:
                pool.disconnect(inuse_connections=False)  # (those in use are dropped when released: not owned)
                news.append(f"{pool.service_name!r} moved from {before[0]}:{before[1]} to "
                            f"{address[0]}:{address[1]}")
        if news:
            _U32.pack_into(self._shared, 0, (self.generation() + 1) & 0xFFFFFFFF)
        return news

    # --- pool process side --------------------------------------------------------------------------
    def generation(self) -> int:
        """How many moves the parent has seen (a pool process compares it with the last one it acted on)."""
        return int(_U32.unpack_from(self._shared, 0)[0])

    def leave(self, app: Any) -> None:
        """In a pool process told of a move: drop the connections of the app's clients (those it uses
        now), so the next command asks the sentinels where the master is. Every one when this process
        runs one thread; else only the idle ones (another thread may be using the others: a pool
        thread, the asyncio pool's waiting thread), and those are dropped when they are released, no
        longer at the master's address (asked here first)."""
        alone = threading.active_count() == 1
        for pool in sentinel_pools([app.broker_client, app.backend_client]):
            try:
                pool.get_master_address()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                pass
            pool.disconnect(inuse_connections=alone)
        app.broker.reconnect()  # (send_now's own connection: under its lock)


def sentinel_pools(clients: List[Any]) -> List[Any]:
    """The connection pools of the Sentinel clients among `clients`, each once."""
    pools: List[Any] = []
    for client in clients:
        if isinstance(client, SentinelRedis) and client.connection_pool not in pools:
            pools.append(client.connection_pool)
    return pools
