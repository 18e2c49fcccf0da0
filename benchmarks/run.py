"""`python -m benchmarks`: minique and Celery side by side (issue #7); minique, arq and taskiq (issue #17).

One private redis-server (a free port, no persistence) serves both systems; each
system is measured by its own agent process (agent_minique in this interpreter,
agent_celery in benchmarks/.celery-venv, created here when missing). Runs of the two
systems are interleaved so that a noisy neighbour hurts both alike. The asyncio_io figure
(issue #17) measures minique, arq and taskiq the same way, arq and taskiq each in its own
virtualenv (benchmarks/.arq-venv, benchmarks/.taskiq-venv, made here when missing). Every figure
is printed as median [min-max] over the runs with the ratio minique/Celery, then
the goals of issue #7, met or not. Results are also written as JSON to
benchmarks/results/ (see docs/benchmarks.md for the method).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import common

HERE = Path(__file__).resolve().parent
VENV = HERE / ".celery-venv"
RESULTS = HERE / "results"
SYSTEMS = ("minique", "celery")
LABEL = {"minique": "minique", "celery": "Celery", "arq": "arq", "taskiq": "taskiq"}
FIGURES = ("drain", "memory", "enqueue", "roundtrip", "chord", "events", "commands", "scaling", "backlog",
           "asyncio_io")
IO_SYSTEMS = ("minique", "arq", "taskiq")   # the asyncio_io figure's columns (issue #17)
JOB_TIMEOUT = 1800.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the other systems' virtualenvs -----------------------------------------------------------------

# system: (folder under benchmarks/, what pip installs from PyPI, what must import)
VENVS = {
    "celery": (".celery-venv", ["celery[redis]"], "import celery, kombu, redis"),
    "arq": (".arq-venv", ["arq"], "import arq, redis"),
    "taskiq": (".taskiq-venv", ["taskiq", "taskiq-redis"], "import taskiq, taskiq_redis, redis"),
}


def venv_python(system: str) -> Optional[Path]:
    """benchmarks/.<system>-venv/bin/python with the system installed, made when missing; None if impossible."""
    folder, packages, imports = VENVS[system]
    venv = HERE / folder
    py = venv / "bin" / "python"
    check = [str(py), "-c", imports]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        _hiredis_parity(py)
        return py
    log(f"creating {venv.relative_to(common.ROOT)} with {' '.join(packages)} from PyPI ...")
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
                       check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        log(f"WARNING: could not set up {venv.relative_to(common.ROOT)} ({exc}); not measuring {LABEL[system]}")
        return None
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None
    _hiredis_parity(py)
    return py


def celery_python() -> Optional[Path]:
    """benchmarks/.celery-venv/bin/python with celery[redis] in it, made when missing; None if impossible."""
    return venv_python("celery")


def _hiredis_parity(py: Path) -> None:
    """Give the other system's redis-py the hiredis parser when minique's has it (a fair comparison).

    (Never taken away: arq's own requirement is redis[hiredis].)"""
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return
    if subprocess.run([str(py), "-c", "import hiredis"], capture_output=True).returncode == 0:
        return
    log(f"installing hiredis into {py.parent.parent.name} (minique's environment has it)")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "hiredis"])


# --- agents ------------------------------------------------------------------------------------------

class AgentError(RuntimeError):
    pass


