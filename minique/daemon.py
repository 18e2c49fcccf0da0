"""Running a worker in the background: pid files, Celery's `%n`-style file names, detaching.

`Pidfile` follows Celery's rules (celery.platforms): a pid file that names a live process refuses a
second start; one whose process is gone (or that is not a pid file) is stale and replaced; the file is
created with O_EXCL, so two workers starting at once cannot both take it. `detach()` is Celery's
`--detach`: a double fork with `setsid`, the working directory and umask set, stdin from /dev/null and
stdout/stderr into the log file; the command that started it returns once the daemon has taken its pid
file (or said why it could not).
"""
from __future__ import annotations

import errno
import os
import re
import socket
import sys
from typing import Optional, Union

_FORMAT = re.compile(r"%(.)")
READY_TIMEOUT = 30.0  # seconds `detach` waits for the daemon to take its pid file


class PidfileLocked(Exception):
    """The pid file names a live process: a worker already runs with it."""


def node_format(text: Optional[str], nodename: str) -> Optional[str]:
    """Celery's node-name expansion of a file name (`--pidfile`, `--logfile`, `--statedb`): for the node
    `name@host`, %n is name, %h host, %d its domain, %p the whole node name, %i the process index
    (0: the worker's main process) and %I the same with a '-' before it ('' for the main process), %% a %."""
    if not text:
        return text
    name, sep, host = nodename.partition("@")
    if not sep:
        name, host = "minique", nodename
    host = host or socket.gethostname()
    values = {"n": name, "h": host, "d": host.partition(".")[2], "p": nodename, "i": "0", "I": "", "%": "%"}

    def expand(match: "re.Match[str]") -> str:
        key = match.group(1)
        if key not in values:
            raise ValueError(f"unknown format %{key} in {text!r} (known: %n %h %d %p %i %I %%)")
        return values[key]

    return _FORMAT.sub(expand, text)


class Pidfile:
    """A pid file taken for the life of a worker (Celery's `create_pidlock`)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.pid: Optional[int] = None  # the pid written, once acquired

    def read_pid(self) -> Optional[int]:
        """The pid in the file; None when there is no file; ValueError when it holds no pid."""
        try:
            with open(self.path) as fh:
                line = fh.readline()
        except FileNotFoundError:
            return None
        try:
            return int(line.strip())
        except ValueError:
            raise ValueError(f"pid file {self.path} holds no pid") from None

    def live_pid(self) -> Optional[int]:
        """The pid of the live process the file names, else None (no file, or a stale one)."""
        try:
            pid = self.read_pid()
        except ValueError:
            return None
        if not pid or pid == os.getpid():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # as Celery: another user's process, so not a worker of ours (a reused pid)
            return None
        return pid

    def check(self) -> None:
        """Raise PidfileLocked when the file names a live process."""
        pid = self.live_pid()
        if pid is not None:
            raise PidfileLocked(f"pid file {self.path} already exists and names a live process (pid {pid}): "
                                f"is a worker already running? (stop it, or give another --pidfile)")

    def acquire(self) -> "Pidfile":
        """Write our pid (O_EXCL), after removing a stale file; PidfileLocked when a live process holds it."""
        self.check()
        if os.path.exists(self.path):
            print(f"Stale pid file {self.path} found: removing it.", file=sys.stderr)
            self._unlink()
        pid = os.getpid()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another worker took it between our look and our write
            self.check()
            raise PidfileLocked(f"pid file {self.path} was just taken by another process") from None
        except OSError as exc:
            raise OSError(f"cannot write the pid file {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{pid}\n")
        self.pid = pid
        return self

    def release(self) -> None:
        """Remove the file if it still holds our pid (never another worker's)."""
        if self.pid is None or self.pid != os.getpid():
            return  # (a forked child inherits the object, not the file)
        try:
            if self.read_pid() == self.pid:
                self._unlink()
        except ValueError:
            pass
        self.pid = None

    def _unlink(self) -> None:
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EACCES):
                raise


def parse_umask(value: Union[str, int, None]) -> Optional[int]:
    """Celery's --umask: octal when it starts with 0 ('022'), else decimal; None: leave it."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value, 8 if value.startswith("0") else 10)
    except ValueError:
        raise ValueError(f"--umask must be a number such as 022 (octal with a leading 0), not {value!r}") from None


class Detached:
    """What the daemon keeps of its detaching: the pipe to tell the command that started it how it went."""

    def __init__(self, fd: int):
        self.fd: Optional[int] = fd

    def report(self, error: Optional[str] = None) -> None:
        """Started (None) or why not: the waiting command prints it and returns."""
        if self.fd is None:
            return
        try:
            os.write(self.fd, (f"error {error}" if error else "ok").encode()[:4000])
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


def detach(workdir: Optional[str], umask: Optional[int], logfile: Optional[str],
           ready_timeout: float = READY_TIMEOUT) -> Detached:
    """Become a daemon (double fork, new session, working directory, umask, standard streams redirected).

    Returns only in the daemon. The calling process waits (at most `ready_timeout` s) for the daemon's
    `Detached.report()` and exits: 0 once it is started, 1 with its reason otherwise."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first > 0:  # the command: wait for the middle process (it exits at once), then for the daemon's word
        os.close(write_end)
        os.waitpid(first, 0)
        _await_daemon(read_end, ready_timeout, logfile)
    os.close(read_end)
    os.setsid()  # a new session: no controlling terminal, not in the shell's process group
    if os.fork() > 0:
        os._exit(0)  # the middle process: the daemon can never take a terminal again
    if workdir:
        os.chdir(workdir)
    if umask is not None:
        os.umask(umask)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    out = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if logfile else null
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in {null, out}:
        if fd > 2:
            os.close(fd)
    return Detached(write_end)


def _await_daemon(fd: int, timeout: float, logfile: Optional[str]) -> None:
    """In the command that detached: the daemon's report, then exit."""
    import select
    chunks = []
    ready, _, _ = select.select([fd], [], [], timeout)
    if ready:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(fd)
    word = b"".join(chunks).decode(errors="replace")
    where = f" (its log: {logfile})" if logfile else ""
    if word == "ok":
        os._exit(0)
    if word.startswith("error "):
        print(f"Error: the detached worker did not start: {word[6:]}", file=sys.stderr, flush=True)
    elif not ready:
        print(f"Error: the detached worker gave no sign of starting within {timeout:g}s{where}", file=sys.stderr,
              flush=True)
    else:
        print(f"Error: the detached worker exited before it started{where}", file=sys.stderr, flush=True)
    os._exit(1)
