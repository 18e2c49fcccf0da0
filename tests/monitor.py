"""Recording every command a Redis server runs (MONITOR), to check what crosses hash slots.

`Recorder(port)` opens a MONITOR connection in a thread; `stop()` returns the commands seen, each as
(client address, [args]); `slot_problems(commands)` lists every script, transaction and multi-key
command whose keys are in more than one slot (what a Redis Cluster refuses with CROSSSLOT).
"""
from __future__ import annotations

import re
import socket
import threading
from typing import Dict, List, Tuple

from minique.keys import hash_slot

_LINE = re.compile(rb'^\+\d+\.\d+ \[\d+ ([^\]]+)\] (.*)$')
_ARG = re.compile(rb'"((?:\\.|[^"\\])*)"')

# command -> which of its arguments are keys (a slice of args[1:]), for the multi-key commands minique sends
_MULTI_KEY = {
    b"DEL": slice(0, None), b"UNLINK": slice(0, None), b"EXISTS": slice(0, None), b"MGET": slice(0, None),
    b"TOUCH": slice(0, None), b"RPOPLPUSH": slice(0, 2), b"BRPOPLPUSH": slice(0, 2), b"LMOVE": slice(0, 2),
    b"BLMOVE": slice(0, 2), b"RENAME": slice(0, 2), b"SMOVE": slice(0, 2),
}


class Recorder:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"MONITOR\r\n")
        self.lines: List[bytes] = []
        self._buf = b""
        first = self._readline()
        assert first == b"+OK", first
        self.sock.settimeout(None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _readline(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _run(self) -> None:
        try:
            while True:
                self.lines.append(self._readline())
        except (EOFError, OSError):
            pass

    def stop(self) -> List[Tuple[str, List[bytes]]]:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)
        out = []
        for line in self.lines:
            m = _LINE.match(line)
            if m:
                args = [_unescape(a) for a in _ARG.findall(m.group(2))]
                out.append((m.group(1).decode(), args))
        return out


def _unescape(raw: bytes) -> bytes:
    return raw.decode("unicode_escape").encode("latin-1")


def slot_problems(commands: List[Tuple[str, List[bytes]]]) -> List[str]:
    """Every EVAL/EVALSHA, MULTI..EXEC block and multi-key command touching keys in several slots."""
    problems = []
    open_tx: Dict[str, List[bytes]] = {}
    for client, args in commands:
        if client == "lua" or not args:  # run inside a script: its keys are the script's
            continue
        name = args[0].upper()
        if name == b"MULTI":
            open_tx[client] = []
            continue
        if name in (b"EXEC", b"DISCARD"):
            keys = open_tx.pop(client, [])
            if len({hash_slot(k) for k in keys}) > 1:
                problems.append(f"transaction over {sorted(set(keys))!r}")
            continue
        keys = _keys_of(name, args)
        if client in open_tx:
            open_tx[client].extend(keys)
        elif len({hash_slot(k) for k in keys}) > 1:
            problems.append(f"{name.decode()} over {keys!r}")
    return problems


def _keys_of(name: bytes, args: List[bytes]) -> List[bytes]:
    if name in (b"EVAL", b"EVALSHA"):
        return args[3:3 + int(args[2])]
    if name in (b"XREAD", b"XREADGROUP"):
        streams = [a.upper() for a in args].index(b"STREAMS")
        rest = args[streams + 1:]
        return rest[:len(rest) // 2]
    if name in _MULTI_KEY:
        return args[1:][_MULTI_KEY[name]]
    return args[1:2]
