"""The measuring side of the benchmark: one agent process per system (minique, Celery).

The runner starts `python -m benchmarks.agent_minique` (this interpreter) and
`benchmarks/.celery-venv/bin/python -m benchmarks.agent_celery`; each reads one JSON
job per line on stdin and answers one JSON line on its original stdout. Every job
is written once, here, against the small Driver interface, so both systems are
measured by the same code; a driver only says how its system sends, calls and
starts a worker.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import redis

from . import common
from .apps import rtcount


class Driver:
    """How one system sends tasks and runs workers. Subclassed in agent_minique / agent_celery."""

    name = "?"

    def __init__(self, redis_url: str, workdir: Path):
        self.redis_url = redis_url
        self.workdir = workdir
        if redis_url.startswith("redis+cluster://"):  # (--cluster): a cluster client, for flushing and INFO
            from redis.cluster import RedisCluster
            host, port = redis_url.split("://", 1)[1].split(",", 1)[0].rstrip("/").rsplit(":", 1)
            self.r = RedisCluster(host=host, port=int(port), socket_timeout=600)
        else:
            self.r = redis.Redis.from_url(redis_url, socket_timeout=600)
        self.nworkers = 0

    # sending (client side)
    def send_one(self, i: int) -> Any: raise NotImplementedError
    def send_bulk(self, n: int) -> Any: raise NotImplementedError
    def send_group(self, n: int) -> Any: raise NotImplementedError
    def send_async(self, n: int, coroutines: int, reset: Callable[[], None]) -> float: raise NotImplementedError
    def preload(self, task: str, n: int) -> None: raise NotImplementedError
    def call_add(self, timeout: float) -> Any: raise NotImplementedError
    def run_chord(self, n: int, timeout: float) -> Any: raise NotImplementedError
    def version(self) -> str: raise NotImplementedError
    def worker_argv(self, concurrency: int, name: str, flags: List[str]) -> List[str]: raise NotImplementedError

    # the asyncio-io figure: `async def` tasks that each sleep, one asyncio worker process
    def io_send(self, n: int) -> List[Any]: raise NotImplementedError
    io_result_command = "set"   # the command that stores a final result on io_result_keys (a keyspace event)
    def io_result_keys(self, handles: List[Any]) -> List[bytes]: raise NotImplementedError
    def io_starts(self, handles: List[Any], timeout: float) -> List[float]: raise NotImplementedError
    def io_worker_argv(self, concurrency: int, name: str) -> List[str]:
        """One worker process running up to `concurrency` tasks at once on its event loop."""
        raise NotImplementedError

    # workers
    def start_worker(self, concurrency: int, flags: List[str], count_file: str = "",
                     rtcount_dir: Optional[str] = None, settings: Optional[Dict[str, Any]] = None,
                     prefix: Optional[List[str]] = None, io: bool = False) -> common.WorkerProc:
        self.nworkers += 1
        name = f"bench{self.nworkers}@{self.name}"
        env = dict(os.environ)
        env.update({"BENCH_REDIS_URL": self.redis_url, "MINIQUE_BROKER_URL": self.redis_url,
                    "BENCH_COUNT_FILE": count_file or os.devnull, "PYTHONPATH": str(common.ROOT)})
        env.pop("MINIQUE_RESULT_BACKEND", None)
        env.pop("BENCH_RTCOUNT_DIR", None)
        if rtcount_dir:
            env["BENCH_RTCOUNT_DIR"] = rtcount_dir
        env.pop("BENCH_SETTINGS", None)
        if settings:
            env["BENCH_SETTINGS"] = json.dumps(settings)  # the bench app's app.conf.update (minique only)
        log = self.workdir / f"{self.name}-worker{self.nworkers}.log"
        argv = self.io_worker_argv(concurrency, name) if io else self.worker_argv(concurrency, name, flags)
        return common.WorkerProc([*(prefix or []), *argv], env, log)

    def wait_ready(self, worker: common.WorkerProc, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            worker.check()
            try:
                if self.call_add(timeout=2.0) == 3:
                    return
            except Exception:  # noqa: BLE001 - not ready yet (time out, connection)
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError("worker did not answer")


# --- jobs ------------------------------------------------------------------------------------------

def _fresh(d: Driver) -> None:
    d.r.flushall()


def _reset_stats(d: Driver) -> None:
    d.r.config_resetstat()


def _own(stats: Dict[str, int], own: Dict[str, int]) -> Dict[str, int]:
    """Command counts less the benchmark's own commands (its task bodies, its waiting, its reading)."""
    out = dict(stats)
    for k in ("info", "config resetstat", "config get", "flushall"):
        out.pop(k, None)
    for k, v in own.items():
        if k in out:
            out[k] -= v
            if out[k] <= 0:
                out.pop(k)
    return out


