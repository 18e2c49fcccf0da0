"""The `minique` command (click): worker, beat, call, result, purge, status, dlq, inspect, control."""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Any, Optional

import click

from . import __version__
from .exceptions import ConfigurationError


def load_app(spec: str) -> Any:
    """`module`, `module:attr` or `module.attr`: the Minique app inside (Celery's -A rules)."""
    from .app import Minique
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if not attr and "." in module_name:
            module_name, _, attr = module_name.rpartition(".")
            module = importlib.import_module(module_name)
        else:
            raise click.ClickException(f"cannot import app module {module_name!r}: {exc}") from exc
    if attr:
        app = getattr(module, attr, None)
    else:
        app = next((getattr(module, n) for n in ("app", "celery") if isinstance(getattr(module, n, None), Minique)),
                   None) or next((v for v in vars(module).values() if isinstance(v, Minique)), None)
    if not isinstance(app, Minique):
        raise click.ClickException(f"no minique app found in {spec!r} (expected a Minique instance named app)")
    return app


def setup_logging(loglevel: str, logfile: Optional[str] = None, json_format: bool = False) -> None:
    from .logs import configure
    configure(loglevel, logfile, json_format)


class _Commands(click.Group):
    """A broken setting met by any command (a worker's, beat's, a client's) is a clear error, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="minique")
@click.option("-A", "--app", "app_spec", envvar="MINIQUE_APP", help="Module with the app: 'tasks' or 'proj.tasks:app'.")
@click.pass_context
def main(ctx: click.Context, app_spec: Optional[str]) -> None:
    """minique: Celery's task queue API, built on Redis."""
    ctx.ensure_object(dict)
    ctx.obj["app_spec"] = app_spec


def _app(ctx: click.Context) -> Any:
    spec = ctx.obj.get("app_spec")
    if not spec:
        raise click.UsageError("which app? give -A/--app MODULE (or set MINIQUE_APP)")
    return load_app(spec)


@main.command()
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: task_default_queue).")
@click.option("-c", "--concurrency", type=int, help="Pool size (default: worker_concurrency or CPU count).")
@click.option("-P", "--pool", type=click.Choice(["prefork", "threads", "solo"]), help="Pool implementation.")
@click.option("-l", "--loglevel", default="WARNING", show_default=True,
              help="As Celery's default; INFO adds one line per task event.")
@click.option("-f", "--logfile", help="Log to this file instead of stderr.")
@click.option("--log-json", is_flag=True, help="One JSON object per log line.")
@click.option("-n", "--hostname", help="Node name (%h, %n, %d expand as in Celery).")
@click.option("--prefetch-multiplier", type=int, help="Messages each pool process reserves.")
@click.option("--max-tasks-per-child", type=int)
@click.option("--max-memory-per-child", type=int, help="KiB, as Celery.")
@click.option("--time-limit", type=float, help="Hard time limit (s): the process is killed.")
@click.option("--soft-time-limit", type=float, help="Soft time limit (s): SoftTimeLimitExceeded is raised.")
@click.option("-E", "--task-events", is_flag=True, default=None, help="Send task events (on by default).")
@click.option("--without-events", is_flag=True, help="Do not send task events.")
@click.option("-B", "--beat", is_flag=True, help="Also run beat in this worker (development only).")
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics on this port (0: off).")
@click.pass_context
def worker(ctx: click.Context, queues: Optional[str], concurrency: Optional[int], pool: Optional[str], loglevel: str,
           logfile: Optional[str], log_json: bool, hostname: Optional[str], prefetch_multiplier: Optional[int],
           max_tasks_per_child: Optional[int], max_memory_per_child: Optional[int], time_limit: Optional[float],
           soft_time_limit: Optional[float], task_events: Optional[bool], without_events: bool, beat: bool,
           metrics_port: Optional[int]) -> None:
    """Start a worker: `minique -A tasks worker -Q default,priority_high -c 4`."""
    app = _app(ctx)
    setup_logging(loglevel, logfile, log_json or app.conf.worker_log_json)
    if time_limit is not None:
        app.conf.task_time_limit = time_limit
    if soft_time_limit is not None:
        app.conf.task_soft_time_limit = soft_time_limit
    from .worker import Worker
    w = Worker(app, queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
               concurrency=concurrency, pool=pool, hostname=hostname, prefetch_multiplier=prefetch_multiplier,
               max_tasks_per_child=max_tasks_per_child, max_memory_per_child=max_memory_per_child,
               events=False if without_events else task_events, metrics_port=metrics_port, beat=beat)
    w.install_signals()
    sys.exit(w.run())