class Agent:
    """One system's measuring process; jobs go in as JSON lines, answers come back the same way."""

    def __init__(self, system: str, python: str, redis_url: str, workdir: Path):
        self.system = system
        workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({"BENCH_REDIS_URL": redis_url, "MINIQUE_BROKER_URL": redis_url, "BENCH_WORKDIR": str(workdir),
                    "PYTHONPATH": os.pathsep.join(p for p in (str(common.ROOT), env.get("PYTHONPATH", "")) if p)})
        for var in ("MINIQUE_RESULT_BACKEND", "BENCH_RTCOUNT_DIR", "BENCH_COUNT_FILE"):
            env.pop(var, None)
        self.stderr = open(workdir / "agent.log", "wb")
        self.proc = subprocess.Popen([python, "-m", f"benchmarks.agent_{system}"], cwd=str(common.ROOT), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     preexec_fn=common._die_with_parent)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.log_path = workdir / "agent.log"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, job: Dict[str, Any], timeout: float = JOB_TIMEOUT) -> Dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as e:
            raise AgentError(f"{self.system} agent is gone; see {self.log_path}") from e
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise AgentError(f"{self.system} agent did not answer within {timeout:.0f}s") from None
        if line is None:
            raise AgentError(f"{self.system} agent exited; see {self.log_path}")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise AgentError(f"{self.system}: {answer.get('error')}\n{answer.get('traceback', '')}")
        return answer["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(30)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.proc.kill()
                self.proc.wait(10)
        self.stderr.close()


# --- formatting --------------------------------------------------------------------------------------

def fmt(value: Optional[float], unit: str) -> str:
    if value is None or value != value:
        return "-"
    if unit in ("tasks/s", "calls/s", "round trips/s", "instructions", "B"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}"
    if unit == "s":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if unit == "MiB":
        return f"{value:.1f}"
    if unit in ("%",):
        return f"{value:+.1f}"
    if unit == "us":
        return f"{value:.1f}"
    if unit == "per task":
        return f"{value:.3f}"
    return f"{value:.3g}"


def paired(values: Dict[str, Dict[str, List[float]]], key: str, cost: Callable[[float, float], float],
           systems: Sequence[str]) -> Dict[str, List[float]]:
    """Per system, the cost (in %) of each run of `key` against the "off" run made next to it."""
    return {s: [100.0 * cost(off, on) for off, on in zip(values["off"].get(s, []), values[key].get(s, [])) if off]
            for s in systems}


def rate_lost(off: float, on: float) -> float:
    return 1 - on / off


def cost_added(off: float, on: float) -> float:
    return on / off - 1


def cell(values: Sequence[float], unit: str) -> str:
    s = common.summary(values)
    if not s["n"]:
        return "-"
    if s["n"] == 1:
        return fmt(s["median"], unit)
    return f"{fmt(s['median'], unit)} [{fmt(s['min'], unit)}-{fmt(s['max'], unit)}]"


def ratio(row: Dict[str, Any]) -> Optional[float]:
    m = common.summary(row["values"].get("minique", []))["median"]
    c = common.summary(row["values"].get("celery", []))["median"]
    if m != m or c != c or not c:
        return None
    return m / c


# --- the runner --------------------------------------------------------------------------------------

class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        quick = args.quick
        self.runs = args.runs
        self.n = 5000 if quick else 20000
        self.celery_n = max(2000, self.n // 4)      # Celery drains ~1k/s: a quarter of n keeps the run short
        self.enq_n = 3000 if quick else 10000
        self.rtt_calls = 500 if quick else 2000
        self.backlog = 1_000_000 if args.big else (20000 if quick else 100000)
        self.cmd_n = 2000 if quick else 5000
        self.systems = [s for s in SYSTEMS if not (s == "celery" and args.no_celery)]
        self.agents: Dict[str, Agent] = {}
        self.cache: Dict[str, List[Dict[str, Any]]] = {}
        self.figures: Dict[str, Dict[str, Any]] = {}
        self.errors: List[str] = []
        self.info: Dict[str, Any] = {}
        self.server_url, self.workdir = "", Path(".")   # (set by run: the private redis-server, the scratch dir)

    # measuring ---------------------------------------------------------------------------------------
    def measure(self, jobs: Dict[str, Optional[Dict[str, Any]]], runs: int) -> Dict[str, List[Dict[str, Any]]]:
        """Run each system's job `runs` times, interleaved (m, C, m, C, ...); reuses earlier identical runs."""
        out: Dict[str, List[Dict[str, Any]]] = {s: [] for s in jobs}
        for i in range(runs):
            for system, job in jobs.items():
                if job is None or system not in self.agents:
                    continue
                key = system + json.dumps(job, sort_keys=True)
                done = self.cache.setdefault(key, [])
                if len(done) <= i:
                    t0 = time.monotonic()
                    try:
                        done.append(self.agents[system].run(job))
                    except AgentError as exc:
                        msg = f"{system} {job.get('job')}: {exc}"
                        self.errors.append(msg)
                        log("ERROR " + msg)
                        continue   # (the other systems of this run still run)
                    log(f"    {LABEL[system]:8} {job['job']} run {i + 1}/{runs} ({time.monotonic() - t0:.1f}s)")
                out[system].append(done[i])
        return out

    def drain_job(self, system: str, n: Optional[int] = None, concurrency: int = 2, stored: bool = False,
                  flags: Sequence[str] = (), **extra: Any) -> Dict[str, Any]:
        if n is None:
            n = self.n if system == "minique" else self.celery_n
        job = {"job": "drain", "n": n, "concurrency": concurrency, "stored": stored, "flags": list(flags),
               "pss": stored}
        job.update(extra)
        return job

    def figure(self, name: str, title: str) -> Dict[str, Any]:
        if name not in self.figures:
            print(f"   {title}", flush=True)
        return self.figures.setdefault(name, {"title": title, "rows": [], "tables": [], "notes": []})

    def row(self, fig: Dict[str, Any], rid: str, label: str, unit: str, values: Dict[str, List[float]],
            better: str = "higher", note: str = "") -> Dict[str, Any]:
        row = {"id": rid, "label": label, "unit": unit, "better": better,
               "values": {s: [v for v in vals if v is not None] for s, vals in values.items()}, "note": note}
        fig["rows"].append(row)
        self.print_row(row, fig.get("systems", SYSTEMS))
        return row

    # figures -----------------------------------------------------------------------------------------
    def fig_drain(self) -> None:
        fig = self.figure("drain", "Drain: preloaded no-op tasks, worker -c 2 (started after the preload)")
        for stored in (False, True):
            res = self.measure({s: self.drain_job(s, stored=stored) for s in self.systems}, self.runs)
            kind = "stored" if stored else "ignored"
            self.row(fig, f"drain_{kind}", f"drain -c 2, results {kind}", "tasks/s",
                     {s: [r["rate"] for r in rs] for s, rs in res.items()})
            for part in ("worker", "redis"):
                self.row(fig, f"drain_{kind}_cpu_{part}", f"  {part} CPU per task", "us",
                         {s: [r["cpu_us_per_task"][part] for r in rs if r.get("cpu_us_per_task")]
                          for s, rs in res.items()}, better="lower")
        if "minique" in self.systems:
            res = self.measure({"minique": self.drain_job("minique", settings={"worker_early_ack_window": 0})},
                               self.runs)
            self.row(fig, "drain_ignored_strict", "drain -c 2, ignored, worker_early_ack_window = 0", "tasks/s",
                     {"minique": [r["rate"] for r in res["minique"]]},
                     note="every early ack written before its task starts (strict at-most-once)")
            limited = {"task_annotations": {"*": {"rate_limit": "1000000/s"}}}
            res = self.measure({"minique": self.drain_job("minique", settings=limited)}, self.runs)
            self.row(fig, "drain_ignored_rate_limited", "drain -c 2, ignored, rate_limit far above the rate",
                     "tasks/s", {"minique": [r["rate"] for r in res["minique"]]},
                     note="a cluster-wide rate limit of 1,000,000/s: each task reserves its start in Redis")
        res = self.measure({s: self.drain_job(s, body="incr") for s in self.systems}, self.runs)
        self.row(fig, "drain_incr", "drain -c 2, ignored, body does a Redis INCR", "tasks/s",
                 {s: [r["rate"] for r in rs] for s, rs in res.items()})
        if self.args.cluster and "minique" in self.systems:
            self._drain_on_cluster(fig)
        fig["notes"].append(f"n = {self.n:,} tasks for minique, {self.celery_n:,} for Celery (rates are per second; "
                            "a list drains at the same rate whatever its length)")
        fig["notes"].append("the no-op body appends a byte to a file the runner watches (no Redis command); "
                            "the INCR row adds one Redis round trip per task to the body, for reference")

    def _drain_on_cluster(self, fig: Dict[str, Any]) -> None:
        """--cluster: the same drains on a private 3-master Redis Cluster on this machine, next to the rows
        above (one server): what a cluster worker's confirmed writes and per-slot fetches cost."""
        workdir = Path(tempfile.mkdtemp(prefix="minique-bench-cluster-"))
        cluster = common.RedisCluster(workdir, binary=shutil.which("redis-server") or "redis-server").start()
        single, cache = self.agents["minique"], self.cache
        self.agents["minique"] = Agent("minique", sys.executable, cluster.url, workdir / "minique")
        self.cache = {}  # (the same jobs as on one server: not the same runs)
        try:
            for stored in (False, True):
                kind = "stored" if stored else "ignored"
                res = self.measure({"minique": self.drain_job("minique", stored=stored)}, self.runs)
                self.row(fig, f"drain_cluster_{kind}", f"drain -c 2, results {kind}, 3-master cluster", "tasks/s",
                         {"minique": [r["rate"] for r in res["minique"]]})
                self.row(fig, f"drain_cluster_{kind}_cpu_redis", "  redis CPU per task (3 nodes)", "us",
                         {"minique": [r["cpu_us_per_task"]["redis"] for r in res["minique"]
                                      if r.get("cpu_us_per_task")]}, better="lower")
        finally:
            self.agents["minique"].close()
            self.agents["minique"], self.cache = single, cache
            cluster.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        fig["notes"].append("cluster rows: 3 masters on this machine (no more CPU than one server); a cluster "
                            "worker waits for each write's replies (results before acks, per node) and fetches "
                            "per slot group: docs/scaling.md")

    def fig_memory(self) -> None:
        fig = self.figure("memory", "Memory: worker PSS after a drain, Redis per waiting message")
        res = self.measure({s: self.drain_job(s, stored=True) for s in self.systems}, self.runs)
        self.row(fig, "pss_total", "worker -c 2 PSS total (parent + children)", "MiB",
                 {s: [r["pss"]["total"] / 1024 for r in rs if "pss" in r] for s, rs in res.items()}, better="lower")
        self.row(fig, "pss_parent", "  of which the parent", "MiB",
                 {s: [r["pss"]["parent"] / 1024 for r in rs if "pss" in r] for s, rs in res.items()}, better="lower")
        self.row(fig, "pss_children", "  of which the 2 children", "MiB",
                 {s: [r["pss"]["children"] / 1024 for r in rs if "pss" in r] for s, rs in res.items()},
                 better="lower")
        self.row(fig, "redis_per_msg", "Redis memory per waiting message", "B",
                 {s: [r["redis_bytes_per_msg"] for r in rs] for s, rs in res.items()}, better="lower",
                 note="INFO used_memory delta / n after the preload (results-stored task)")

    def fig_enqueue(self) -> None:
        fig = self.figure("enqueue", "Enqueue from one process, no worker running")
        one = {s: {"job": "enqueue", "n": self.enq_n if s == "minique" else self.celery_n, "mode": "one"}
               for s in self.systems}
        res = self.measure(one, self.runs)
        self.row(fig, "enqueue_one", "add.delay(i, i), one at a time", "tasks/s",
                 {s: [r["rate"] for r in rs] for s, rs in res.items()})
        pinned = {s: dict(j, cpu=0) for s, j in one.items()}
        res = self.measure(pinned, self.runs)
        self.row(fig, "enqueue_one_pinned", "  the same, client and redis-server on one CPU", "tasks/s",
                 {s: [r["rate"] for r in rs] for s, rs in res.items()})
        for label, cpu in (("", None), (", on one CPU", 0)):
            ping = {"minique": {"job": "enqueue", "n": self.enq_n, "mode": "ping", "cpu": cpu}, "celery": None}
            res = self.measure({s: j for s, j in ping.items() if s in self.systems}, self.runs)
            self.row(fig, "ping" + ("_pinned" if cpu is not None else ""),
                     f"  floor: raw-socket PING, one at a time{label}", "round trips/s",
                     {"minique": [r["rate"] for r in res.get("minique", [])]})
        aio = {"minique": {"job": "enqueue", "n": self.enq_n, "mode": "async"}, "celery": None}
        res = self.measure({s: j for s, j in aio.items() if s in self.systems}, self.runs)
        self.row(fig, "enqueue_async", "await add.adelay(i, i) from 100 coroutines of one event loop", "tasks/s",
                 {"minique": [r["rate"] for r in res.get("minique", [])]},
                 note="minique's asyncio client (minique/aio.py); Celery has no asyncio client")
        bulk = {s: {"job": "enqueue", "n": self.n if s == "minique" else self.celery_n, "mode": "bulk"}
                for s in self.systems}
        res = self.measure(bulk, self.runs)
        self.row(fig, "enqueue_bulk", "bulk: minique add.delay_many / Celery group.apply_async", "tasks/s",
                 {s: [r["rate"] for r in rs] for s, rs in res.items()})
        grp = {"minique": {"job": "enqueue", "n": self.n, "mode": "group"}, "celery": None}
        res = self.measure({s: j for s, j in grp.items() if s in self.systems}, self.runs)
        self.row(fig, "enqueue_group", "group(add.s(i, i) ...).apply_async()", "tasks/s",
                 {"minique": [r["rate"] for r in res.get("minique", [])],
                  "celery": [r["rate"] for r in self.cache.get("celery" + json.dumps(bulk.get("celery"),
                                                                                      sort_keys=True), [])]})
        fig["notes"].append(f"n = {self.enq_n:,} (one at a time) and {self.n:,} (bulk) for minique, "
                            f"{self.celery_n:,} for Celery; Celery has no bulk call, "
                            "group.apply_async is its bulk path")
        fig["notes"].append("'on one CPU': the agent and redis-server are pinned to CPU 0 (sched_setaffinity) while "
                            "timed, so a round trip never wakes another CPU; the PING rows are the round trip alone "
                            "(a raw socket, no client library)")

    def fig_roundtrip(self) -> None:
        fig = self.figure("roundtrip", f"Round trip: add.delay(1, 2).get(), idle warm worker -c 2, "
                                       f"{self.rtt_calls:,} calls per run")
        res = self.measure({s: {"job": "roundtrip", "calls": self.rtt_calls} for s in self.systems}, self.runs)
        for q in ("p50", "p90", "p99"):
            self.row(fig, f"rtt_{q}", f"round trip {q}", "ms",
                     {s: [r[f"{q}_ms"] for r in rs] for s, rs in res.items()}, better="lower")

    def fig_chord(self) -> None:
        fig = self.figure("chord", "Chord: chord(n no-op members)(collect) until the callback's result, -c 2")
        res = self.measure({s: {"job": "chord", "sizes": [1000], "runs": self.runs} for s in self.systems}, 1)
        self.row(fig, "chord_1000", "chord of 1,000", "s", {s: rs[0]["1000"] if rs else [] for s, rs in res.items()},
                 better="lower")
        big_runs = 1 if self.args.quick else self.runs
        cap = 60.0 if self.args.quick else 120.0
        jobs = {s: {"job": "chord", "sizes": [10000], "runs": big_runs if s == "minique" else 1}
                for s in self.systems}
        jobs.get("celery", {})["timeout"] = cap
        res = self.measure(jobs, 1)
        self.row(fig, "chord_10000", "chord of 10,000", "s", {s: rs[0]["10000"] if rs else [] for s, rs in res.items()},
                 better="lower")
        for s, rs in res.items():
            if rs and rs[0].get("timed_out"):
                fig["notes"].append(f"{LABEL[s]}'s chord of 10,000 had no result after {cap:.0f}s (the cap): "
                                    f"it takes longer than that")
        fig["notes"].append("one worker per system serves all runs of a size; Celery's chord of 10,000 runs once, "
                            f"capped at {cap:.0f}s (its time grows faster than n: tens of seconds)")

    def fig_events(self) -> None:
        fig = self.figure("events", "Events and metrics: cost on drain -c 2, results ignored")
        port = common.free_port()
        n = self.n if self.args.quick else 50000   # longer runs: the costs sought are a few per cent
        jobs = {
            "off": {"minique": self.drain_job("minique", n=n, flags=["--without-events"]),
                    "celery": self.drain_job("celery")},
            "on": {"minique": self.drain_job("minique", n=n), "celery": self.drain_job("celery", flags=["-E"])},
            "metrics": {"minique": self.drain_job("minique", n=n, flags=["--without-events", "--metrics-port",
                                                                            str(port)], scrape_port=port),
                        "celery": None},
        }
        # paired runs, interleaved (off, on, metrics, off, on, ...): the costs sought are a few per cent, less
        # than the drift of a shared VM over the minutes between a block of "off" runs and one of "on" runs
        runs = self.runs if self.args.quick else max(self.runs, 5)
        res: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
        for i in range(1, runs + 1):
            for k, v in jobs.items():
                res[k] = self.measure({s: j for s, j in v.items() if s in self.systems}, i)
        rate = {k: {s: [r["rate"] for r in rs] for s, rs in v.items()} for k, v in res.items()}
        cpu = {k: {s: [r["cpu_us_per_task"]["worker"] for r in rs if r.get("cpu_us_per_task")] for s, rs in v.items()}
               for k, v in res.items()}
        self.row(fig, "events_off", "events off (minique --without-events; Celery default)", "tasks/s", rate["off"])
        self.row(fig, "events_on", "events on (minique default; Celery -E)", "tasks/s", rate["on"])
        self.row(fig, "events_cost", "events cost (1 - on/off), per pair of runs", "%",
                 paired(rate, "on", rate_lost, self.systems), better="lower")
        self.row(fig, "events_cpu_off", "worker CPU per task, events off", "us", cpu["off"], better="lower")
        self.row(fig, "events_cpu_on", "worker CPU per task, events on", "us", cpu["on"], better="lower")
        self.row(fig, "events_cpu_cost", "events CPU cost (on/off - 1), per pair of runs", "%",
                 paired(cpu, "on", cost_added, self.systems), better="lower")
        fig["notes"].append(f"{runs} runs of each, interleaved (off, on, metrics, off, ...); a cost is taken per pair "
                            "of neighbouring runs, then its median (Celery's 'off' runs are partly those of the "
                            "drain figure, made earlier)")
        if "minique" in self.systems:
            self._instructions(fig)
            self.row(fig, "metrics_on", "metrics on (--metrics-port, scraped 2/s, events off)", "tasks/s",
                     {"minique": rate["metrics"].get("minique", [])})
            self.row(fig, "metrics_cost", "metrics cost (1 - on/off), per pair of runs", "%",
                     paired(rate, "metrics", rate_lost, ["minique"]), better="lower")
            self.row(fig, "metrics_cpu", "worker CPU per task, metrics on", "us", {"minique": cpu["metrics"].get(
                "minique", [])}, better="lower")
            self.row(fig, "metrics_cpu_cost", "metrics CPU cost (on/off - 1), per pair of runs", "%",
                     paired(cpu, "metrics", cost_added, ["minique"]), better="lower")
            served = [r.get("scrapes_ok", 0) for r in res["metrics"].get("minique", [])]
            if served and not any(served):
                fig["notes"].append(f"no scrape of --metrics-port {port} succeeded: this minique does not "
                                    "serve metrics, so 'metrics on' measures nothing but noise")
            else:
                fig["notes"].append("metrics counters are kept in shared memory whether or not the port is open; "
                                    "'metrics on' adds the /metrics server, scraped twice a second during the drain")

    def _instructions(self, fig: Dict[str, Any]) -> None:
        """Pool-process instructions per task, events off and on (callgrind; one run: a count moves ~0.5%)."""
        small, big = (1000, 3000) if self.args.quick else (2000, 6000)
        per_task: Dict[str, List[float]] = {}
        for key, flags in (("off", ["--without-events"]), ("on", [])):
            a, b = ((self.measure({"minique": {"job": "instructions", "n": n, "flags": flags}}, 1).get("minique")
                     or [{}])[0] for n in (small, big))
            if "children" not in a or "children" not in b:
                fig["notes"].append("instructions: " + (a.get("skipped") or b.get("skipped") or "not measured"))
                return
            per_task[key] = [(b["children"] - a["children"]) / (big - small)]
        self.row(fig, "events_instr_off", "pool process instructions per task, events off (callgrind)", "instructions",
                 {"minique": per_task["off"]}, better="lower")
        self.row(fig, "events_instr_on", "pool process instructions per task, events on (callgrind)", "instructions",
                 {"minique": per_task["on"]}, better="lower")
        self.row(fig, "events_instr_cost", "events instruction cost (on/off - 1)", "%",
                 {"minique": [100.0 * (per_task["on"][0] / per_task["off"][0] - 1)]}, better="lower")
        fig["notes"].append(f"instructions: a -c 1 worker under valgrind --tool=callgrind drains {small:,} and then "
                            f"{big:,} tasks; the difference of the pool process's counts over {big - small:,} is per "
                            "task (start-up cancels out); a count moves by ~0.5% between runs, "
                            "where times move by 10-20%")

    def fig_commands(self) -> None:
        fig = self.figure("commands", "Redis commands and round trips per task (INFO commandstats deltas)")
        scenarios = [
            ("enqueue one", "client", {"job": "enqueue", "n": self.cmd_n, "mode": "one", "commands": True}, "n"),
            ("enqueue bulk", "client", {"job": "enqueue", "n": self.cmd_n, "mode": "bulk", "commands": True}, "n"),
            ("drain, results ignored", "worker",
             {"job": "drain", "n": self.cmd_n, "concurrency": 2, "stored": False, "flags": [], "pss": False,
              "commands": True}, "n"),
            ("drain, results stored", "worker",
             {"job": "drain", "n": self.cmd_n, "concurrency": 2, "stored": True, "flags": [], "pss": False,
              "commands": True}, "n"),
            ("round trip delay().get()", "client + worker",
             {"job": "roundtrip", "calls": max(200, self.rtt_calls // 4), "commands": True}, "calls"),
            ("chord of 1,000 (per member)", "client + worker",
             {"job": "chord", "sizes": [1000], "runs": 1, "commands": True}, 1000),
        ]
        for title, side, job, per in scenarios:
            res = self.measure({s: job for s in self.systems}, 1)
            table = {"title": title, "side": side, "per_task": {}, "roundtrips": {}}
            for s, rs in res.items():
                if not rs:
                    continue
                r = rs[0]
                n = r[per] if isinstance(per, str) else per
                cmds = r["commands"]["1000"] if job["job"] == "chord" else r["commands"]
                table["per_task"][s] = {k: v / n for k, v in sorted(cmds.items())}
                table["roundtrips"][s] = {k: v / n for k, v in (r.get("roundtrips") or {}).items()}
            fig["tables"].append(table)
            self.print_table(table)
        fig["notes"].append(f"n = {self.cmd_n:,} for enqueue and drain; commands of the benchmark itself (the "
                            "reference body's INCR, the runner's INFO/CONFIG/FLUSHALL) are taken out; "
                            "commands that Lua scripts run inside Redis are counted too")

    def fig_scaling(self) -> None:
        fig = self.figure("scaling", "Scaling: drain with -c 1, 2, 4 (results ignored)")
        for c in (1, 2, 4):
            res = self.measure({s: self.drain_job(s, concurrency=c) for s in self.systems}, self.runs)
            self.row(fig, f"drain_c{c}", f"drain -c {c}", "tasks/s",
                     {s: [r["rate"] for r in rs] for s, rs in res.items()})
        fig["notes"].append(f"{os.cpu_count()} CPUs: the worker's children, Redis and the runner share them")

    def fig_backlog(self) -> None:
        fig = self.figure("backlog", f"Backlog: drain -c 2 with {self.backlog:,} waiting (results ignored)")
        base = self.measure({"minique": self.drain_job("minique")}, self.runs) if "minique" in self.agents else {}
        runs = self.runs if self.backlog <= 100000 else 1
        res = self.measure({"minique": self.drain_job("minique", n=self.backlog)}, runs) \
            if "minique" in self.agents else {}
        rs = res.get("minique", [])
        self.row(fig, "backlog_small", f"drain with {self.n:,} waiting", "tasks/s",
                 {"minique": [r["rate"] for r in base.get("minique", [])]})
        self.row(fig, "backlog_big", f"drain with {self.backlog:,} waiting", "tasks/s",
                 {"minique": [r["rate"] for r in rs]})
        tenths = [r.get("tenths") for r in rs if r.get("tenths")]
        if tenths:
            self.row(fig, "backlog_first_tenth", "  first tenth of it", "tasks/s", {"minique": [t[0] for t in tenths]})
            self.row(fig, "backlog_last_tenth", "  last tenth of it", "tasks/s", {"minique": [t[-1] for t in tenths]})
            fig["tenths"] = tenths
        self.row(fig, "backlog_redis_per_msg", f"Redis memory per waiting message ({self.backlog:,})", "B",
                 {"minique": [r["redis_bytes_per_msg"] for r in rs]}, better="lower")
        fig["notes"].append("minique only: Celery at ~1k tasks/s would need minutes per run; its Redis list drains "
                            "at a rate independent of its length (LPUSH/BRPOP are O(1))")

    def fig_asyncio_io(self) -> None:
        """Issue #17: n `async def` tasks that each sleep 1 s, one worker process, minique, arq and taskiq."""
        n = self.args.io_n
        fig = self.figure("asyncio_io", f"I/O-bound concurrency: {n:,} x `await asyncio.sleep(1)`, one worker "
                                        f"process, {n:,} tasks at once")
        fig["systems"] = list(IO_SYSTEMS)
        systems = [s for s in IO_SYSTEMS if self._io_agent(s, fig)]
        job = {"job": "asyncio_io", "n": n, "concurrency": n}
        res = self.measure({s: job for s in systems}, self.runs)
        rows = [
            ("io_rate", "tasks/s (n / wall)", "tasks/s", "higher", lambda r: r["rate"]),
            ("io_wall", "wall: first task's start to last result stored", "s", "lower", lambda r: r["wall_s"]),
            ("io_cpu_worker", "worker CPU per task (all its processes)", "us", "lower",
             lambda r: r["cpu_us_per_task"]["worker"]),
            ("io_cpu_redis", "redis-server CPU per task", "us", "lower", lambda r: r["cpu_us_per_task"]["redis"]),
            ("io_start_spread", "  last task's start - first task's start", "s", "lower",
             lambda r: r["start_spread_s"]),
            ("io_first_result", "  first result stored - first task's start", "s", "lower",
             lambda r: r["first_result_s"]),
            ("io_startup", "  worker spawned - first task's start (untimed)", "s", "lower", lambda r: r["startup_s"]),
            ("io_cpu_total", "  worker CPU per task from its spawn (start-up included)", "us", "lower",
             lambda r: r["worker_cpu_total_s"] / r["n"] * 1e6),
        ]
        for rid, label, unit, better, get in rows:
            self.row(fig, rid, label, unit, {s: [get(r) for r in rs] for s, rs in res.items()}, better=better)
        fig["notes"].append(
            f"{n:,} tasks sent in bulk while no worker runs (untimed), then one worker process with {n:,} tasks at "
            "once: minique -P asyncio -c 1 --async-concurrency, arq max_jobs, taskiq --workers 1 --max-async-tasks; "
            "each task returns time.time() at its start")
        fig["notes"].append(
            "wall: from the least start returned to the moment the last result is stored in Redis, as a "
            "subscriber to keyspace events (notify-keyspace-events E$l) on a raw socket receives the event of the "
            "command that stores it (arq and taskiq SET the result key, minique RPUSHes the final state onto the "
            "list get() waits on): one definition for all three; worker CPU: user + system time of the worker's "
            "processes over the same "
            "span (/proc, sampled every 10 ms), over n")

    def _io_agent(self, system: str, fig: Dict[str, Any]) -> bool:
        """The agent of one asyncio_io system, started (and its virtualenv made) on first use."""
        if system in self.agents:
            return True
        if system == "minique":
            helptext = subprocess.run([sys.executable, "-m", "minique.cli", "worker", "--help"], capture_output=True,
                                      text=True, cwd=str(common.ROOT)).stdout
            if "--async-concurrency" not in helptext:
                fig["notes"].append("minique: this tree has no -P asyncio pool (worker --async-concurrency): "
                                    "not measured")
                return False
            python: Optional[Path] = Path(sys.executable)
        else:
            python = venv_python(system)
            if python is None:
                fig["notes"].append(f"{LABEL[system]}: its virtualenv could not be made: not measured")
                return False
        self.agents[system] = Agent(system, str(python), self.server_url, self.workdir / system)
        try:
            self.info[system] = self.agents[system].run({"job": "info"}, timeout=120)
        except AgentError as exc:
            self.errors.append(f"{system} info: {exc}")
            return False
        log(f"    {LABEL[system]} {self.info[system].get('version')}")
        return True

    # printing ----------------------------------------------------------------------------------------
    def print_row(self, row: Dict[str, Any], systems: Sequence[str] = SYSTEMS) -> None:
        if tuple(systems) != SYSTEMS:   # other columns (asyncio_io): no ratio column
            cells = [cell(row["values"].get(s, []), row["unit"]) for s in systems]
            print(f"  {row['label']:<58} {row['unit']:>8}  " + "  ".join(f"{c:>26}" for c in cells), flush=True)
            return
        cells = [cell(row["values"].get(s, []), row["unit"]) for s in SYSTEMS]
        r = ratio(row)
        rtxt = f"{r:.2f}x" if r is not None else "-"
        print(f"  {row['label']:<58} {row['unit']:>8}  {cells[0]:>26}  {cells[1]:>26}  {rtxt:>8}", flush=True)

    def print_header(self, title: str) -> None:
        print(f"\n== {title}", flush=True)
        if title == "asyncio_io":
            print(f"  {'figure':<58} {'unit':>8}  " + "  ".join(f"{LABEL[s]:>26}" for s in IO_SYSTEMS), flush=True)
            return
        print(f"  {'figure':<58} {'unit':>8}  {'minique':>26}  {'Celery':>26}  {'m/C':>8}", flush=True)

    def print_table(self, table: Dict[str, Any]) -> None:
        print(f"\n  -- {table['title']} ({table['side']}): calls per task", flush=True)
        names = sorted({k for d in table["per_task"].values() for k in d})
        print(f"     {'command':<28} {'minique':>10} {'Celery':>10}")
        for name in names:
            vals = [table["per_task"].get(s, {}).get(name) for s in SYSTEMS]
            if all(v is None or v < 0.0005 for v in vals):
                continue
            print(f"     {name:<28} " + " ".join(f"{fmt(v, 'per task') if v is not None else '-':>10}" for v in vals))
        tot = [sum(table["per_task"].get(s, {}).values()) if s in table["per_task"] else None for s in SYSTEMS]
        print(f"     {'= commands':<28} "
              + " ".join(f"{fmt(v, 'per task') if v is not None else '-':>10}" for v in tot))
        rts = [sum(table["roundtrips"].get(s, {}).values()) if table["roundtrips"].get(s) else None for s in SYSTEMS]
        print(f"     {'= network round trips':<28} " + " ".join(
            f"{fmt(v, 'per task') if v is not None else '-':>10}" for v in rts))
        for s in SYSTEMS:
            parts = table["roundtrips"].get(s)
            if parts:
                print(f"       {LABEL[s]} round trips by process: " +
                      ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))

    # goals -------------------------------------------------------------------------------------------
    def goals(self) -> List[Dict[str, Any]]:
        rows = {r["id"]: r for f in self.figures.values() for r in f["rows"]}

        def med(rid: str, system: str = "minique") -> Optional[float]:
            r = rows.get(rid)
            if r is None:
                return None
            v = common.summary(r["values"].get(system, []))["median"]
            return None if v != v else v

        def goal(name: str, value: Optional[float], target: str, ok: Callable[[float], bool],
                 unit: str) -> Dict[str, Any]:
            return {"goal": name, "target": target, "value": value, "unit": unit,
                    "met": None if value is None else ok(value)}

        served = not any("does not serve metrics" in n for n in self.figures.get("events", {}).get("notes", []))
        out = [
            goal("drain -c 2, results ignored", med("drain_ignored"), ">= 15,000", lambda v: v >= 15000, "tasks/s"),
            goal("drain -c 2, results stored", med("drain_stored"), ">= 8,000", lambda v: v >= 8000, "tasks/s"),
            goal("enqueue, one delay() at a time", med("enqueue_one"), ">= 15,000", lambda v: v >= 15000, "tasks/s"),
            goal("enqueue, await adelay() from 100 coroutines vs one delay() at a time",
                 None if med("enqueue_async") is None or not med("enqueue_one") else
                 med("enqueue_async") / med("enqueue_one"), ">= 1", lambda v: v >= 1, "ratio"),
            goal("enqueue, bulk", med("enqueue_bulk"), ">= 100,000", lambda v: v >= 100000, "tasks/s"),
            goal("round trip p50", med("rtt_p50"), "<= 0.5", lambda v: v <= 0.5, "ms"),
            goal("round trip p99", med("rtt_p99"), "<= 2", lambda v: v <= 2.0, "ms"),
            goal("chord of 1,000", med("chord_1000"), "<= 0.1", lambda v: v <= 0.1, "s"),
            goal("chord of 10,000", med("chord_10000"), "<= 1", lambda v: v <= 1.0, "s"),
            goal("worker -c 2 memory (PSS total)", med("pss_total"), "<= 60", lambda v: v <= 60, "MiB"),
            goal("events on: drain cost", med("events_cost"), "< 5", lambda v: v < 5, "%"),
            goal("metrics on: drain cost", med("metrics_cost") if served else None, "< 5", lambda v: v < 5, "%"),
        ]
        small, big = med("backlog_small"), med("backlog_big")
        ratio = None if small is None or big is None else big / small
        out.append(goal(f"{self.args.io_n:,} x sleep(1), -P asyncio -c 1: first start to last result", med("io_wall"),
                        "<= 2.5", lambda v: v <= 2.5, "s"))
        out.append(goal(f"drain rate with {self.backlog:,} waiting vs {self.n:,}", ratio, ">= 0.95 (no fall)",
                        lambda v: v >= 0.95, "ratio"))
        return out

    def print_goals(self, goals: List[Dict[str, Any]]) -> None:
        print("\n== Goals of issues #7 and #17 (minique, medians)")
        for g in goals:
            state = "n/a" if g["met"] is None else ("met" if g["met"] else "NOT met")
            value = "-" if g["value"] is None else (f"{g['value']:.2f}" if g["unit"] in ("ms", "ratio", "s", "%", "MiB")
                                                      else f"{g['value']:,.0f}")
            print(f"  {g['goal']:<48} {g['target']:>20} {value:>12} {g['unit']:<8} {state}")

    # main --------------------------------------------------------------------------------------------
    def machine(self) -> Dict[str, Any]:
        model = "?"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        mem = "?"
        try:
            kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
            mem = f"{kib / 1024 / 1024:.1f} GiB"
        except (OSError, IndexError, ValueError):
            pass
        try:
            import hiredis  # noqa: F401
            parser = "hiredis"
        except ImportError:
            parser = "pure Python"
        import redis
        return {"cpus": os.cpu_count(), "cpu_model": model, "memory": mem, "kernel": platform.release(),
                "python": platform.python_version(), "redis_py": redis.__version__, "parser": parser,
                "loadavg_start": os.getloadavg()}

    def run(self) -> int:
        wanted = FIGURES if not self.args.only else [f.strip() for f in self.args.only.split(",") if f.strip()]
        unknown = [f for f in wanted if f not in FIGURES]
        if unknown:
            log(f"unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}")
            return 2
        started = time.monotonic()
        self.info["machine"] = self.machine()
        if all(f == "asyncio_io" for f in wanted) and "celery" in self.systems:
            self.systems.remove("celery")   # (that figure's others are arq and taskiq, started by it)
        py_celery = celery_python() if "celery" in self.systems else None
        if py_celery is None and "celery" in self.systems:
            self.systems.remove("celery")
        workdir = Path(tempfile.mkdtemp(prefix="minique-bench-"))
        server = common.RedisServer(workdir / "redis", binary=shutil.which("redis-server") or "redis-server").start()
        self.info["redis"] = server.version()
        self.server_url, self.workdir = server.url, workdir
        try:
            for system in self.systems:
                python = sys.executable if system == "minique" else str(py_celery)
                self.agents[system] = Agent(system, python, server.url, workdir / system)
                self.info[system] = self.agents[system].run({"job": "info"}, timeout=120)
            m = self.info["machine"]
            print(f"minique benchmarks: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']}, Python {m['python']}, "
                  f"redis-py {m['redis_py']} ({m['parser']} parser, both sides), "
                  f"redis-server {self.info['redis']} (private, port {server.port}, no persistence)")
            print(f"minique {self.info.get('minique', {}).get('version', '-')}, "
                  f"Celery {self.info.get('celery', {}).get('version', '- (not measured)')}; "
                  f"{self.runs} run(s) per figure, median [min-max]; load average at start "
                  f"{m['loadavg_start'][0]:.2f}")
            print("Absolute numbers vary with the machine and what else runs on it; the ratios matter.")
            for name in wanted:
                fig_fn: Callable[[], None] = getattr(self, f"fig_{name}")
                self.print_header(name)
                try:
                    fig_fn()
                except AgentError as exc:
                    self.errors.append(f"{name}: {exc}")
                    log(f"ERROR in {name}: {exc}")
                for note in self.figures.get(name, {}).get("notes", []):
                    print(f"  note: {note}")
        finally:
            for agent in self.agents.values():
                agent.close()
            server.stop()
        goals = self.goals()
        self.print_goals(goals)
        self.info["machine"]["loadavg_end"] = os.getloadavg()
        elapsed = time.monotonic() - started
        print(f"\n{elapsed:.0f}s in all; load average at the end {self.info['machine']['loadavg_end'][0]:.2f}")
        out = {"info": self.info, "params": {"runs": self.runs, "n": self.n, "celery_n": self.celery_n,
                                             "enqueue_n": self.enq_n, "rtt_calls": self.rtt_calls,
                                             "backlog": self.backlog, "commands_n": self.cmd_n,
                                             "io_n": self.args.io_n,
                                             "quick": self.args.quick, "figures": list(wanted)},
               "figures": self.figures, "goals": goals, "errors": self.errors, "seconds": elapsed,
               "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        path = Path(self.args.json) if self.args.json else RESULTS / "latest.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, default=str))
        print(f"results written to {path}")
        if self.errors:
            print(f"{len(self.errors)} error(s):\n  " + "\n  ".join(e.splitlines()[0] for e in self.errors))
            return 1
        shutil.rmtree(workdir, ignore_errors=True)
        return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (n = 5,000) for a fast look")
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"only these figures: {', '.join(FIGURES)}")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    p.add_argument("--no-celery", action="store_true", help="measure minique alone")
    p.add_argument("--big", action="store_true", help="backlog of 1,000,000 instead of 100,000")
    p.add_argument("--cluster", action="store_true",
                   help="also drain on a private 3-master Redis Cluster (the drain figure; docs/scaling.md)")
    p.add_argument("--io-n", type=int, default=10000, metavar="N",
                   help="asyncio_io figure: tasks (and tasks at once), default 10,000")
    p.add_argument("--json", metavar="PATH", help="where to write the results (default benchmarks/results/latest.json)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return Runner(args).run()
