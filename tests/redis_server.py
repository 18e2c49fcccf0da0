"""Private redis-server processes for the test-suite.

A :class:`RedisServer` runs :func:`minique.embedded.find_redis_server` as a
child process (not daemonized) on a free TCP port of 127.0.0.1.  It never
uses port 6379, so a system Redis on this machine is never touched.

Fault tests use :meth:`kill` (SIGKILL: no AOF flush), :meth:`stop` (clean
shutdown), :meth:`start` / :meth:`restart` (same port and data dir, so AOF
data comes back) and :meth:`pause` / :meth:`resume` (SIGSTOP / SIGCONT: a
server that hangs without closing connections).

A server may bind another address and run under a command prefix (``host``,
``prefix``): tests/netns.py runs one inside a network namespace
(``ip netns exec NS redis-server --bind 10.x.y.z``).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path
from typing import Optional

import redis

from minique.embedded import find_redis_server

SYSTEM_REDIS_PORT = 6379
READY_TIMEOUT = 10.0

_live: "weakref.WeakSet[RedisServer]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        server.kill()


def _free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != SYSTEM_REDIS_PORT:
            return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: SIGKILL the server if the test process dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


class RedisServer:
    """One private redis-server on 127.0.0.1:PORT with data dir ``dir``.

    ``appendonly=False`` (default) keeps everything in memory; with
    ``appendonly=True`` data survives :meth:`kill` + :meth:`start`.
    ``appendfsync`` defaults to ``always`` so that a write acknowledged
    before a SIGKILL is on disk (deterministic fault tests); pass
    ``"everysec"`` to model production durability. ``host`` is the address it
    binds (and clients use); ``prefix`` comes before the command (e.g.
    ``ip netns exec NS``; it must exec the server, keeping its pid).
    """

    def __init__(
        self,
        dir,
        *,
        appendonly: bool = False,
        appendfsync: str = "always",
        port: Optional[int] = None,
        extra_args: tuple = (),
        host: str = "127.0.0.1",
        prefix: tuple = (),
    ):
        self.dir = Path(dir)
        self._host = host
        self.prefix = tuple(prefix)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.port = port
        self.extra_args = tuple(extra_args)
        self.binary = find_redis_server()
        self.proc: Optional[subprocess.Popen] = None
        self.logfile = self.dir / "redis-server.out"
        if self.port == SYSTEM_REDIS_PORT:
            raise ValueError("refusing to run a test server on the system Redis port")

    # -- addresses -------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def client(self, db: int = 0, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 10)
        kwargs.setdefault("socket_connect_timeout", 5)
        return redis.Redis(host=self.host, port=self.port, db=db, **kwargs)

    # -- lifecycle -------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.running else None

    def _args(self) -> list:
        return [
            *self.prefix,
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--logfile", "",
            *self.extra_args,
        ]

    def start(self, timeout: float = READY_TIMEOUT) -> "RedisServer":
        """Start the server (no-op if running); waits until it answers PING.

        Keeps its port once chosen, so a restarted server has the same URL.
        """
        if self.running:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        keep_port = self.port is not None
        attempts = 1 if keep_port else 3
        last_error = ""
        for _ in range(attempts):
            if not keep_port:
                self.port = _free_port()
            error = self._spawn(timeout)
            if error is None:
                _live.add(self)
                return self
            last_error = error
        raise RuntimeError(last_error)

    def _spawn(self, timeout: float) -> Optional[str]:
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(self.dir),
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        delay = 0.01
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._ping():
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        self.kill()
        return (
            f"redis-server on port {self.port} did not become ready within "
            f"{timeout:.0f}s; output tail:\n{self.log_tail()}"
        )

    def _ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and reap it: nothing is flushed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume()
            self.proc.kill()
        self.proc.wait(timeout=10)
        _live.discard(self)

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown (SIGTERM: the AOF is flushed), SIGKILL on timeout."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        _live.discard(self)

    def restart(self, timeout: float = READY_TIMEOUT) -> "RedisServer":
        """Clean stop then start on the same port and data dir."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the server hangs, connections stay open."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause` (harmless otherwise)."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGCONT)

    # -- data ------------------------------------------------------------

    def flushall(self) -> None:
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.host}:{self.port} {state} dir={self.dir}>"

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
