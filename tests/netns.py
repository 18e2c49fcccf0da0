"""Several hosts on one machine: network namespaces on a Linux bridge (root only), for partition tests.

A :class:`Network` is a bridge in the root namespace with an address of its own (so the test process
reaches every host) and :class:`Host`\\ s: one network namespace each, joined to the bridge by a veth
pair (``eth0`` inside). ``Network.cut(host)`` sets the bridge-side end of the host's link down, as a
cable pulled at the switch: its packets are dropped both ways, its TCP connections stall without
being reset, and ``heal(host)`` sets it up again (they resume by retransmission).

Names carry a tag made of ``mqn``, the creating process's pid and a counter, so parallel runs never
collide; :func:`sweep` removes what runs whose process is gone left behind. Commands go through
``ip`` (iproute2); :func:`unavailable` says why a machine cannot do this (not root, no ``ip``, no
namespaces or bridges).
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import random
import re
import shutil
import subprocess
from typing import Dict, List, Optional

from procs import pid_alive

PREFIX = "mqn"  # every name made here starts with it, then the pid (6 hex digits)
_LEFTOVER = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})")
_counter = itertools.count(1)
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip ARGS`; a failure raises with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def unavailable() -> Optional[str]:
    """None when this process can make namespaces and bridges, else why not (a test's skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    probe = f"{PREFIX}{os.getpid():06x}p"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` does not work here: {exc}"
    try:
        ip("link", "add", probe, "type", "bridge")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot make a Linux bridge here: {exc}"
    finally:
        ip("link", "del", probe, check=False)
        ip("netns", "del", probe, check=False)
    return None


def sweep() -> List[str]:
    """Delete the namespaces and links of runs whose process is gone (a run killed before its teardown);
    returns their names. Those of live processes (parallel runs) are left alone."""
    removed = []
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _LEFTOVER.match(name)
        if m and not pid_alive(int(m.group(1), 16)):
            ip("netns", "del", name, check=False)
            removed.append(name)
    for line in ip("-o", "link", "show").stdout.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        m = _LEFTOVER.match(name)
        if m and not pid_alive(int(m.group(1), 16)):
            ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that no route of this machine overlaps (another run's bridge has one)."""
    taken = []
    for line in ip("-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable", "blackhole", "prohibit", "multicast"):
            word = line.split()[1]
        try:
            taken.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(200, 207)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.200-207.x.0/24 subnet for a test network")


class Host:
    """One network namespace on the bridge: `name` (for `ip netns exec`), `address`, `link` (the
    bridge-side end of its veth pair, in the root namespace)."""

    def __init__(self, name: str, address: str, link: str):
        self.name, self.address, self.link = name, address, link

    def prefix(self) -> List[str]:
        """The command prefix that runs a program in this host's namespace (ip execs it: same pid)."""
        return ["ip", "netns", "exec", self.name]

    def can_connect(self, address: str, port: int, timeout: float = 3.0) -> Optional[str]:
        """None when a TCP connection from this host to address:port succeeds, else the error."""
        code = ("import socket,sys\n"
                f"socket.create_connection(({address!r}, {port}), timeout={timeout}).close()\n")
        done = subprocess.run([*self.prefix(), "python3", "-c", code], capture_output=True, text=True,
                              timeout=timeout + 20)
        return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} via {self.link}>"


class Network:
    """A bridge with the root namespace at .1 and hosts from .2 up; `close()` removes everything."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid():06x}{_DIGITS[next(_counter) % 36]}"
        self.bridge = f"{self.tag}b"
        self.subnet = _free_subnet()
        self._addresses = (str(a) for a in list(self.subnet.hosts()))
        self.gateway = next(self._addresses)  # the root namespace's address: the test process's
        self.hosts: Dict[str, Host] = {}
        self._made: List[tuple] = []  # ("link"|"netns", name), in the order made
        ip("link", "add", self.bridge, "type", "bridge")
        self._made.append(("link", self.bridge))
        ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self, role: str) -> Host:
        """A new host (`role` names it: "redis", "a", "b"...): its namespace, its veth pair into the bridge,
        its address, loopback up."""
        n = len(self.hosts) + 1
        ns, link = f"{self.tag}-{role}", f"{self.tag}h{n}"
        ip("netns", "add", ns)
        self._made.append(("netns", ns))
        ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._made.append(("link", link))
        address = next(self._addresses)
        ip("-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("link", "set", link, "master", self.bridge)
        ip("link", "set", link, "up")
        host = self.hosts[role] = Host(ns, address, link)
        return host

    def cut(self, host: Host) -> None:
        """Partition `host`: its link set down at the bridge (packets dropped both ways, nothing reset)."""
        ip("link", "set", host.link, "down")

    def heal(self, host: Host) -> None:
        """Join `host` again: its link up at the bridge (stalled connections resume by retransmission)."""
        ip("link", "set", host.link, "up")

    def close(self) -> None:
        """Remove every link and namespace made, newest first; errors are collected, not raised midway."""
        errors = []
        for kind, name in reversed(self._made):
            done = ip(kind, "del", name, check=False)
            if done.returncode != 0 and "Cannot find" not in done.stderr and "No such" not in done.stderr:
                errors.append(f"ip {kind} del {name}: {done.stderr.strip()}")
        self._made.clear()
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
