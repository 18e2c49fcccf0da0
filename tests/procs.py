"""Worker and beat subprocesses for tests, and the named ways tests hurt them.

Processes start through the CLI, as a user starts them, in their own session so a
test can kill a whole worker (parent and children) at once. Readiness is an event
(the worker's heartbeat in Redis), never a sleep.
"""
from __future__ import annotations

import contextlib
import enum
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import redis

APPS = Path(__file__).parent / "apps"


def import_testapp(monkeypatch, url: str, module: str = "testapp"):
    """tests/apps/testapp.py (or another app `module` there) imported fresh in this process (the client
    side), pointed at `url`."""
    monkeypatch.setenv("MINIQUE_BROKER_URL", url)
    monkeypatch.delenv("MINIQUE_RESULT_BACKEND", raising=False)
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop(module, None)
    return importlib.import_module(module)


def drop_testapp(testapp) -> None:
    """Undo import_testapp: close the app's connections and forget the module (None: nothing to do)."""
    if testapp is not None:
        testapp.app.close()
        sys.modules.pop(testapp.__name__, None)


class Sending(threading.Thread):
    """Sends `n` calls in the background (`send_one(i)` returns the call's AsyncResult): `sent` holds
    (i, result), `errors` whatever reached the caller (a fault test wants none), and `under_way` is set
    once call `mark` was sent (the moment to inject the fault)."""

    def __init__(self, n: int, send_one, mark: int):
        super().__init__(daemon=True)
        self.n, self.send_one, self.mark = n, send_one, mark
        self.sent: List[tuple] = []
        self.errors: List[BaseException] = []
        self.under_way = threading.Event()

    def run(self) -> None:
        for i in range(self.n):
            try:
                self.sent.append((i, self.send_one(i)))
            except Exception as exc:  # noqa: BLE001 - counted: the test says how many may reach the caller
                self.errors.append(exc)
            if i == self.mark:
                self.under_way.set()

    @contextlib.contextmanager
    def during(self, proc: "Proc", log_tail: int = 4000) -> Iterator[None]:
        """Start sending and wait until call `mark` went out; the block injects its fault and checks what
        follows. The worker `proc` must still run after it; if the block fails, the tail of its log is
        printed. The sender is joined at the end, whatever happened."""
        self.start()
        try:
            assert self.under_way.wait(30)
            yield
            assert proc.popen.poll() is None
        except BaseException:
            print(proc.log()[-log_tail:])
            raise
        finally:
            self.join(30)

    def all_returned_their_index(self, join_timeout: float, get_timeout: float = 60) -> None:
        """Wait for the last send; no error reached the caller and every task returned its call's index
        (the fault tests send `add(i, 0)`)."""
        self.join(join_timeout)
        assert not self.errors, self.errors[:3]
        assert [r.get(timeout=get_timeout) for _, r in self.sent] == [i for i, _ in self.sent]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A `minique` CLI subprocess with its log in a file. `prefix` comes before the command (e.g.
    `ip netns exec NS`, tests/netns.py); it must exec the command, so that the pid is the worker's."""

    def __init__(self, args: List[str], env: Dict[str, str], cwd: Path, log_path: Path,
                 prefix: Sequence[str] = ()):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen([*prefix, sys.executable, "-m", "minique.cli", *args], cwd=cwd, env=env,
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def children(self) -> List[int]:
        try:
            return [int(p) for p in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.kill_group()
        self._log.close()


class Fault(enum.Enum):
    """Named ways to hurt a worker."""

    KILL_CHILD = "kill -9 one pool child"
    KILL_WORKER = "kill -9 the parent and every child"
    SIGTERM = "warm shutdown"
    SIGTERM_TWICE = "cold shutdown"

    def inject(self, proc: Proc) -> None:
        if self is Fault.KILL_CHILD:
            children = wait_for(proc.children, 10, "pool children")
            os.kill(children[0], signal.SIGKILL)
        elif self is Fault.KILL_WORKER:
            proc.kill_group()
        elif self is Fault.SIGTERM:
            proc.signal(signal.SIGTERM)
        elif self is Fault.SIGTERM_TWICE:
            proc.signal(signal.SIGTERM)
            time.sleep(0.1)
            proc.signal(signal.SIGTERM)


class Processes:
    """Starts workers/beats for one test and cleans them all up."""

    def __init__(self, tmp_path: Path, broker_url: str):
        self.tmp_path = tmp_path
        self.broker_url = broker_url
        self.procs: List[Proc] = []
        self.count = 0

    def env(self, settings: Optional[str] = None, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = dict(os.environ)
        env["MINIQUE_BROKER_URL"] = self.broker_url
        env.pop("MINIQUE_RESULT_BACKEND", None)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), env.get("PYTHONPATH", "")])
        if settings:
            env["TESTAPP_SETTINGS"] = settings
        env.update(extra or {})
        return env

    def worker(self, *args: str, app: str = "testapp", settings: Optional[str] = None, wait: bool = True,
               cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
               prefix: Sequence[str] = ()) -> Proc:
        self.count += 1
        hostname = f"w{self.count}@test"
        argv = ["-A", app, "worker", "-n", hostname, "-l", "info", *args]
        proc = Proc(argv, env or self.env(settings), cwd or APPS, self.tmp_path / f"worker{self.count}.log",
                    prefix)
        proc.hostname = hostname
        self.procs.append(proc)
        if wait:
            self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: Proc, timeout: float = 20.0) -> None:
        client = redis.Redis.from_url(self.broker_url)
        try:
            def ready():
                if proc.popen.poll() is not None:
                    raise AssertionError(f"worker exited with {proc.popen.returncode}:\n{proc.log()}")
                return client.hexists("minique:workers", proc.hostname)
            wait_for(ready, timeout, f"worker {proc.hostname} to be ready")
        finally:
            client.close()

    def beat(self, *args: str, app: str = "testapp", settings: Optional[str] = None,
             cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None) -> Proc:
        self.count += 1
        proc = Proc(["-A", app, "beat", "-l", "info", *args], env or self.env(settings), cwd or APPS,
                    self.tmp_path / f"beat{self.count}.log")
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.close()


