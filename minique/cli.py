"""The `minique` command (click): worker, beat, call, result, purge, status, dlq, inspect, control, embedded.

Every error is one line on stderr and a non-zero exit (`minique --traceback ...`, or `-l debug` where a
command has it, shows the stack instead). One-shot commands first check that Redis answers, for
`broker_connection_timeout` seconds at most; a worker waits for it (`broker_connection_retry_on_startup`).
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import click
import redis

from . import __version__
from .config import mask_url
from .exceptions import ConfigurationError, TimeoutError as ResultTimeout
from .logs import parse_level

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_ENV = {"broker_url": "MINIQUE_BROKER_URL", "result_backend": "MINIQUE_RESULT_BACKEND"}
_ENTRY_ID = re.compile(r"^[0-9]+(-[0-9]+)?$")  # a stream entry id (the dead letters' ids)


def load_app(spec: str) -> Any:
    """`module`, `package` (then its `celery` module), `module:attr` or `module.attr`: the app inside, by
    Celery's -A rules (minique.discovery.find_app); it becomes the current app."""
    from .discovery import find_app
    try:
        app = find_app(spec)
    except ImportError as exc:
        raise click.ClickException(f"cannot import app module {spec!r}: {exc}") from exc
    except (AttributeError, ConfigurationError) as exc:
        raise click.ClickException(f"no minique app found in {spec!r}: {exc}") from exc
    app.set_current()
    return app


def setup_logging(loglevel: str, logfile: Optional[str] = None, json_format: bool = False) -> None:
    from .logs import configure
    configure(loglevel, logfile, json_format)


# --- errors: one line each -------------------------------------------------------------------------

def _one_line(text: str) -> str:
    """`text` on one line, any URL in it with its password masked."""
    return _URL.sub(lambda m: mask_url(m.group()), " ".join(str(text).split()))


def _targets(app: Any) -> List[Tuple[str, str]]:
    """(setting, URL) of the Redis servers the app uses: the broker's, and the result store's if it differs."""
    conf = app.conf
    out = [("broker_url", conf.broker_url)]
    if conf.result_url != conf.broker_url:
        out.append(("result_backend", conf.result_url))
    return out


def _named_in(url: str, text: str) -> bool:
    """Whether a redis-py error text is about the server of `url` (it names host:port or the socket path)."""
    try:
        parts = urlsplit(url)
        where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
    except ValueError:
        return False
    return bool(where) and where in text


def describe_redis_error(exc: BaseException, setting: str, url: str, within: Optional[float] = None) -> str:
    """One line: which Redis (password masked) failed how, and what to check."""
    where = f"{mask_url(url)} ({setting})"
    reason = _one_line(str(exc)).rstrip(".") or type(exc).__name__
    env = f" (or {_ENV[setting]})" if setting in _ENV else ""
    if isinstance(exc, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)):
        return f"Redis at {where} refused the credentials: {reason}; check the user and password in {setting}{env}"
    waited = f" within {within:g}s (broker_connection_timeout)" if within is not None else ""
    return (f"cannot reach Redis at {where}{waited}: {reason}; check that Redis is running there and that "
            f"{setting}{env} is right")


def describe_error(exc: BaseException, app: Any = None) -> str:
    """The one line printed for an exception no command handled itself."""
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        targets = _targets(app) if app is not None else []
        setting, url = next(((s, u) for s, u in targets if _named_in(u, str(exc))),
                            targets[0] if targets else ("broker_url", "?"))
        return describe_redis_error(exc, setting, url)
    if isinstance(exc, redis.exceptions.RedisError):
        return f"Redis answered with an error: {_one_line(str(exc))} (--traceback shows where)"
    if isinstance(exc, ConfigurationError):
        return _one_line(str(exc))
    return f"{type(exc).__name__}: {_one_line(str(exc))} (--traceback shows where)"