def _count_file(d: Driver) -> Path:
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else d.workdir
    fd, name = tempfile.mkstemp(prefix="minique-bench-count-", dir=str(base))
    os.close(fd)
    return Path(name)


class _Scraper:
    """GETs http://127.0.0.1:PORT/metrics every `every` seconds in a thread (a very eager Prometheus)."""

    def __init__(self, port: int, every: float = 0.5):
        import threading
        self.port, self.every, self.ok, self.failed = port, every, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import urllib.request
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as resp:
                    resp.read()
                self.ok += 1
            except Exception:  # noqa: BLE001 - not served (yet): counted
                self.failed += 1
            if self.stop.wait(self.every):
                return

    def close(self) -> Dict[str, int]:
        self.stop.set()
        self.thread.join(5)
        return {"scrapes_ok": self.ok, "scrapes_failed": self.failed}


def job_drain(d: Driver, n: int, concurrency: int = 2, stored: bool = False, flags: Optional[List[str]] = None,
              body: str = "tick", pss: bool = False, commands: bool = False, timeout: Optional[float] = None,
              scrape_port: int = 0, settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Preload n no-op tasks with no worker running, start the worker with `-c concurrency`, and
    time the first task to the n-th: the tasks append a byte each to a file this job watches."""
    _fresh(d)
    task = {("tick", False): "tick_ignored", ("tick", True): "tick_stored", ("incr", False): "incr_ignored"}[
        (body, stored)]
    mem0 = common.used_memory(d.r)
    t0 = time.perf_counter()
    d.preload(task, n)
    preload_s = time.perf_counter() - t0
    mem1 = common.used_memory(d.r)
    rt_dir = tempfile.mkdtemp(prefix="rt-", dir=str(d.workdir)) if commands else None
    if commands:
        _reset_stats(d)
    count = _count_file(d)
    worker = d.start_worker(concurrency, list(flags or []), count_file=str(count), rtcount_dir=rt_dir,
                            settings=settings)
    scraper = _Scraper(scrape_port) if scrape_port else None
    out: Dict[str, Any] = {"n": n, "preload_s": preload_s, "redis_bytes_per_msg": (mem1 - mem0) / n}
    try:
        limit = timeout or max(120.0, n / 150.0)
        clock, size_of, sleep = time.monotonic, os.path.getsize, time.sleep
        deadline = clock() + limit
        next_check = clock() + 1.0
        points: List[tuple] = []          # (tasks done, when): first seen, each tenth, the end
        tenth = max(1, n // 10)
        next_mark = tenth
        redis_pids = common.server_pids(d.r)
        procs: List[int] = []
        cpu0: Dict[str, float] = {}

        def cpu_now() -> Dict[str, float]:
            return {"worker": sum(common.cpu_seconds(p) for p in procs),
                    "redis": sum(common.cpu_seconds(p) for p in redis_pids)}

        while True:
            done = size_of(count)
            now = clock()
            if done:
                if not points:
                    points.append((done, now))
                    procs = [worker.pid] + common.descendants(worker.pid)
                    cpu0 = cpu_now()
                if done >= next_mark or done >= n:
                    points.append((done, now))
                    next_mark = (done // tenth + 1) * tenth
                if done >= n:
                    break
            if now > next_check:
                worker.check()
                if now > deadline:
                    raise TimeoutError(f"drain of {n} not done after {limit:.0f}s ({done} done)\n"
                                       f"{worker.log_tail()}")
                next_check = now + 1.0
            sleep(0.001)
        cpu1 = cpu_now()
        (d0, first), (d1, last) = points[0], points[-1]
        if d1 > d0:  # CPU time per task, less noisy than rates on a shared machine
            out["cpu_us_per_task"] = {k: 1e6 * (cpu1[k] - cpu0[k]) / (d1 - d0) for k in cpu1}
        out["seconds"] = last - first
        out["rate"] = (d1 - d0) / (last - first) if last > first else float("nan")
        out["tenths"] = [(b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else None
                         for a, b in zip(points[1:], points[2:])]
        if done > n:
            out["extra_runs"] = done - n
        if scraper is not None:
            out.update(scraper.close())
            scraper = None
        if commands:
            time.sleep(1.3)   # every process finishes a blocking fetch and writes its count
            out["commands"] = _own(common.commandstats(d.r), {"incr": n} if body == "incr" else {})
            counts = rtcount.read_dir(rt_dir)
            kids = set(common.descendants(worker.pid))
            out["roundtrips"] = {"parent": counts.get(worker.pid, 0),
                                 "children": sum(v for p, v in counts.items() if p in kids),
                                 "other": sum(v for p, v in counts.items() if p != worker.pid and p not in kids)}
        if pss:
            time.sleep(1.0)
            out["pss"] = common.tree_pss_kib(worker.pid)
    finally:
        if scraper is not None:
            scraper.close()
        worker.stop()
        count.unlink()
    return out


def job_instructions(d: Driver, n: int, flags: Optional[List[str]] = None) -> Dict[str, Any]:
    """Instructions executed by a `-c 1` worker draining n preloaded no-op tasks, counted by
    valgrind's callgrind: a count that moves by ~0.5% between runs (batch sizes and timers depend on
    timing) whatever else the machine does, where times move by 10-20%.
    The runner takes two n and divides the difference, so start-up and shut-down cancel out."""
    import shutil
    valgrind = shutil.which("valgrind")
    if not valgrind:
        return {"skipped": "valgrind is not installed (apt-get install valgrind)"}
    _fresh(d)
    d.preload("tick_ignored", n)
    count = _count_file(d)
    out_dir = Path(tempfile.mkdtemp(prefix="callgrind-", dir=str(d.workdir)))
    worker = d.start_worker(1, list(flags or []), count_file=str(count), prefix=[
        valgrind, "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out_dir}/cg.%p"])
    try:
        deadline = time.monotonic() + max(300.0, n / 10.0)
        while os.path.getsize(count) < n:
            worker.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} tasks not done under valgrind in time\n{worker.log_tail()}")
            time.sleep(0.2)
    finally:
        worker.stop(timeout=120)   # callgrind writes its counts as each process exits
        count.unlink()
    totals = {}
    for path in out_dir.glob("cg.*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                totals[int(path.suffix[1:])] = int(line.split()[1])
    parent = totals.pop(worker.pid, 0)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"n": n, "parent": parent, "children": sum(totals.values()), "processes": len(totals) + 1}


def _ping_loop(d: Driver, n: int) -> float:
    """Seconds for n PINGs, one at a time, on a raw socket: the round trip that one-at-a-time calls pay."""
    import socket
    kw = d.r.connection_pool.connection_kwargs
    if kw.get("path"):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(kw["path"])
    else:
        sock = socket.create_connection((kw.get("host", "127.0.0.1"), kw.get("port", 6379)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with sock:
        ping = b"*1\r\n$4\r\nPING\r\n"
        for _ in range(50):
            sock.sendall(ping)
            sock.recv(64)
        t0 = time.perf_counter()
        for _ in range(n):
            sock.sendall(ping)
            sock.recv(64)   # +PONG arrives whole (7 bytes)
        return time.perf_counter() - t0


@contextlib.contextmanager
def _pinned(d: Driver, cpu: Optional[int]) -> Iterator[None]:
    """This process and redis-server on one CPU while inside (cpu=None: left as they are)."""
    if cpu is None:
        yield
        return
    redis_pid = int(d.r.info("server")["process_id"])
    before = {pid: os.sched_getaffinity(pid) for pid in (0, redis_pid)}
    for pid in before:
        os.sched_setaffinity(pid, {cpu})
    try:
        yield
    finally:
        for pid, cpus in before.items():
            os.sched_setaffinity(pid, cpus)


def job_enqueue(d: Driver, n: int, mode: str = "one", commands: bool = False, cpu: Optional[int] = None
                ) -> Dict[str, Any]:
    """Send n tasks from this process with no worker running: one call at a time, or in bulk.

    mode "ping" times raw-socket PINGs instead (the round-trip floor of "one"); with `cpu`, the
    client and redis-server share that CPU while timed, so no round trip crosses CPUs."""
    _fresh(d)
    if mode == "ping":
        with _pinned(d, cpu):
            elapsed = _ping_loop(d, n)
        return {"n": n, "seconds": elapsed, "rate": n / elapsed}
    if mode == "async":  # `await adelay()` from 100 coroutines of one loop (warmed, then timed, in the loop)
        elapsed = d.send_async(n, 100, lambda: _fresh(d))
        return {"n": n, "seconds": elapsed, "rate": n / elapsed}
    send = {"one": None, "bulk": d.send_bulk, "group": d.send_group}[mode]
    if mode == "one":  # warm the connection and the code path
        for i in range(50):
            d.send_one(i)
    _fresh(d)
    if commands:
        _reset_stats(d)
        rtcount.install()
        rtcount.reset()
    with _pinned(d, cpu):
        t0 = time.perf_counter()
        if mode == "one":
            one = d.send_one
            for i in range(n):
                one(i)
        else:
            send(n)
        elapsed = time.perf_counter() - t0
    out: Dict[str, Any] = {"n": n, "seconds": elapsed, "rate": n / elapsed}
    if commands:
        out["roundtrips"] = {"client": rtcount.count()}
        rtcount.uninstall()
        out["commands"] = _own(common.commandstats(d.r), {})
    return out


def job_roundtrip(d: Driver, calls: int, warmup: int = 200, commands: bool = False) -> Dict[str, Any]:
    """`add.delay(1, 2).get()` against an idle, warm `-c 2` worker: latency of each call."""
    _fresh(d)
    rt_dir = tempfile.mkdtemp(prefix="rt-", dir=str(d.workdir)) if commands else None
    worker = d.start_worker(2, [], rtcount_dir=rt_dir)
    try:
        d.wait_ready(worker)
        for _ in range(warmup):
            d.call_add(timeout=10)
        if commands:
            time.sleep(1.3)
            _reset_stats(d)
            rtcount.install()
            rtcount.reset()
            before = rtcount.read_dir(rt_dir)
        lat = []
        call = d.call_add
        clock = time.perf_counter
        for _ in range(calls):
            t0 = clock()
            value = call(timeout=10)
            lat.append(clock() - t0)
            if value != 3:
                raise AssertionError(f"add(1, 2) returned {value!r}")
        out: Dict[str, Any] = {"calls": calls, "p50_ms": common.percentile(lat, 50) * 1e3,
                               "p90_ms": common.percentile(lat, 90) * 1e3,
                               "p99_ms": common.percentile(lat, 99) * 1e3, "max_ms": max(lat) * 1e3,
                               "mean_ms": sum(lat) / len(lat) * 1e3}
        if commands:
            out["commands"] = _own(common.commandstats(d.r), {})
            client_rt = rtcount.count()
            rtcount.uninstall()
            time.sleep(1.3)
            after = rtcount.read_dir(rt_dir)
            kids = set(common.descendants(worker.pid))
            delta = {p: v - before.get(p, 0) for p, v in after.items()}
            out["roundtrips"] = {"client": client_rt, "parent": delta.get(worker.pid, 0),
                                 "children": sum(v for p, v in delta.items() if p in kids)}
    finally:
        worker.stop()
    return out


def job_chord(d: Driver, sizes: List[int], runs: int, commands: bool = False,
              timeout: float = 600.0) -> Dict[str, Any]:
    """Time from applying chord(header of n no-ops)(collect) to having the callback's result."""
    _fresh(d)
    worker = d.start_worker(2, [])
    out: Dict[str, Any] = {}
    try:
        d.wait_ready(worker)
        d.run_chord(10, timeout=60)
        for size in sizes:
            times = []
            for _ in range(runs):
                if commands:
                    _reset_stats(d)
                t0 = time.perf_counter()
                try:
                    value = d.run_chord(size, timeout=timeout)
                except Exception as exc:  # noqa: BLE001 - a time-out is a result: "more than `timeout`"
                    if "imeout" not in type(exc).__name__ and "imed out" not in str(exc):
                        raise
                    out.setdefault("timed_out", {})[str(size)] = timeout
                    break
                times.append(time.perf_counter() - t0)
                if value != size:
                    raise AssertionError(f"chord callback returned {value!r}, expected {size}")
                if commands:
                    out.setdefault("commands", {})[str(size)] = _own(common.commandstats(d.r), {})
            out[str(size)] = times
    finally:
        worker.stop()
    return out


