"""Groups of private redis-server processes: a Sentinel group and a Redis Cluster.

Built on tests/redis_server.py (one server). Ports are loopback ports below 32768, chosen at random
and checked free, so that no ephemeral port (the kernel hands those out from 32768 up) collides
with a node that is restarted on its port.

* :class:`SentinelGroup`: one master, its replicas (diskless sync, no delay) and three sentinels
  (``redis-server CONF --sentinel``) whose configs are pre-seeded with each other and the replicas,
  so that they agree at once; a failover is asked for (SENTINEL FAILOVER) or caused (kill the master).
* :class:`Cluster`: N masters (``--cluster-enabled yes``), slots assigned with CLUSTER ADDSLOTSRANGE
  and the nodes joined with CLUSTER MEET (no redis-cli needed); optional replicas.
"""
from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path
from typing import Dict, List, Optional

import redis

from redis_server import RedisServer

MASTER_NAME = "mymaster"
SLOTS = 16384
_taken: set = set()


def low_port() -> int:
    """A free loopback TCP port in 20000..32767 (below the ephemeral range), not handed out before."""
    for _ in range(1000):
        port = random.randint(20000, 32767 - 10000)  # node port + 10000 is its cluster bus port: stay < 32768
        if port in _taken or port + 10000 in _taken:
            continue
        if all(_bindable(p) for p in (port, port + 10000)):
            _taken.update((port, port + 10000))
            return port
    raise RuntimeError("no free loopback port below 32768")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def server_supports(mode: str) -> Optional[str]:
    """None if the redis-server binary has `mode` ("sentinel" or "cluster"), else why not."""
    import subprocess

    from minique.embedded import find_redis_server
    try:
        binary = find_redis_server()
    except Exception as exc:  # noqa: BLE001
        return f"no redis-server: {exc}"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    if "v=" not in out:
        return f"cannot tell the version of {binary}"
    major = int(out.split("v=")[1].split(".")[0])
    if mode == "cluster" and major < 7:
        return f"{binary} is Redis {major}: the cluster fixture uses CLUSTER ADDSLOTSRANGE (Redis 7)"
    return None


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (redis.exceptions.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _wait_offset(replica: redis.Redis, offset: int) -> bool:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if int(replica.info("replication").get("slave_repl_offset", 0)) >= offset:
            return True
        time.sleep(0.05)
    return False


class SentinelServer(RedisServer):
    """A redis-server in sentinel mode, its config file written before it starts (sentinels rewrite it)."""

    def __init__(self, dir, config: str, port: int):
        super().__init__(dir, port=port)
        self.config = config

    def _args(self) -> list:
        conf = self.dir / "sentinel.conf"
        if not conf.exists():
            conf.write_text(self.config)
        return [self.binary, str(conf), "--sentinel", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--daemonize", "no", "--logfile", ""]


class SentinelGroup:
    """1 master + `replicas` replicas + `sentinels` sentinels on loopback, named MASTER_NAME."""

    def __init__(self, dir, replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000,
                 master_args: tuple = (), server_args: tuple = ()):
        self.dir = Path(dir)
        self.down_after_ms = down_after_ms
        self.servers: List[RedisServer] = []
        ports = [low_port() for _ in range(1 + replicas)]
        for i, port in enumerate(ports):
            extra = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                     "--repl-diskless-load", "swapdb", *server_args)  # (equal priorities: the sentinels
            # promote the replica with the most data, which has every write a WAIT confirmed)
            if i:
                extra += ("--replicaof", "127.0.0.1", str(ports[0]))
            else:
                extra += tuple(master_args)
            self.servers.append(RedisServer(self.dir / f"node{port}", port=port, extra_args=extra))
        self.sentinel_ports = [low_port() for _ in range(sentinels)]
        ids = [os.urandom(20).hex() for _ in self.sentinel_ports]
        self.sentinels: List[SentinelServer] = []
        for port, myid in zip(self.sentinel_ports, ids):
            lines = [f"sentinel myid {myid}",
                     f"sentinel monitor {MASTER_NAME} 127.0.0.1 {ports[0]} 2",
                     f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
                     f"sentinel failover-timeout {MASTER_NAME} 10000",
                     f"sentinel parallel-syncs {MASTER_NAME} 1"]
            lines += [f"sentinel known-replica {MASTER_NAME} 127.0.0.1 {p}" for p in ports[1:]]
            lines += [f"sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {other} {oid}"
                      for other, oid in zip(self.sentinel_ports, ids) if other != port]
            self.sentinels.append(SentinelServer(self.dir / f"sentinel{port}", "\n".join(lines) + "\n", port))

    def url(self, db: int = 0) -> str:
        """The group as kombu spells it (the master's db on the first part)."""
        return ";".join(f"sentinel://127.0.0.1:{p}" + (f"/{db}" if i == 0 else "")
                        for i, p in enumerate(self.sentinel_ports))

    @property
    def transport_options(self) -> Dict[str, object]:
        return {"master_name": MASTER_NAME}

    def start(self) -> "SentinelGroup":
        for server in self.servers:
            server.start()
        wait_until(lambda: all(self._linked(s) for s in self.servers[1:]), 20, "replicas in sync")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._agreed, 20, "sentinels agreeing on the master and its replicas")
        return self

    def _linked(self, server: RedisServer) -> bool:
        """The replica is in sync and streaming (after a diskless sync the master starts streaming
        only once the replica's first REPLCONF ACK arrives: a failover before it would lose everything)."""
        client, master = server.client(), self.servers[0].client()
        try:
            if client.info("replication").get("master_link_status") != "up":
                return False
            info = master.info("replication")
            master.set("minique:fixture:probe", b"1")  # an offset the replica must reach
            offset = master.info("replication")["master_repl_offset"]
            return any(isinstance(v, dict) and v.get("port") == server.port and v.get("state") == "online"
                       and int(v.get("offset", 0)) >= offset for v in info.values()) or \
                _wait_offset(client, offset)
        finally:
            client.close()
            master.close()

    def _agreed(self) -> bool:
        master = self.servers[0].port
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                info = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
            finally:
                client.close()
            fields = dict(zip(info[::2], info[1::2])) if isinstance(info, list) else info
            if int(port) != master or int(fields.get(b"num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
        return True

    def master_port(self) -> int:
        """Where the sentinels say the master is now (a majority of them)."""
        seen: Dict[int, int] = {}
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                seen[int(port)] = seen.get(int(port), 0) + 1
            except (redis.exceptions.RedisError, OSError):
                continue
            finally:
                client.close()
        return max(seen, key=lambda p: seen[p])

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def failover(self, timeout: float = 30.0) -> int:
        """SENTINEL FAILOVER (the old master stays alive and becomes a replica); returns the new master's port."""
        old = self.master_port()
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        return self.wait_switched(old, timeout)

    def wait_switched(self, old: int, timeout: float = 30.0) -> int:
        def switched():
            port = self.master_port()
            if port == old:
                return None
            client = self.server(port).client()
            try:
                return port if client.info("replication").get("role") == "master" else None
            finally:
                client.close()
        return wait_until(switched, timeout, "the sentinels to switch master")

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.kill()


class Cluster:
    """`masters` cluster masters on loopback (each with `replicas` replicas), all slots covered."""

    def __init__(self, dir, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000):
        self.dir = Path(dir)
        self.masters: List[RedisServer] = []
        self.replicas: List[RedisServer] = []
        self._owner: Dict[int, RedisServer] = {}  # slots migrated
        args = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-require-full-coverage", "no", "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0")
        for i in range(masters * (1 + replicas)):
            port = low_port()
            server = RedisServer(self.dir / f"node{port}", port=port,
                                 extra_args=args + ("--cluster-config-file", f"nodes-{port}.conf"))
            (self.masters if i < masters else self.replicas).append(server)

    @property
    def nodes(self) -> List[RedisServer]:
        return self.masters + self.replicas

    def url(self, scheme: str = "redis+cluster") -> str:
        return f"{scheme}://" + ",".join(f"127.0.0.1:{s.port}" for s in self.masters[:2]) + "/"

    def start(self) -> "Cluster":
        for server in self.nodes:
            server.start()
        n = len(self.masters)
        for i, server in enumerate(self.masters):
            first, last = i * SLOTS // n, (i + 1) * SLOTS // n - 1
            server.client().execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        head = self.masters[0].client()
        for server in self.nodes[1:]:
            head.execute_command("CLUSTER", "MEET", "127.0.0.1", server.port)
        wait_until(lambda: all(self._sees_all(s) for s in self.nodes), 30, "every node to know every other")
        for i, replica in enumerate(self.replicas):
            master = self.masters[i % n]
            master_id = master.client().execute_command("CLUSTER", "MYID")
            replica.client().execute_command("CLUSTER", "REPLICATE", master_id)
        wait_until(lambda: all(self._ok(s) for s in self.nodes), 30, "cluster_state:ok on every node")
        return self

    def _sees_all(self, server: RedisServer) -> bool:
        client = server.client()
        try:
            raw = client.execute_command("CLUSTER", "NODES")
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            lines = [line for line in text.splitlines() if line.strip()]
            return len(lines) == len(self.nodes) and not any("handshake" in line or "noaddr" in line
                                                             for line in lines)
        finally:
            client.close()

    def _ok(self, server: RedisServer) -> bool:
        client = server.client()
        try:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text and "cluster_slots_assigned:16384" in text
        finally:
            client.close()

    def master_of(self, slot: int) -> RedisServer:
        if slot in self._owner:
            return self._owner[slot]
        n = len(self.masters)
        for i, server in enumerate(self.masters):
            if i * SLOTS // n <= slot <= (i + 1) * SLOTS // n - 1:
                return server
        raise ValueError(slot)

    def migrate_slot(self, slot: int, target: RedisServer, pause: float = 0.0) -> int:
        """Move `slot` to `target` as redis-cli --cluster reshard does (IMPORTING / MIGRATING, MIGRATE
        key by key, `pause` s between keys, then SETSLOT NODE everywhere); returns the keys moved."""
        source = self.master_of(slot)
        src, dst = source.client(), target.client()
        src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        moved = 0
        while True:
            found = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)
            if not found:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *found)
            moved += len(found)
            time.sleep(pause)
        for server in self.masters:
            server.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self._owner[slot] = target
        return moved

    def flushall(self) -> None:
        for server in self.masters:
            server.flushall()

    def stop(self) -> None:
        for server in self.nodes:
            server.kill()