class OneLineError(click.ClickException):
    """Printed as `Error: MESSAGE` (one line); exit status 1."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


class UsageLine(OneLineError):
    """A command used wrongly, as one line; exit status 2 (as Click's usage errors)."""

    exit_code = 2


def _usage(exc: click.UsageError) -> click.ClickException:
    """A usage error as one line (Click prints three), naming the help to read."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc
    hint = f" (see '{exc.ctx.command_path} -h')" if exc.ctx is not None else ""
    return UsageLine(exc.format_message() + hint)


class _Commands(click.Group):
    """Whatever goes wrong in any command is one line and a non-zero exit; `--traceback` (or `-l debug`)
    lets the exception through with its stack. A broken setting is a ConfigurationError's message."""

    def make_context(self, info_name: Optional[str], args: List[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _usage(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage(exc) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            obj = ctx.obj if isinstance(ctx.obj, dict) else {}
            if obj.get("traceback"):
                raise
            raise OneLineError(describe_error(exc, obj.get("app"))) from exc


def _loglevel(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """-l/--loglevel: a level name (checked here, not when logging starts); DEBUG also means --traceback."""
    try:
        level = parse_level(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    if level <= logging.DEBUG:
        ctx.find_root().ensure_object(dict)["traceback"] = True
    return value


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="minique")
@click.option("-A", "--app", "app_spec", envvar="MINIQUE_APP", help="Module with the app: 'tasks' or 'proj.tasks:app'.")
@click.option("--traceback", "show_traceback", is_flag=True,
              help="On an error, show its stack instead of one line (as -l debug does).")
@click.pass_context
def main(ctx: click.Context, app_spec: Optional[str], show_traceback: bool) -> None:
    """minique: Celery's task queue API, built on Redis.

    Every error is one line and a non-zero exit; --traceback shows the stack. The commands that talk to
    Redis once (status, call, result, purge, dlq, inspect, control) give up after
    broker_connection_timeout seconds; a worker waits for Redis (broker_connection_retry_on_startup)."""
    ctx.ensure_object(dict)
    ctx.obj["app_spec"] = app_spec
    ctx.obj["traceback"] = show_traceback or ctx.obj.get("traceback", False)


def _app(ctx: click.Context) -> Any:
    spec = ctx.obj.get("app_spec")
    app = ctx.obj.get("app_object")  # app.start(): the command runs with that app
    if app is None and not spec:
        raise click.UsageError("which app? give -A/--app MODULE (or set MINIQUE_APP)")
    if app is None:
        app = load_app(spec)
    ctx.obj["app"] = app  # the error handler names its URLs
    return app


def _reachable(app: Any, broker: bool = True, backend: bool = False) -> None:
    """A one-shot command's first step: the Redis servers it needs answer a PING, else after
    `broker_connection_timeout` seconds one line says which (password masked) and what to check."""
    timeout = float(app.conf.broker_connection_timeout)
    deadline = time.monotonic() + timeout
    conf = app.conf
    targets = [("broker_url", conf.broker_url)] if broker else []
    if backend and (not broker or conf.result_url != conf.broker_url):
        targets.append(("result_backend" if conf.result_backend else "broker_url", conf.result_url))
    for setting, url in targets:
        while True:
            client = app._connect(url, socket_timeout=max(deadline - time.monotonic(), 0.05), retries=0)
            try:
                client.ping()
                break
            except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
                raise OneLineError(describe_redis_error(exc, setting, url)) from exc
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if time.monotonic() + 0.1 >= deadline:
                    raise OneLineError(describe_redis_error(exc, setting, url, within=timeout)) from exc
            finally:
                client.close()
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))  # a Redis that is starting gets its moment


def _client_app(ctx: click.Context, broker: bool = True, backend: bool = False) -> Any:
    """The app, for a one-shot command, once the Redis servers it needs have answered."""
    app = _app(ctx)
    _reachable(app, broker, backend)
    return app


class _Autoscale(click.ParamType):  # type: ignore[type-arg]  # (generic in click 8.2+)
    """Celery's --autoscale: MAX,MIN (either order) or MAX."""

    name = "MAX,MIN"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        from .autoscale import parse_autoscale
        if isinstance(value, tuple):
            return value
        try:
            return parse_autoscale(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_NOOP = "Accepted for Celery's command lines; minique has nothing to turn off here"


@main.command()
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: task_default_queue).")
@click.option("-X", "--exclude-queues", help="Comma-separated queues not to consume (taken out of -Q's list).")
@click.option("-I", "--include", help="Comma-separated modules to import as well (their tasks register).")
@click.option("-c", "--concurrency", type=int,
              help="Pool processes (or threads), >= 1; 0: the CPU count (default: worker_concurrency, else the "
                   "CPU count).")
@click.option("-P", "--pool", type=click.Choice(["prefork", "threads", "solo", "asyncio"]),
              help="Pool implementation. asyncio: each process runs many tasks at once on an event loop "
                   "(--async-concurrency); async def tasks are awaited there, plain def ones run in threads.")
@click.option("--async-concurrency", type=click.IntRange(min=1),
              help="-P asyncio: tasks at once in each pool process (default: worker_async_concurrency, 100).")
@click.option("--autoscale", type=_Autoscale(),
              help="MAX,MIN (Celery's form; MAX alone: MIN 1): start with MIN pool processes, grow up to MAX while "
                   "messages wait, shrink back when fewer were needed for worker_autoscale_keepalive seconds "
                   "(30). A process retired finishes its task first; what it fetched goes back to the queue.")
@click.option("-l", "--loglevel", default="WARNING", show_default=True, callback=_loglevel,
              help="DEBUG, INFO, WARNING, ERROR or CRITICAL (Celery's default: WARNING); INFO adds one line per "
                   "task event, DEBUG also shows the stack of an error.")
@click.option("-f", "--logfile", help="Log to this file instead of stderr (%n, %h, %d, %p, %i, %I expand as in "
                                      "Celery; pool processes write to the worker's file).")
@click.option("--log-json", is_flag=True, help="One JSON object per log line.")
@click.option("-n", "--hostname", help="Node name (%h, %n, %d expand as in Celery).")
@click.option("-O", "--optimization", type=click.Choice(["default", "fair"]), default="default", show_default=True,
              help="fair: each pool process takes a message only when it is free (prefetch 1, none fetched ahead), "
                   "so no message waits behind a long task while another process is idle. default: each process "
                   "reserves --prefetch-multiplier messages and fetches ahead after short tasks (fastest for short "
                   "tasks).")
@click.option("--disable-prefetch", is_flag=True, help="As -O fair (Celery's flag of the same meaning).")
@click.option("--prefetch-multiplier", type=int,
              help="Messages each pool process reserves, >= 0 (0 and 1: one at a time; default: "
                   "worker_prefetch_multiplier, 4).")
@click.option("--max-tasks-per-child", type=int, help="Tasks a pool process runs before it is replaced (>= 1).")
@click.option("--max-memory-per-child", type=int, help="KiB (>= 1), as Celery: a pool process above it is replaced.")
@click.option("--time-limit", type=float, help="Hard time limit (s, > 0): the process is killed.")
@click.option("--soft-time-limit", type=float, help="Soft time limit (s, > 0): SoftTimeLimitExceeded is raised.")
@click.option("-E", "--task-events", "--events", "task_events", is_flag=True, default=None,
              help="Send task events (on by default).")
@click.option("--without-events", is_flag=True, help="Do not send task events.")
@click.option("--heartbeat-interval", type=float,
              help="Seconds between the worker's heartbeats (default: worker_heartbeat_interval, 2).")
@click.option("--without-heartbeat", is_flag=True,
              help=f"{_NOOP}: the heartbeat tells the others this worker is alive and keeps its claims on the "
                   f"messages it holds, so it always runs.")
@click.option("--without-gossip", is_flag=True, help=f"{_NOOP}: workers do not gossip (they meet in Redis).")
@click.option("--without-mingle", is_flag=True,
              help=f"{_NOOP}: there is no start-up sync; revokes are read from Redis.")
@click.option("-S", "--statedb", help="Accepted with a warning and ignored: revokes already live in Redis "
                                      "(minique:revoked), for every worker, also ones started later.")
@click.option("--purge", "--discard", "purge_first", is_flag=True,
              help="Delete every waiting message of the worker's queues before it starts.")
@click.option("-D", "--detach", is_flag=True,
              help="Run in the background: the command returns once the worker has written its pid file. "
                   "Default pid file %n.pid, log file %n%I.log (celery multi's), in --workdir.")
@click.option("--pidfile", help="Write the worker's pid here (%n etc. expand); refuse to start while it names a "
                                "live process; removed at exit.")
@click.option("--workdir", help="Change to this directory first (relative files and the app are found there).")
@click.option("--umask", help="Create files with this umask (octal with a leading 0, e.g. 022).")
@click.option("-B", "--beat", is_flag=True, help="Also run beat in this worker (development only).")
@click.option("-s", "--schedule-filename", "--schedule", "schedule_filename",
              help="Accepted with a warning and ignored: beat keeps its schedule's state in Redis.")
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics on this port (0: off).")
@click.option("--health-port", type=int, help="Serve the probes /livez and /readyz on this port (0: off; they "
                                              "are on --metrics-port too).")
@click.pass_context
def worker(ctx: click.Context, queues: Optional[str], exclude_queues: Optional[str], include: Optional[str],
           concurrency: Optional[int], pool: Optional[str], async_concurrency: Optional[int],
           autoscale: Optional[Tuple[int, int]], loglevel: str,
           logfile: Optional[str], log_json: bool, hostname: Optional[str], optimization: str, disable_prefetch: bool,
           prefetch_multiplier: Optional[int], max_tasks_per_child: Optional[int],
           max_memory_per_child: Optional[int], time_limit: Optional[float], soft_time_limit: Optional[float],
           task_events: Optional[bool], without_events: bool, heartbeat_interval: Optional[float],
           without_heartbeat: bool, without_gossip: bool, without_mingle: bool, statedb: Optional[str],
           purge_first: bool, detach: bool, pidfile: Optional[str], workdir: Optional[str], umask: Optional[str],
           beat: bool, schedule_filename: Optional[str], metrics_port: Optional[int],
           health_port: Optional[int]) -> None:
    """Start a worker: `minique -A tasks worker -Q default,priority_high -c 4`.

    A worker started before its Redis waits for it, logging each attempt (broker_connection_retry_on_startup;
    broker_connection_max_retries attempts). Its settings are checked first: a broken one is one line."""
    from . import daemon
    from .worker.main import expand_hostname
    if workdir:
        try:
            os.chdir(workdir)
        except OSError as exc:
            raise click.BadParameter(f"cannot change to {workdir!r}: {exc.strerror}", ctx,
                                     param_hint="'--workdir'") from None
    try:
        umask_value = daemon.parse_umask(umask)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param_hint="'--umask'") from None
    if umask_value is not None and not detach:
        os.umask(umask_value)  # (a detached worker sets it in the daemon)
    app = _app(ctx)
    nodename = expand_hostname(hostname)
    if detach:  # celery multi's defaults: a detached worker without them could be neither found nor heard
        pidfile = pidfile or "%n.pid"
        logfile = logfile or "%n%I.log"
    try:
        pidfile = daemon.node_format(pidfile, nodename)
        logfile = daemon.node_format(logfile, nodename)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx) from None
    pidfile = os.path.abspath(pidfile) if pidfile else None
    logfile = os.path.abspath(logfile) if logfile else None
    if time_limit is not None:
        app.conf.task_time_limit = time_limit
    if soft_time_limit is not None:
        app.conf.task_soft_time_limit = soft_time_limit
    if heartbeat_interval is not None:
        app.conf.worker_heartbeat_interval = heartbeat_interval
    if include:
        app.conf.include = tuple(app.conf.include or ()) + tuple(m.strip() for m in include.split(",") if m.strip())
    fair = optimization == "fair" or disable_prefetch
    names: Optional[List[str]] = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    if exclude_queues:
        names = names or [app.conf.task_default_queue]
        excluded = {q.strip() for q in exclude_queues.split(",") if q.strip()}
        names = [q for q in names if q not in excluded]
        if not names:
            raise click.UsageError("-X/--exclude-queues leaves no queue to consume (minique consumes the -Q queues, "
                                   "else task_default_queue)")
    if not detach:  # (a detached worker's logging starts in the daemon: until then, warnings go to the terminal)
        setup_logging(loglevel, logfile, log_json or app.conf.worker_log_json)
    from .worker import Worker
    w = Worker(app, queues=names, concurrency=concurrency, pool=pool, hostname=hostname,
               prefetch_multiplier=prefetch_multiplier, max_tasks_per_child=max_tasks_per_child,
               max_memory_per_child=max_memory_per_child, events=False if without_events else task_events,
               metrics_port=metrics_port, beat=beat, autoscale=autoscale, fair=fair, purge=purge_first,
               health_port=health_port, async_concurrency=async_concurrency)
    lock = daemon.Pidfile(pidfile) if pidfile else None
    detached = None
    if detach:  # what would stop the daemon is said here, on the terminal
        try:
            if lock is not None:
                lock.check()
            if logfile:
                open(logfile, "a").close()
        except daemon.PidfileLocked as exc:
            raise OneLineError(str(exc)) from None
        except OSError as exc:
            raise OneLineError(f"cannot write the log file {logfile}: {exc.strerror}") from None
        detached = daemon.detach(os.getcwd(), umask_value, logfile)
        setup_logging(loglevel, logfile, log_json or app.conf.worker_log_json)
    wlog = logging.getLogger("minique.worker")
    if fair and prefetch_multiplier not in (None, 0, 1):
        wlog.warning("-O fair: each pool process takes one message at a time; --prefetch-multiplier %s is not used",
                     prefetch_multiplier)
    if statedb or app.conf.worker_state_db:
        wlog.warning("--statedb/worker_state_db (%s) is not used: revokes already live in Redis (minique:revoked), "
                     "known to every worker", statedb or app.conf.worker_state_db)
    if schedule_filename:
        wlog.warning("-s/--schedule-filename (%s) is not used: beat keeps its schedule's state in Redis",
                     schedule_filename)
    try:
        if lock is not None:
            lock.acquire()
    except (daemon.PidfileLocked, OSError) as exc:
        if detached is not None:
            detached.report(str(exc))
        raise OneLineError(str(exc)) from None
    if detached is not None:
        detached.report()
    try:
        w.install_signals()
        code = w.run()
    finally:
        if lock is not None:
            lock.release()
    sys.exit(code)


@main.command()
@click.option("-l", "--loglevel", default="INFO", show_default=True, callback=_loglevel)
@click.option("-f", "--logfile")
@click.option("--list", "list_only", is_flag=True, help="Print entries and their next run, then exit.")
@click.pass_context
def beat(ctx: click.Context, loglevel: str, logfile: Optional[str], list_only: bool) -> None:
    """Run the periodic task scheduler (any number may run; one leads)."""
    app = _app(ctx)
    setup_logging(loglevel, logfile)
    app.import_modules()  # tasks and their periodic entries (on_after_finalize, autodiscover_tasks), as Celery's beat
    from .beat import Beat, run_beat
    if list_only:
        for name, task, sched, nxt in Beat(app).entries():
            click.echo(f"{name:30} {task:40} {sched!r:40} next {nxt.isoformat()}")
        return
    sys.exit(run_beat(app, loglevel))


@main.command()
@click.argument("name")
@click.option("-a", "--args", default="[]", help="JSON list of positional arguments.")
@click.option("-k", "--kwargs", default="{}", help="JSON object of keyword arguments.")
@click.option("--countdown", type=float)
@click.option("--queue", "-Q")
@click.option("--priority", type=int)
@click.option("--wait", type=float, help="Wait this many seconds for the result and print it.")
@click.option("--force", is_flag=True, help="Send NAME even if no task of that name is registered here.")
@click.pass_context
def call(ctx: click.Context, name: str, args: str, kwargs: str, countdown: Optional[float], queue: Optional[str],
         priority: Optional[int], wait: Optional[float], force: bool) -> None:
    """Send task NAME; prints its id (or its result with --wait).

    NAME must be a task the app registers (with its include/imports), else the command suggests the
    nearest names; --force sends it anyway (for tasks only the workers know)."""
    app = _app(ctx)
    try:
        a, k = json.loads(args), json.loads(kwargs)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(a, list) or not isinstance(k, dict):
        raise click.BadParameter("--args must be a JSON list and --kwargs a JSON object")
    if not force:
        _check_registered(app, name)
    _reachable(app, broker=True, backend=bool(wait))
    res = app.send_task(name, a, k, countdown=countdown, queue=queue, priority=priority)
    click.echo(res.id)
    if not wait:
        return
    try:
        value = res.get(timeout=wait)
    except ResultTimeout:
        where = queue or app.build_message(name, a, k, {}).queue
        raise OneLineError(f"no result from {name}[{res.id}] within {wait:g}s (state {res.state}): is a worker "
                           f"consuming queue {where!r}?") from None
    except redis.exceptions.RedisError:
        raise
    except Exception as exc:  # the task's own exception, rebuilt from its result
        if ctx.obj.get("traceback"):
            raise
        raise OneLineError(f"{name}[{res.id}] {res.state}: {type(exc).__name__}: {exc}") from None
    click.echo(json.dumps(value, default=repr))


def _check_registered(app: Any, name: str) -> None:
    """A task name the app does not register is refused (with the nearest names): a worker would
    dead-letter it."""
    if name not in app.tasks:
        app.import_modules()  # the tasks of `include` and `imports`, as a worker registers them
    if name in app.tasks:
        return
    names = [n for n in app.tasks if not n.startswith("minique.")]
    scored = sorted(((difflib.SequenceMatcher(None, name, n).ratio(), n) for n in names), reverse=True)
    best = scored[0][0] if scored else 1.0
    near = [n for score, n in scored[:3] if score >= max(0.75, best - 0.05)]  # the closest few only
    near += [n for n in names if n.rpartition(".")[2] == name.rpartition(".")[2] and n not in near]  # other module
    hint = f"did you mean {' or '.join(near)}? " if near else ""
    raise OneLineError(f"no task named {name!r} is registered in this app ({hint}--force sends it anyway)")


@main.command()
@click.argument("task_id")
@click.option("--traceback", "show_tb", is_flag=True)
@click.pass_context
def result(ctx: click.Context, task_id: str, show_tb: bool) -> None:
    """Show a task's state and result."""
    app = _client_app(ctx, broker=False, backend=True)
    res = app.AsyncResult(task_id)
    click.echo(f"{res.state}: {res.result!r}")
    if show_tb and res.traceback:
        click.echo(res.traceback)


@main.command()
@click.option("-Q", "--queues", help="Comma-separated queues (default: task_default_queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, queues: Optional[str], force: bool) -> None:
    """Delete every waiting message in the queues."""
    from . import keys
    app = _app(ctx)
    names = [keys.check_queue(q.strip(), "-Q/--queues") for q in (queues or app.conf.task_default_queue).split(",")
             if q.strip()]  # (bad names are refused before anything connects)
    _reachable(app, True, False)
    broker = app.broker
    counts = {q: sum(broker.length(q, p) for p in keys.PRIORITIES) + broker.delayed_count(q) for q in names}
    if not force:
        click.confirm(f"Delete {sum(counts.values())} waiting message(s) in {', '.join(names)}?", abort=True)
    total = 0
    with _progress(names, "Purging", sum(counts.values()), weights=counts) as bar:
        for q in bar:
            total += broker.purge(q)
    click.echo(f"Purged {total} message(s) from {len(names)} queue(s).")


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Queues with their lengths, and the workers alive."""
    import time

    from . import keys, serializers
    app = _client_app(ctx)
    broker = app.broker
    paused = set(app.control.paused())
    click.echo(f"{'queue':24} {'waiting':>9} {'delayed':>9} {'held':>7}")
    for q in sorted(set(broker.queues_known()) | paused):
        waiting = sum(broker.length(q, p) for p in keys.PRIORITIES)
        click.echo(f"{q:24} {waiting:>9} {broker.delayed_count(q):>9} {broker.held([q]).get(q, 0):>7}"
                   + ("  paused" if q in paused else ""))
    click.echo(f"dead letters: {app.broker_client.xlen(keys.DLQ)}")
    for host, raw in app.broker_client.hgetall(keys.WORKERS).items():
        info = serializers.unpack(raw)
        age = time.time() - info["ts"]
        click.echo(f"worker {host.decode()}: {'up' if age < 10 else 'silent'} ({age:.0f}s ago), "
                   f"pool {info['concurrency']}, processed {info['processed']}")


_EVENT_DETAILS = ("args", "kwargs", "runtime", "exception", "reason", "eta", "queue", "retries")


def event_line(ev: Dict[str, Any]) -> str:
    """One event as `celery events --dump` shows it: when, who, what, then its details."""
    import datetime
    when = datetime.datetime.fromtimestamp(float(ev.get("ts") or 0)).isoformat(sep=" ", timespec="milliseconds")
    kind = ev.get("type", "?")
    if kind.startswith("task-"):
        what = f"{kind} {ev.get('name') or '?'}[{ev.get('uuid')}]"
        details = " ".join(f"{k}={ev[k]}" for k in _EVENT_DETAILS if ev.get(k) not in (None, "", (), []))
    else:
        what = kind
        details = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("type", "ts", "hostname", "pid")
                           and v not in (None, "", (), []))
    return f"{when} {ev.get('hostname') or '?'} {what}" + (f" {details}" if details else "")


@main.command()
@click.option("--dump", is_flag=True, help="Print events as they come (the only mode; accepted as Celery's).")
@click.option("--task", "task_glob", help="Only events of tasks whose name matches (a glob: 'proj.*').")
@click.option("--state", "states", multiple=True,
              help="Only these task events: received, started, succeeded, failed, retried, revoked, rejected "
                   "(repeat the option for several).")
@click.option("--workers/--no-workers", default=False, help="Also worker events (online, heartbeat, offline).")
@click.option("--from-start", is_flag=True, help="Begin with the events already in the stream (default: new ones).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.option("--count", type=int, help="Stop after this many events.")
@click.option("--timeout", type=float, help="Stop when no event came for this many seconds.")
@click.pass_context
def events(ctx: click.Context, dump: bool, task_glob: Optional[str], states: Tuple[str, ...], workers: bool,
           from_start: bool, as_json: bool, count: Optional[int], timeout: Optional[float]) -> None:
    """Watch the event stream live, as `celery events --dump`: one line per event."""
    import fnmatch
    import json as json_mod
    import time

    from . import keys
    from .events import Reader
    app = _client_app(ctx)
    client = app.broker_client
    kinds = {s if s.startswith("task-") else f"task-{s}" for s in states}
    start = "0-0"
    if not from_start:
        newest = client.xrevrange(keys.EVENTS, count=1)
        if newest:
            start = newest[0][0].decode()
    reader = Reader(client, start)
    click.echo(f"-> minique events: watching {keys.EVENTS} (Ctrl-C to stop)", err=True)
    shown, quiet_since = 0, time.monotonic()
    while count is None or shown < count:
        if timeout is not None and time.monotonic() - quiet_since > timeout:
            break
        block = 1.0 if timeout is None else max(0.01, min(1.0, timeout - (time.monotonic() - quiet_since)))
        for ev in reader.read(count=100, block=block):
            kind = str(ev.get("type", ""))
            if kind.startswith("task-"):
                if kinds and kind not in kinds or task_glob and not fnmatch.fnmatchcase(str(ev.get("name")),
                                                                                         task_glob):
                    continue
            elif not workers:
                continue
            click.echo(json_mod.dumps(ev, default=str) if as_json else event_line(ev))
            shown += 1
            quiet_since = time.monotonic()
            if count is not None and shown >= count:
                break


PROGRESS_FROM = 500  # messages: fewer take no more than a moment, and get no progress bar


class _Quiet:
    """What `_progress` gives when it shows nothing: the items, as they are."""

    def __init__(self, items: Any):
        self.items = items

    def __enter__(self) -> Any:
        return iter(self.items)

    def __exit__(self, *exc: Any) -> None:
        return None


def _progress(items: Any, label: str, size: int, weights: Optional[Dict[str, Any]] = None) -> Any:
    """A click progress bar on stderr over `items` when there are PROGRESS_FROM messages or more and stderr is a
    terminal (a pipe or a file gets only the command's result); `weights`: how many messages each item counts
    for (a queue's length), else one each."""
    if size < PROGRESS_FROM or not sys.stderr.isatty():
        return _Quiet(items)
    if weights is None:
        return click.progressbar(items, label=label, file=sys.stderr, show_pos=True)
    counts: Dict[str, Any] = weights

    class _Weighted:
        def __enter__(self) -> Any:
            self.bar = click.progressbar(length=size, label=label, file=sys.stderr, show_pos=True).__enter__()
            return self._walk()

        def _walk(self) -> Any:
            for item in items:
                yield item
                self.bar.update(counts.get(item, 0))

        def __exit__(self, *exc: Any) -> None:
            self.bar.__exit__(*exc)

    return _Weighted()


@main.group()
def dlq() -> None:
    """The dead-letter stream: list, replay, purge."""


@dlq.command("list")
@click.option("-n", "--count", default=50, show_default=True)
@click.pass_context
def dlq_list(ctx: click.Context, count: int) -> None:
    """Show dead letters, oldest first."""
    app = _client_app(ctx)  # ctx.obj is the main group's (click passes obj down)
    for entry_id, f in app.broker.dead_letters(count):
        click.echo(f"{entry_id}  task={f.get('task_id') or '?'} queue={f.get('queue')} "
                   f"worker={f.get('worker')} reason={f.get('reason')}")


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True)
@click.option("-Q", "--queue", help="Send to this queue instead of the original.")
@click.pass_context
def dlq_replay(ctx: click.Context, ids: Tuple[Any, ...], replay_all: bool, queue: Optional[str]) -> None:
    """Send dead letters back to their queue."""
    app = _client_app(ctx)  # ctx.obj is the main group's (click passes obj down)
    if replay_all:
        ids = tuple(i for i, _ in app.broker.dead_letters(1_000_000))
    if not ids:
        raise click.UsageError("give entry IDs or --all")
    bad = [i for i in ids if not _ENTRY_ID.match(i)]
    if bad:  # most likely a task id: say which entries hold it
        held = {f.get("task_id"): i for i, f in app.broker.dead_letters(1_000_000) if f.get("task_id") in bad}
        found = [f"{t} is in entry {held[t]}" for t in bad if t in held]
        raise UsageLine(f"not a dead-letter entry id: {', '.join(bad)} (entry ids look like 1712345678901-0; "
                           + (f"{'; '.join(found)}" if found else "'minique dlq list' shows them") + ")")
    with _progress(ids, "Replaying dead letters", len(ids)) as bar:
        missing = [i for i in bar if not app.broker.replay_dead_letter(i, queue)]
    click.echo(f"Replayed {len(ids) - len(missing)} message(s).")
    if missing:
        raise OneLineError(f"no dead letter with entry id {', '.join(missing)} ('minique dlq list' shows them)")


@dlq.command("purge")
@click.option("-f", "--force", is_flag=True)
@click.pass_context
def dlq_purge(ctx: click.Context, force: bool) -> None:
    """Delete every dead letter."""
    app = _client_app(ctx)  # ctx.obj is the main group's (click passes obj down)
    if not force:
        click.confirm("Delete all dead letters?", abort=True)
    click.echo(f"Deleted {app.broker.purge_dead_letters()} dead letter(s).")


_NO_REPLIES = "No nodes replied within time constraint."


def _reply_text(reply: Any) -> Tuple[str, str]:
    """One node's reply as Celery prints it: (status, body). `{"ok": ...}` is OK with its message (and
    any other fields after it), `{"error": ...}` is ERROR; anything else is OK with the data, indented."""
    if isinstance(reply, dict) and ("ok" in reply or "error" in reply):
        status, key = ("ERROR", "error") if "error" in reply else ("OK", "ok")
        lines = [str(reply[key])] + [f"{k}: {json.dumps(v, default=repr)}" for k, v in reply.items() if k != key]
        return status, "\n".join(lines)
    if isinstance(reply, (dict, list)):
        return "OK", json.dumps(reply, indent=2, default=repr) if reply else "- empty -"
    return "OK", str(reply)


def _say_replies(replies: Dict[str, Any], as_json: bool, show_online: bool = False) -> None:
    """`{node: reply}` in Celery's format (`-> node: OK`, the reply indented; one block per node) or, with
    --json, as one JSON object. No replies: Celery's error line and exit status 1."""
    if as_json:
        click.echo(json.dumps(replies, indent=2, default=repr))
    else:
        for node, reply in replies.items():
            status, body = _reply_text(reply)
            click.echo(f"-> {node}: {status}")
            if body:
                click.echo("\n".join("    " + line for line in body.splitlines()))
        if show_online and replies:
            click.echo(f"\n{len(replies)} {'node' if len(replies) == 1 else 'nodes'} online.")
    if not replies:
        raise OneLineError(_NO_REPLIES)


@main.command()
@click.argument("what", type=click.Choice(["active", "reserved", "scheduled", "stats", "registered", "ping",
                                           "revoked"]))
@click.option("-d", "--destination", help="Comma-separated worker names.")
@click.option("-t", "--timeout", default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object {worker: reply} instead of text.")
@click.pass_context
def inspect(ctx: click.Context, what: str, destination: Optional[str], timeout: float, as_json: bool) -> None:
    """Ask the workers what they are doing."""
    app = _client_app(ctx)
    dest = destination.split(",") if destination else None
    replies = getattr(app.control.inspect(destination=dest, timeout=timeout), what)()
    _say_replies(replies or {}, as_json, show_online=True)


@main.command()
@click.argument("command", type=click.Choice(["shutdown", "pool_grow", "pool_shrink", "autoscale", "rate_limit",
                                              "revoke", "ping", "pause", "resume"]))
@click.argument("args", nargs=-1)
@click.option("-d", "--destination", help="Comma-separated worker names.")
@click.option("-t", "--timeout", default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object {worker: reply} instead of text.")
@click.pass_context
def control(ctx: click.Context, command: str, args: Tuple[Any, ...], destination: Optional[str], timeout: float,
            as_json: bool) -> None:
    """Tell the workers to do something: shutdown, pool_grow N, pool_shrink N, autoscale MAX [MIN],
    rate_limit TASK RATE, revoke ID, pause QUEUE, resume QUEUE (a pause is kept in Redis: workers started later
    obey it too)."""
    if command in ("pool_grow", "pool_shrink"):
        if len(args) > 1 or (args and not re.fullmatch(r"\s*[1-9][0-9]*\s*", args[0])):
            raise click.UsageError(f"usage: control {command} [N]: N is a number of pool processes >= 1 "
                                   f"(default 1), not {' '.join(args)!r}")
    if command == "autoscale" and (not 1 <= len(args) <= 2 or not all(re.fullmatch(r"\s*[0-9]+\s*", a) for a in args)):
        raise click.UsageError(f"usage: control autoscale MAX [MIN]: numbers of pool processes, not {' '.join(args)!r}")
    app = _client_app(ctx)
    dest = destination.split(",") if destination else None
    ctl = app.control
    if command == "shutdown":
        replies = ctl.shutdown(destination=dest, reply=True, timeout=timeout)
    elif command in ("pool_grow", "pool_shrink"):
        replies = getattr(ctl, command)(int(args[0]) if args else 1, destination=dest, reply=True, timeout=timeout)
    elif command == "autoscale":
        bounds = [int(a) for a in args]
        replies = ctl.autoscale(bounds[0], bounds[1] if len(bounds) > 1 else None, destination=dest, reply=True,
                                timeout=timeout)
    elif command == "rate_limit":
        if len(args) != 2:
            raise click.UsageError("usage: control rate_limit TASK_NAME RATE (e.g. 10/s, 100/m; 0 to remove)")
        replies = ctl.rate_limit(args[0], args[1], destination=dest, reply=True, timeout=timeout)
    elif command == "revoke":
        replies = ctl.revoke(list(args), destination=dest, reply=True, timeout=timeout)
    elif command in ("pause", "resume"):
        if len(args) != 1:
            raise click.UsageError(f"usage: control {command} QUEUE")
        replies = getattr(ctl, command)(args[0], destination=dest, reply=True, timeout=timeout)
        click.echo(f"queue {args[0]} {'paused' if command == 'pause' else 'resumed'}"
                   + ("" if replies else " (no worker answered: workers started later obey it)"), err=True)
        if not replies:  # kept in Redis: done, whether or not a worker runs now
            return
    else:
        replies = ctl.ping(destination=dest, timeout=timeout)
    merged: Dict[str, Any] = {}
    for one in replies:  # each reply is {node: answer}: the same shape as inspect's
        merged.update(one)
    _say_replies(merged, as_json)


@main.group()
def embedded() -> None:
    """The private redis-server of a redis+embedded:// URL: status, stop. (It keeps running after the
    worker, beat or client that started it exits, so that they share it.)"""


def _embedded_dir(where: str) -> Any:
    """A data directory, or a redis+embedded:// URL naming one."""
    from pathlib import Path

    from . import embedded as emb
    if emb.is_embedded_url(where):
        return emb.parse_embedded_url(where)[0]
    return Path(os.path.abspath(where))


@embedded.command("status")
@click.argument("where", metavar="DIR")
def embedded_status(where: str) -> None:
    """Whether the embedded redis-server of DIR (or a redis+embedded:// URL) runs; exit status 1 if not."""
    from . import embedded as emb
    directory = _embedded_dir(where)
    pid = emb.server_pid(directory)
    if pid is None:
        click.echo(f"No embedded redis-server runs in {directory}.")
        raise click.exceptions.Exit(1)
    sock, logfile = directory / emb.SOCKET_NAME, directory / emb.LOGFILE_NAME
    click.echo(f"Running: pid {pid}, socket {sock}, URL redis+embedded://{directory}, log {logfile}")


@embedded.command("stop")
@click.argument("where", metavar="DIR")
@click.option("-t", "--timeout", default=10.0, show_default=True,
              help="Seconds to wait for a clean shutdown before killing it.")
def embedded_stop(where: str, timeout: float) -> None:
    """Stop the embedded redis-server of DIR (or a redis+embedded:// URL); its data stays in DIR (AOF)."""
    from . import embedded as emb
    directory = _embedded_dir(where)
    pid = emb.server_pid(directory)
    if not emb.stop(directory, timeout=timeout):
        click.echo(f"No embedded redis-server runs in {directory}.")
        return
    click.echo(f"Stopped the embedded redis-server in {directory}" + (f" (pid {pid})." if pid else "."))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("-p", "--port", default=5555, show_default=True, type=int, help="Port (0: any free port).")
@click.option("--basic-auth", "basic_auth", envvar="MINIQUE_DASHBOARD_BASIC_AUTH",
              help="user:password (comma-separated for several) required on every page and API call.")
@click.option("--token", envvar="MINIQUE_DASHBOARD_TOKEN",
              help="Bearer token accepted instead (Authorization: Bearer T, or ?token=T once in a browser).")
@click.option("--max-tasks", default=10000, show_default=True, type=int, help="Tasks kept in the in-memory index.")
@click.option("--sample-interval", default=2.0, show_default=True, type=float, help="Seconds between queue samples.")
@click.option("--refresh", default=1.5, show_default=True, type=float, help="Seconds between page updates.")
@click.option("--rescan-interval", default=30.0, show_default=True, type=float,
              help="Seconds between looks for new queues (a SCAN of the broker's keys).")
@click.option("--prune-after", default=600.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds after which an offline worker, or a queue unused and empty, is no longer listed.")
@click.option("-l", "--loglevel", default="INFO", show_default=True, callback=_loglevel)
@click.option("-f", "--logfile")
@click.option("--log-json", is_flag=True, help="One JSON object per log line.")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, basic_auth: Optional[str], token: Optional[str],
              max_tasks: int, sample_interval: float, refresh: float, rescan_interval: float, prune_after: float,
              loglevel: str, logfile: Optional[str], log_json: bool) -> None:
    """Serve the web dashboard (workers, tasks, queues, failures, dead letters) and cluster /metrics."""
    app = _app(ctx)
    setup_logging(loglevel, logfile, log_json)
    from .dashboard import serve
    pairs = [p.strip() for p in basic_auth.split(",") if p.strip()] if basic_auth else None
    try:
        server = serve(app, host=host, port=port, basic_auth=pairs, token=token, max_tasks=max_tasks,
                       sample_interval=sample_interval, refresh=refresh, rescan_interval=rescan_interval,
                       prune_after=prune_after)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    log = logging.getLogger("minique.dashboard")
    if not pairs and not token:
        log.warning("no --basic-auth or --token: anyone who can reach %s can retry, revoke and replay tasks, "
                    "and shut down workers",
                    server.url)
    from .config import mask_url
    log.info("dashboard listening on %s (broker %s)", server.url, mask_url(str(app.conf.broker_url)))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(prog_name="minique")