class _StoreWatch:
    """When the last of some keys is written: Redis keyspace events, read on a raw socket in a thread.

    One definition of "the last result is stored" for every system: the moment this subscriber receives
    the keyspace event of the command that writes the last result (arq and taskiq SET the result key,
    minique RPUSHes the final state onto the key get() waits on); redis-server publishes the event as it
    runs the command. Standard library only, so no client library's reply parser is in the timing; a
    chunk of events is timed when recv() returns it."""

    def __init__(self, d: Driver, keys: List[bytes], command: str):
        import socket
        import threading
        self.pending = set(keys)
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()
        self.error: Optional[BaseException] = None
        self.r = d.r
        self.r.config_set("notify-keyspace-events", "E$l")   # events of string and list commands
        kw = d.r.connection_pool.connection_kwargs
        if kw.get("path"):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(kw["path"])
        else:
            self.sock = socket.create_connection((kw.get("host", "127.0.0.1"), kw.get("port", 6379)))
        channel = f"__keyevent@{kw.get('db', 0) or 0}__:{command}".encode()
        self.sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
        confirm = b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(channel), channel)
        got = b""
        while len(got) < len(confirm):
            chunk = self.sock.recv(len(confirm) - len(got))
            if not chunk:
                raise ConnectionError("redis-server closed the keyspace-event subscription")
            got += chunk
        if got != confirm:
            raise RuntimeError(f"unexpected reply to SUBSCRIBE: {got!r}")
        self.prefix = b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$" % (len(channel), channel)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        prefix, plen, pending = self.prefix, len(self.prefix), self.pending
        buf = b""
        try:
            while pending:
                chunk = self.sock.recv(1 << 20)
                now = time.time()
                if not chunk:
                    raise ConnectionError("redis-server closed the keyspace-event subscription")
                buf += chunk
                pos = 0
                while True:   # each message: prefix, key length, CRLF, key, CRLF
                    if not buf.startswith(prefix, pos):
                        if len(buf) - pos >= plen:
                            raise RuntimeError(f"unexpected keyspace event {buf[pos:pos + 80]!r}")
                        break
                    nl = buf.find(b"\r\n", pos + plen)
                    if nl < 0:
                        break
                    start = nl + 2
                    end = start + int(buf[pos + plen:nl])
                    if end + 2 > len(buf):
                        break
                    key = buf[start:end]
                    pos = end + 2
                    if key in pending:
                        pending.discard(key)
                        self.first = self.first or now
                        self.last = now
                buf = buf[pos:]
        except BaseException as exc:  # noqa: BLE001 - reported by the job
            if not self.done.is_set():
                self.error = exc
        self.done.set()

    def close(self) -> None:
        import socket
        self.done.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
        self.r.config_set("notify-keyspace-events", "")


