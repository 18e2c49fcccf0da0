"""Counts network round trips to Redis per process (benchmark instrumentation only).

Every redis-py command or pipeline is one `send_packed_command` call followed by
reading the replies, so counting those calls counts round trips. Installed by the
bench apps when BENCH_RTCOUNT_DIR is set; each process then writes its count to
`$BENCH_RTCOUNT_DIR/<pid>` at most every 50 ms (a file, so no Redis command is
added). The count restarts at zero in a forked child.
"""
from __future__ import annotations

import os
import time

import redis.connection as rc

_original = rc.AbstractConnection.send_packed_command
_state = {"n": 0, "dir": None, "last": 0.0}


def _write() -> None:
    folder = _state["dir"]
    if not folder:
        return
    path = os.path.join(folder, str(os.getpid()))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(_state["n"]))
    os.replace(tmp, path)
    _state["last"] = time.monotonic()


def _counted(self, command, check_health=True):
    _state["n"] += 1
    if _state["dir"] and time.monotonic() - _state["last"] > 0.05:
        _write()
    return _original(self, command, check_health)


def _after_fork() -> None:
    _state["n"] = 0
    _state["last"] = 0.0


def install(folder: str = "") -> None:
    """Count this process's round trips (and its forked children's, each on its own)."""
    _state["dir"] = folder or None
    if rc.AbstractConnection.send_packed_command is _counted:
        return
    rc.AbstractConnection.send_packed_command = _counted
    if not _state.get("fork_hook"):
        os.register_at_fork(after_in_child=_after_fork)
        _state["fork_hook"] = True


def uninstall() -> None:
    rc.AbstractConnection.send_packed_command = _original


def count() -> int:
    return _state["n"]


def reset() -> None:
    _state["n"] = 0


def uncounted_connection_class():
    """A Connection whose round trips are not counted (the benchmark's own task bodies)."""
    class UncountedConnection(rc.Connection):
        def send_packed_command(self, command, check_health=True):
            return _original(self, command, check_health)
    return UncountedConnection


def maybe_install() -> None:
    folder = os.environ.get("BENCH_RTCOUNT_DIR")
    if folder:
        install(folder)


def read_dir(folder: str) -> dict:
    """pid -> last count written, for every process that wrote one."""
    out = {}
    for name in os.listdir(folder):
        if name.isdigit():
            try:
                with open(os.path.join(folder, name)) as f:
                    out[int(name)] = int(f.read() or 0)
            except (OSError, ValueError):
                pass
    return out