# --- books for fault tests (tests/test_reliability.py, tests/test_delivery.py) ------------------------

class Books:
    """What the tasks of one test recorded in Redis (see testapp.book): starts and ends per token.

    `key` lists "token|run" as bodies end; `key:started` lists "token|pid|delivery_count|run" as bodies
    start. `run` is drawn anew by every execution, so the same line twice is one execution whose write
    was retried by its client (counted as `rewrites`), while two runs of a token are two executions.
    """

    def __init__(self, client: "redis.Redis", key: str, tokens: List[str]):
        self.client = client
        self.key = key
        self.tokens = list(tokens)

    def _lines(self, key: str) -> List[str]:
        return [x.decode() for x in self.client.lrange(key, 0, -1)]

    def done(self) -> Dict[str, int]:
        """token -> executions that ended."""
        out: Dict[str, int] = {}
        for line in set(self._lines(self.key)):
            token = line.split("|")[0]
            out[token] = out.get(token, 0) + 1
        return out

    def starts(self) -> List[tuple]:
        """(token, pid, delivery_count) per execution that started, in order."""
        out, seen = [], set()
        for line in self._lines(f"{self.key}:started"):
            if line in seen:
                continue
            seen.add(line)
            token, pid, deliveries, _ = line.split("|")
            out.append((token, int(pid), int(deliveries)))
        return out

    def rewrites(self) -> int:
        """Record lines written twice by a client retry (not executions)."""
        lines = self._lines(self.key) + self._lines(f"{self.key}:started")
        return len(lines) - len(set(lines))

    def done_count(self) -> int:
        return self.client.llen(self.key)

    def all_done(self) -> bool:
        """Every token ended at least once."""
        return len(set(self.done()) & set(self.tokens)) == len(self.tokens)

    def figures(self) -> Dict[str, int]:
        done = self.done()
        start_counts: Dict[str, int] = {}
        for token, _, _ in self.starts():
            start_counts[token] = start_counts.get(token, 0) + 1
        wanted = set(self.tokens)
        return {
            "sent": len(self.tokens),
            "done": sum(1 for t in self.tokens if done.get(t)),
            "duplicated": sum(1 for t in self.tokens if done.get(t, 0) > 1),
            "extra_runs": sum(max(0, n - 1) for t, n in done.items()),
            "lost": sum(1 for t in self.tokens if not done.get(t)),
            "started_twice": sum(1 for t in self.tokens if start_counts.get(t, 0) > 1),
            "unknown": sum(1 for t in done if t not in wanted),
            "record_rewrites": self.rewrites(),
        }


def report(test: str, **figures) -> Dict[str, object]:
    """Print a test's figures and, when MINIQUE_RELIABILITY_REPORT names a file, append them (JSON lines)."""
    import json
    line = {"test": test, **figures}
    print(f"RELIABILITY {json.dumps(line, sort_keys=True)}")
    path = os.environ.get("MINIQUE_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
    return line


def send_books(app, key: str, n: int, seconds: float = 0.0, task: str = "testapp.book",
               prefix: str = "t", **options) -> List[str]:
    """Send n tasks of `task` (args key, token, seconds) in one round trip; returns their tokens."""
    tokens = [f"{prefix}{i}" for i in range(n)]
    app.send_many(task, (((key, t, seconds), None) for t in tokens), **options)
    return tokens


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (it runs, as another user)
        return True
    return True


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True