class _CpuSampler:
    """The CPU time (user + system) of a worker's process tree and of redis-server, every 10 ms in a
    thread, so that the CPU used from any moment of the run on (the first task's start) can be read."""

    def __init__(self, pid: int, redis_pids: List[int], every: float = 0.01):
        import threading
        self.pid, self.redis_pids, self.every = pid, redis_pids, every
        self.samples: List[tuple] = []
        self.stopped = threading.Event()
        self.sample()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def sample(self) -> tuple:
        procs = [self.pid] + common.descendants(self.pid)
        s = (time.time(), sum(common.cpu_seconds(p) for p in procs),
             sum(common.cpu_seconds(p) for p in self.redis_pids))
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self.stopped.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)

    def at(self, when: float) -> tuple:
        """(worker, redis) CPU seconds at `when`, interpolated between the samples around it."""
        samples = sorted(self.samples)
        before = [s for s in samples if s[0] <= when] or samples[:1]
        after = [s for s in samples if s[0] >= when] or samples[-1:]
        a, b = before[-1], after[0]
        if b[0] <= a[0]:
            return a[1], a[2]
        f = (when - a[0]) / (b[0] - a[0])
        return a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])


def job_asyncio_io(d: Driver, n: int, concurrency: int, timeout: float = 120.0) -> Dict[str, Any]:
    """n `async def` tasks that each `await asyncio.sleep(1)` and return their start time, sent in bulk
    while no worker runs (untimed); then one worker process with `concurrency` tasks at once on its event
    loop. Wall: from the first task's start (the least of the returned starts) to the moment the last
    result is stored (its keyspace event, _StoreWatch). Worker CPU: its process tree's, over the same span."""
    _fresh(d)
    t0 = time.perf_counter()
    handles = d.io_send(n)
    send_s = time.perf_counter() - t0
    keys = d.io_result_keys(handles)
    if len(set(keys)) != n:
        raise AssertionError(f"{len(set(keys))} distinct result keys for {n} tasks")
    os.environ["BENCH_IO_CONCURRENCY"] = str(concurrency)   # (arq's app reads it: its max_jobs)
    redis_pids = common.server_pids(d.r)
    watch = _StoreWatch(d, keys, d.io_result_command)
    sampler: Optional[_CpuSampler] = None
    spawned = time.time()
    worker = d.start_worker(concurrency, [], io=True)   # one process, `concurrency` tasks at once
    try:
        sampler = _CpuSampler(worker.pid, redis_pids)
        deadline = time.monotonic() + timeout
        while not watch.done.wait(0.2):
            worker.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(watch.pending)} of {n} results not stored after {timeout:.0f}s\n"
                                   f"{worker.log_tail()}")
        end = sampler.sample()
        sampler.stop()
        if watch.error is not None:
            raise watch.error
        starts = d.io_starts(handles, timeout=60.0)
    finally:
        if sampler is not None:
            sampler.stop()
        watch.close()
        worker.stop()
    if len(starts) != n or not all(isinstance(s, float) for s in starts):
        raise AssertionError(f"{len(starts)} start times for {n} tasks, or not all floats: {starts[:3]!r}")
    first = min(starts)
    wall = watch.last - first
    w0, r0 = sampler.at(first)
    return {"n": n, "concurrency": concurrency, "send_s": send_s, "wall_s": wall, "rate": n / wall,
            "startup_s": first - spawned, "start_spread_s": max(starts) - first,
            "first_result_s": watch.first - first,
            "cpu_us_per_task": {"worker": (end[1] - w0) / n * 1e6, "redis": (end[2] - r0) / n * 1e6},
            "worker_cpu_total_s": end[1], "samples": len(sampler.samples)}


def job_info(d: Driver) -> Dict[str, Any]:
    return {"version": d.version(), "python": sys.version.split()[0]}


JOBS = {"drain": job_drain, "enqueue": job_enqueue, "roundtrip": job_roundtrip, "chord": job_chord,
        "instructions": job_instructions, "info": job_info, "asyncio_io": job_asyncio_io}


def serve(driver_cls: type) -> None:
    """Answer jobs from stdin until it closes. Protocol lines go to the original stdout only."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                      # anything else printing goes to stderr
    sys.stdout = sys.stderr
    workdir = Path(os.environ.get("BENCH_WORKDIR") or tempfile.mkdtemp(prefix="bench-"))
    driver = driver_cls(os.environ["BENCH_REDIS_URL"], workdir)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            kind = job.pop("job")
            result = {"ok": True, "result": JOBS[kind](driver, **job)}
        except Exception as exc:  # noqa: BLE001 - the runner reports it and goes on
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        proto.write(json.dumps(result) + "\n")