@main.command()
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("-f", "--logfile")
@click.option("--list", "list_only", is_flag=True, help="Print entries and their next run, then exit.")
@click.pass_context
def beat(ctx: click.Context, loglevel: str, logfile: Optional[str], list_only: bool) -> None:
    """Run the periodic task scheduler (any number may run; one leads)."""
    app = _app(ctx)
    setup_logging(loglevel, logfile)
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
@click.pass_context
def call(ctx: click.Context, name: str, args: str, kwargs: str, countdown: Optional[float], queue: Optional[str],
         priority: Optional[int], wait: Optional[float]) -> None:
    """Send task NAME; prints its id (or its result with --wait)."""
    app = _app(ctx)
    try:
        a, k = json.loads(args), json.loads(kwargs)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(a, list) or not isinstance(k, dict):
        raise click.BadParameter("--args must be a JSON list and --kwargs a JSON object")
    res = app.send_task(name, a, k, countdown=countdown, queue=queue, priority=priority)
    click.echo(res.id)
    if wait:
        click.echo(json.dumps(res.get(timeout=wait), default=repr))


@main.command()
@click.argument("task_id")
@click.option("--traceback", "show_tb", is_flag=True)
@click.pass_context
def result(ctx: click.Context, task_id: str, show_tb: bool) -> None:
    """Show a task's state and result."""
    app = _app(ctx)
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
    app = _app(ctx)
    names = [q.strip() for q in (queues or app.conf.task_default_queue).split(",") if q.strip()]
    if not force:
        click.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)
    total = sum(app.broker.purge(q) for q in names)
    click.echo(f"Purged {total} message(s) from {len(names)} queue(s).")


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Queues with their lengths, and the workers alive."""
    import time

    from . import keys, serializers
    app = _app(ctx)
    broker = app.broker
    click.echo(f"{'queue':24} {'waiting':>9} {'delayed':>9} {'held':>7}")
    for q in broker.queues_known():
        waiting = sum(broker.length(q, p) for p in keys.PRIORITIES)
        click.echo(f"{q:24} {waiting:>9} {broker.delayed_count(q):>9} {broker.held([q]).get(q, 0):>7}")
    click.echo(f"dead letters: {app.broker_client.xlen(keys.DLQ)}")
    for host, raw in app.broker_client.hgetall(keys.WORKERS).items():
        info = serializers.unpack(raw)
        age = time.time() - info["ts"]
        click.echo(f"worker {host.decode()}: {'up' if age < 10 else 'silent'} ({age:.0f}s ago), "
                   f"pool {info['concurrency']}, processed {info['processed']}")


@main.group()
def dlq() -> None:
    """The dead-letter stream: list, replay, purge."""


@dlq.command("list")
@click.option("-n", "--count", default=50, show_default=True)
@click.pass_context
def dlq_list(ctx: click.Context, count: int) -> None:
    """Show dead letters, oldest first."""
    app = _app(ctx)  # ctx.obj is the main group's (click passes obj down)
    for entry_id, f in app.broker.dead_letters(count):
        click.echo(f"{entry_id}  task={f.get('task_id') or '?'} queue={f.get('queue')} "
                   f"worker={f.get('worker')} reason={f.get('reason')}")


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True)
@click.option("-Q", "--queue", help="Send to this queue instead of the original.")
@click.pass_context
def dlq_replay(ctx: click.Context, ids: tuple, replay_all: bool, queue: Optional[str]) -> None:
    """Send dead letters back to their queue."""
    app = _app(ctx)  # ctx.obj is the main group's (click passes obj down)
    if replay_all:
        ids = tuple(i for i, _ in app.broker.dead_letters(1_000_000))
    if not ids:
        raise click.UsageError("give entry IDs or --all")
    n = sum(app.broker.replay_dead_letter(i, queue) for i in ids)
    click.echo(f"Replayed {n} message(s).")


@dlq.command("purge")
@click.option("-f", "--force", is_flag=True)
@click.pass_context
def dlq_purge(ctx: click.Context, force: bool) -> None:
    """Delete every dead letter."""
    app = _app(ctx)  # ctx.obj is the main group's (click passes obj down)
    if not force:
        click.confirm("Delete all dead letters?", abort=True)
    click.echo(f"Deleted {app.broker.purge_dead_letters()} dead letter(s).")


@main.command()
@click.argument("what", type=click.Choice(["active", "reserved", "scheduled", "stats", "registered", "ping",
                                           "revoked"]))
@click.option("-d", "--destination", help="Comma-separated worker names.")
@click.option("-t", "--timeout", default=1.0, show_default=True)
@click.pass_context
def inspect(ctx: click.Context, what: str, destination: Optional[str], timeout: float) -> None:
    """Ask the workers what they are doing."""
    app = _app(ctx)
    dest = destination.split(",") if destination else None
    replies = getattr(app.control.inspect(destination=dest, timeout=timeout), what)()
    click.echo(json.dumps(replies or {}, indent=2, default=repr))
    if not replies:
        sys.exit(1)


@main.command()
@click.argument("command", type=click.Choice(["shutdown", "pool_grow", "pool_shrink", "rate_limit", "revoke", "ping"]))
@click.argument("args", nargs=-1)
@click.option("-d", "--destination", help="Comma-separated worker names.")
@click.option("-t", "--timeout", default=1.0, show_default=True)
@click.pass_context
def control(ctx: click.Context, command: str, args: tuple, destination: Optional[str], timeout: float) -> None:
    """Tell the workers to do something: shutdown, pool_grow N, pool_shrink N, rate_limit TASK RATE, revoke ID."""
    app = _app(ctx)
    dest = destination.split(",") if destination else None
    ctl = app.control
    if command == "shutdown":
        replies = ctl.shutdown(destination=dest, reply=True, timeout=timeout)
    elif command in ("pool_grow", "pool_shrink"):
        replies = getattr(ctl, command)(int(args[0]) if args else 1, destination=dest, reply=True, timeout=timeout)
    elif command == "rate_limit":
        if len(args) != 2:
            raise click.UsageError("usage: control rate_limit TASK_NAME RATE (e.g. 10/s, 100/m; 0 to remove)")
        replies = ctl.rate_limit(args[0], args[1], destination=dest, reply=True, timeout=timeout)
    elif command == "revoke":
        replies = ctl.revoke(list(args), destination=dest, reply=True, timeout=timeout)
    else:
        replies = ctl.ping(destination=dest, timeout=timeout)
    click.echo(json.dumps(replies, indent=2, default=repr))


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
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("-f", "--logfile")
@click.option("--log-json", is_flag=True, help="One JSON object per log line.")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, basic_auth: Optional[str], token: Optional[str],
              max_tasks: int, sample_interval: float, refresh: float, rescan_interval: float, loglevel: str,
              logfile: Optional[str], log_json: bool) -> None:
    """Serve the web dashboard (workers, tasks, queues, failures, dead letters) and cluster /metrics."""
    app = _app(ctx)
    setup_logging(loglevel, logfile, log_json)
    from .dashboard import serve
    pairs = [p.strip() for p in basic_auth.split(",") if p.strip()] if basic_auth else None
    try:
        server = serve(app, host=host, port=port, basic_auth=pairs, token=token, max_tasks=max_tasks,
                       sample_interval=sample_interval, refresh=refresh, rescan_interval=rescan_interval)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    log = logging.getLogger("minique.dashboard")
    if not pairs and not token:
        log.warning("no --basic-auth or --token: anyone who can reach %s can retry, revoke and replay tasks",
                    server.url)
    from .config import mask_url
    log.info("dashboard listening on %s (broker %s)", server.url, mask_url(str(app.conf.broker_url)))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
