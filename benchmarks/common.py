"""Plumbing shared by the runner and both agents: a private redis-server, worker
processes, memory readings, statistics. Standard library and redis-py only (it is
imported inside the Celery virtualenv too)."""
from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import redis

ROOT = Path(__file__).resolve().parent.parent   # the repository (on the workers' PYTHONPATH)
SYSTEM_REDIS_PORT = 6379


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != SYSTEM_REDIS_PORT:
            return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class RedisServer:
    """A private, in-memory redis-server on 127.0.0.1 (never the system one on 6379)."""

    def __init__(self, workdir: Path, binary: str = "redis-server"):
        self.workdir = Path(workdir)
        self.binary = binary
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(3):
            self.port = free_port()
            log = open(self.workdir / "redis-server.log", "ab")
            self.proc = subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
                 "--protected-mode", "no"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            log.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.client().ping():
                        return self
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
            last = (self.workdir / "redis-server.log").read_text(errors="replace")[-2000:]
            self.stop()
        raise RuntimeError(f"could not start redis-server:\n{last}")

    def client(self) -> "redis.Redis":
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=60)

    def version(self) -> str:
        return self.client().info("server")["redis_version"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class RedisCluster:
    """Private Redis Cluster masters on 127.0.0.1 (`--cluster`), the slots spread evenly, no replicas.

    Ports below 32768 (a node's bus port is its port + 10000), so that no ephemeral port collides."""

    def __init__(self, workdir: Path, binary: str = "redis-server", masters: int = 3):
        self.workdir = Path(workdir)
        self.binary = binary
        self.ports: List[int] = []
        self.procs: List[subprocess.Popen] = []
        self.masters = masters

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/"

    def _port(self) -> int:
        import random
        for _ in range(1000):
            port = random.randint(20000, 22767)
            if port in self.ports:
                continue
            try:
                for p in (port, port + 10000):
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                        sock.bind(("127.0.0.1", p))
                return port
            except OSError:
                continue
        raise RuntimeError("no free port pair below 32768")

    def start(self) -> "RedisCluster":
        for _ in range(self.masters):
            port = self._port()
            self.ports.append(port)
            d = self.workdir / f"node{port}"
            d.mkdir(parents=True, exist_ok=True)
            log = open(d / "redis-server.log", "ab")
            self.procs.append(subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(d), "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--logfile", "", "--protected-mode", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent))
            log.close()
        clients = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=10) for p in self.ports]
        wait_for(lambda: all(_pings(c) for c in clients), 10, "cluster nodes to start")
        for i, c in enumerate(clients):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * 16384 // self.masters,
                              (i + 1) * 16384 // self.masters - 1)
        for p in self.ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", p)
        wait_for(lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in clients), 30,
                 "cluster_state:ok", interval=0.05)
        return self

    def client(self) -> "redis.Redis":
        return redis.Redis(host="127.0.0.1", port=self.ports[0], socket_timeout=60)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _pings(client: "redis.Redis") -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def server_pids(client: Any) -> List[int]:
    """The redis-server process(es) behind `client` (every node of a cluster client)."""
    if hasattr(client, "get_nodes"):  # a cluster client: ask each node
        return [int(client.get_redis_connection(node).info("server")["process_id"]) for node in client.get_nodes()]
    return [int(client.info("server")["process_id"])]


def commandstats(client: "redis.Redis") -> Dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (lower-case names, 'xadd', 'evalsha', ...)."""
    out = {}
    for key, value in client.info("commandstats").items():
        name = key[len("cmdstat_"):] if key.startswith("cmdstat_") else key
        out[name.replace("|", " ")] = int(value["calls"])
    return out


def used_memory(client: Any) -> int:
    if hasattr(client, "get_nodes"):  # a cluster client: every node's
        return sum(int(client.get_redis_connection(node).info("memory")["used_memory"])
                   for node in client.get_nodes())
    return int(client.info("memory")["used_memory"])


# --- processes --------------------------------------------------------------------------------------

def children_of(pid: int) -> List[int]:
    out: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            out.extend(int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def descendants(pid: int) -> List[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = children_of(p)
        out.extend(kids)
        todo.extend(kids)
    return out


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (KiB), from /proc/PID/smaps_rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0.0


def tree_pss_kib(pid: int) -> Dict[str, int]:
    """PSS of a process and all its descendants: total, parent, children, process count."""
    kids = descendants(pid)
    parent = pss_kib(pid)
    child = sum(pss_kib(k) for k in kids)
    return {"total": parent + child, "parent": parent, "children": child, "processes": 1 + len(kids)}


class WorkerProc:
    """A worker started from its CLI, in its own session, its output in a log file."""

    def __init__(self, argv: Sequence[str], env: Dict[str, str], log_path: Path, cwd: Path = ROOT):
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        # own session (so a stop reaches the whole pool), killed if whoever started it dies
        self.popen = subprocess.Popen(self.argv, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"worker exited with {self.popen.returncode}: {' '.join(self.argv)}\n"
                               f"{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL for the whole session if it lingers."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)   # stragglers of our own session only
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.005, check=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- statistics -------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary(values: Iterable[float]) -> Dict[str, float]:
    data = [v for v in values if v is not None]
    if not data:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(data), "min": min(data), "max": max(data), "n": len(data)}
