"""Redis clients for the deployments minique/urls.py names: one server, a Redis Cluster, a Sentinel group.

Sentinel: redis-py resolves the master through the sentinels when a connection is taken from its
pool, but a connection that reconnects itself (a held connection, or redis-py's own retry of a
command) goes back to the address it had: after a failover it keeps knocking at the dead or demoted
master. `SentinelConnection` asks the sentinels on every (re)connection instead, a demoted
master's READONLY drops the connection (redis-py), and a write refused for a while (NOREPLICAS from
an old master still up) asks the sentinels again before it is retried, so every path follows a switch
once it meets an error. A worker does not wait for one: it asks on every heartbeat (worker/follow.py).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from .pipe import FAILOVER_TIMEOUT, transient
from .urls import Target


class SentinelConnection(SentinelManagedConnection):
    """A master connection that asks the sentinels where the master is each time it connects."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock is None and self.connection_pool.is_master:
            try:
                self.host, self.port = self.connection_pool.get_master_address()
            except MasterNotFoundError:
                raise self._not_found() from None
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """As a plain connection's: an error or an interruption mid-reply (the worker's SIGUSR2 ending a
        blocking read) drops the connection (redis-py's Sentinel connection keeps it by default, and the
        next command on it would read the reply still owed)."""
        kwargs.setdefault("disconnect_on_error", True)
        return super().read_response(*args, **kwargs)

    def connect(self) -> None:
        try:
            super().connect()  # type: ignore[no-untyped-call]  # (redis-py leaves it unannotated)
        except MasterNotFoundError:
            raise self._not_found() from None

    def _not_found(self) -> MasterNotFoundError:
        """MasterNotFoundError, said shortly (redis-py's message holds every sentinel client's repr)."""
        proxy = self.connection_pool
        asked = ", ".join("{host}:{port}".format_map(s.connection_pool.connection_kwargs)
                          for s in proxy.sentinel_manager.sentinels)
        return MasterNotFoundError(f"no sentinel answered with a master for {proxy.service_name!r} (asked {asked})")


class SentinelSSLConnection(SentinelConnection, SentinelManagedSSLConnection):
    pass


_FAILOVER_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
                    redis.exceptions.MasterDownError, redis.exceptions.SlotNotCoveredError)


class _RidesFailover:
    """Retries a command that failed because of a failover, backing off, for up to `failover_timeout`
    seconds before the error reaches the caller: a lost connection, a cluster slot without its master
    yet, a master refusing writes without its replicas (NOREPLICAS, with `min-replicas-to-write`).
    (A command whose reply was lost may run twice: a message sent twice, never lost.)"""

    failover_timeout = FAILOVER_TIMEOUT

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        deadline, delay = 0.0, 0.05
        while True:
            try:
                return super().execute_command(*args, **kwargs)  # type: ignore[misc]
            except (*_FAILOVER_ERRORS, redis.exceptions.ResponseError) as exc:
                if isinstance(exc, redis.exceptions.ResponseError) and not transient(exc):
                    raise
                now = time.monotonic()
                deadline = deadline or now + self.failover_timeout
                if now >= deadline:
                    raise
                if isinstance(exc, redis.exceptions.ResponseError):
                    self._refused()
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 0.5)

    def _refused(self) -> None:
        """A write was refused for a while (NOREPLICAS, READONLY...): before trying again, look whether the
        deployment moved (a Sentinel client asks the sentinels)."""


class Cluster(_RidesFailover, RedisCluster):
    """redis-py's cluster client, riding out a failover: while a dead master's replica takes over (the
    node time-out, then an election: seconds), redis-py fails each command at once."""


class SentinelRedis(_RidesFailover, redis.Redis):
    """A client of the master a Sentinel group names, riding out a failover (see SentinelConnection)."""

    def _refused(self) -> None:
        """A master that refuses writes (NOREPLICAS: its replica was promoted) may stay up, a master, for
        seconds (a planned failover) or for good (cut off from the sentinels): ask the sentinels, and
        when the master moved, its idle connections are dropped (redis-py), so the next try goes there."""
        try:
            cast(SentinelConnectionPool, self.connection_pool).get_master_address()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):  # (MasterNotFoundError too)
            pass


def make_client(target: Target, url: str, timeouts: Dict[str, Any], retry: Optional[Any],
                failover_timeout: float = FAILOVER_TIMEOUT) -> Any:
    """A client for `target` (`url` is the single server's URL, already resolved for redis+embedded);
    a Sentinel or cluster client rides out a failover for `failover_timeout` s (0: a one-shot check)."""
    client = _make_client(target, url, timeouts, retry)
    if isinstance(client, _RidesFailover):
        client.failover_timeout = failover_timeout
    return client


def _make_client(target: Target, url: str, timeouts: Dict[str, Any], retry: Optional[Any]) -> Any:
    on_error = [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    if target.kind == "cluster":
        return Cluster(startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
                            username=target.username, password=target.password, ssl=target.ssl,
                            require_full_coverage=False, **timeouts,
                            **({"retry": retry} if retry is not None else {}))
    if target.kind == "sentinel":
        from redis.sentinel import Sentinel
        # one attempt per sentinel and question (redis-py's default backs off for seconds): asking the
        # next sentinel, and minique's own retries, are what ride out a sentinel that is down
        sentinel_kwargs = {**timeouts, "socket_timeout": timeouts["socket_connect_timeout"],
                           "retry": Retry(NoBackoff(), 0), **(target.sentinel_kwargs or {})}
        sentinel = Sentinel(list(target.nodes), min_other_sentinels=target.min_other_sentinels,
                            sentinel_kwargs=sentinel_kwargs)
        return sentinel.master_for(
            target.master_name, redis_class=SentinelRedis, username=target.username, password=target.password,
            db=target.db, connection_class=SentinelSSLConnection if target.ssl else SentinelConnection,
            health_check_interval=30, retry=retry, retry_on_error=on_error, **timeouts)
    return redis.Redis.from_url(url, **timeouts, health_check_interval=30, retry=retry, retry_on_error=on_error)
