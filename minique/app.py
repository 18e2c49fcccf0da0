"""The application: settings, the task registry, connections, and sending messages."""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import (
    Any,
    Callable,
    Concatenate,
    Coroutine,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Literal,
    Optional,
    ParamSpec,
    Tuple,
    TypeVar,
    cast,
    overload,
)

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as RedisRetry

from . import context, message as message_mod, routing, serializers, signals
from .canvas import Call, Signature, register_builtins
from .config import PendingSettings, Settings, import_object
from .exceptions import ConfigurationError
from .keys import check_queue
from .result import AsyncResult, GroupResult
from .signals import after_task_publish, before_task_publish
from .signing import sign
from .task import Task

SEND_CHUNK = 1000  # messages per round trip on the bulk path (send_calls)
_VARYING = ("task_id", "group_index")  # what may differ between calls that share a Template

# apply_async options that become message fields as they are
_DIRECT_FIELDS = ("retries", "root_id", "parent_id", "group_id", "group_index", "chord", "chain",
                  "time_limit", "soft_time_limit", "headers", "ignore_result")


# the headers before_task_publish receivers see that describe the message itself (Celery's protocol 2
# names); whatever else they hold or a receiver adds travels as the message's own headers
_MESSAGE_HEADERS = frozenset({"lang", "task", "id", "root_id", "parent_id", "group", "group_index", "retries",
                              "eta", "expires", "timelimit", "ignore_result", "shadow", "origin"})


def _iso(epoch: Optional[float]) -> Optional[str]:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _epoch(value: Any, now: float, naive_tz: Any = timezone.utc) -> Optional[float]:
    """A datetime, or seconds from now, as epoch seconds.

    A naive datetime is in `naive_tz` (Celery: the app's timezone, UTC by default), not in this
    host's local time as datetime.timestamp() would take it; None means local time."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None and naive_tz is not None:
            value = value.replace(tzinfo=naive_tz)
        return cast("float | None", value.timestamp())
    if isinstance(value, timedelta):
        return now + value.total_seconds()
    return now + float(value)


def _task_class(cls: Any) -> type:
    """`base=` / `task_cls`: a Task subclass, or its "module:Class" (or "module.Class") name."""
    if isinstance(cls, str):
        cls = import_object(cls)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigurationError(f"a task class must be a subclass of minique.Task, not {cls!r}")
    return cls


P = ParamSpec("P")
R = TypeVar("R")


class Minique:
    """A minique application: `app = Minique("proj", broker=..., backend=..., include=[...])`."""

    def __init__(self, main: Optional[str] = None, broker: Optional[str] = None, backend: Optional[str] = None,
                 include: Iterable[str] = (), config_source: Any = None, task_cls: Any = None,
                 namespace: Optional[str] = None, set_as_current: bool = True, fixups: Optional[Iterable[Any]] = None,
                 **settings: Any):
        self.main = main
        self.task_cls: Any = task_cls or Task  # the class of @app.task's tasks: a Task subclass or "module:Class"
        self.namespace = namespace  # the config source's prefix ("CELERY": CELERY_BROKER_URL is broker_url)
        # Celery's app signals (sender: this app). on_configure, on_after_configure (source=conf): when the
        # configuration is first read; on_after_finalize: when the task registry is complete (finalize());
        # on_after_fork: in every child process forked after this app exists.
        self.on_configure = signals.Signal("app.on_configure")
        self.on_after_configure = signals.Signal("app.on_after_configure", {"source"})
        self.on_after_finalize = signals.Signal("app.on_after_finalize")
        self.on_after_fork = signals.Signal("app.on_after_fork")
        self.configured = False
        self._configuring = False
        self.finalized = False
        self._config_source: Any = None
        self._pending_periodic: List[Tuple[Any, ...]] = []
        self._setup_lock = threading.RLock()
        self.conf: Settings = PendingSettings()  # the first read configures the app (see _configure)
        object.__setattr__(self.conf, "_configure", self._configure)
        if config_source is not None:
            self.config_from_object(config_source)
        if broker:
            self.conf.broker_url = broker
        if backend:
            self.conf.result_backend = backend
        if include:
            self.conf.include = tuple(include)
        self.conf.update(settings)
        self.tasks: Dict[str, Task[..., Any]] = {}
        self._defaults_cache: Dict[Tuple[Any, ...], Any] = {}
        self._routers_at: Tuple[int, List[Any]] = (-1, [])
        context.register_app(self)
        if set_as_current:
            context.set_current_app(self)
        register_builtins(self)
        # fix-ups for frameworks (Django when DJANGO_SETTINGS_MODULE is set), as Celery's; kept alive here
        from .contrib.django.fixup import fixup as django_fixup
        self._fixups = [f for f in ((import_object(fix) if isinstance(fix, str) else fix)(self) for fix in fixups)
                        if f is not None] if fixups is not None else [
            f for f in [django_fixup(self, custom_task_cls=task_cls is not None)] if f is not None]

    def set_current(self) -> None:
        """Make this the current app (what `current_app` and shared tasks use)."""
        context.set_current_app(self)

    # --- configuration ------------------------------------------------------------------------------
    def _configure(self) -> None:
        """The first read of `conf` runs this (Celery's lazy configuration): on_configure, the config
        source read, the periodic tasks added before, on_after_configure."""
        with self._setup_lock:  # (another thread reading meanwhile waits here)
            if self.configured or self._configuring:  # (a receiver reading conf: as it is so far)
                return
            self._configuring = True
            try:
                self.on_configure.send(sender=self)
                if self._config_source is not None:
                    self.conf.from_object(*self._config_source)
                self.configured = True
                pending, self._pending_periodic = self._pending_periodic, []
                for args in pending:
                    self._add_periodic_task(*args)
            finally:
                self._configuring = False
                conf = self.conf
                if isinstance(conf, PendingSettings):
                    conf.done()
            self.on_after_configure.send(sender=self, source=self.conf)

    def config_from_object(self, obj: Any, silent: bool = False, force: bool = False,
                           namespace: Optional[str] = None) -> None:
        """Use `obj` as the config source: a module name, "module:attribute" (e.g. "django.conf:settings"),
        a module, an object or a mapping, with Celery's setting names (with `namespace="CELERY"`: the
        CELERY_-prefixed names only, CELERY_BROKER_URL as broker_url). As in Celery it is read when the
        configuration is first used (`force=True`: now); settings written explicitly win over it."""
        self.namespace = namespace or self.namespace
        if isinstance(obj, str):  # an unknown module is an error here, where it is named
            try:
                obj = import_object(obj)
            except (ImportError, AttributeError) as exc:
                if silent:
                    return
                raise ConfigurationError(f"cannot import config module {obj!r}: {exc}") from exc
        self._config_source = (obj, self.namespace)
        if force or self.configured:
            try:
                self.conf.from_object(obj, self.namespace)
            except ConfigurationError:
                if not silent:
                    raise
            self._reset()

    def config_from_envvar(self, name: str, silent: bool = False, force: bool = False) -> None:
        """config_from_object(the module named by the environment variable `name`)."""
        if not os.environ.get(name):
            if silent:
                return
            raise ConfigurationError(f"environment variable {name} is not set (it should name a config module)")
        self.config_from_object(os.environ[name], silent=silent, force=force)

    def _reset(self) -> None:
        """Forget what was derived from settings (connections, routes) so new settings apply."""
        for attr in ("broker_client", "backend_client", "broker", "backend", "accept", "aio"):
            self.__dict__.pop(attr, None)
        self._defaults_cache.clear()

    def import_modules(self) -> None:
        """What a worker and beat do at start (Celery's import_default_modules, then finalize): send
        `signals.import_modules` (autodiscover_tasks, Django's setup), import `include` and `imports`
        so that their tasks register, and finalize the app."""
        for _, response in signals.import_modules.send(sender=self):
            if isinstance(response, Exception):  # (logging may not be set up yet: not only logged)
                raise response
        for name in tuple(self.conf.include or ()) + tuple(self.conf.imports or ()):
            importlib.import_module(name)
        self.finalize()

    def finalize(self, auto: bool = False) -> None:
        """Complete the task registry (once): the shared tasks (`shared_task`) register here, then
        on_after_finalize is sent. A worker and beat finalize their app when they start."""
        with self._setup_lock:
            if self.finalized:
                return
            self.finalized = True
            context.announce_app_finalized(self)
            self.on_after_finalize.send(sender=self)

    def autodiscover_tasks(self, packages: Any = None, related_name: Optional[str] = "tasks",
                           force: bool = False) -> None:
        """Import `<package>.<related_name>` for each package (a list, or a callable giving one), as
        Celery: when the worker or beat starts (`import_modules`), or now with `force=True`. Without
        packages, those of the fix-ups: with Django, every installed app."""
        if force:
            self._autodiscover(packages, related_name)
            return
        signals.import_modules.connect(functools.partial(self._autodiscover, packages, related_name),
                                       sender=self, weak=False)

    def _autodiscover(self, packages: Any, related_name: Optional[str], **_signal: Any) -> None:
        from .discovery import autodiscover
        if callable(packages):
            packages = packages()
        if not packages:
            packages = [name for fixup in self._fixups if hasattr(fixup, "autodiscover_tasks")
                        for name in fixup.autodiscover_tasks()]
        autodiscover(packages, related_name)

    # --- tasks --------------------------------------------------------------------------------------
    # For type checkers, `@app.task` on `def add(x: int, y: int) -> int` gives a `Task[[int, int], int]`;
    # with bind=True the function's first parameter (the task itself) is not among the task's parameters;
    # on an `async def` returning int, a `Task[..., int]` too (its result is what the coroutine returns).
    @overload
    def task(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fun: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, *, bind: Literal[True], **options: Any) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]:
        ...
    @overload
    def task(self, *, bind: Literal[False] = ..., **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...
    @overload
    def task(self, *, bind: bool, **options: Any) -> Callable[[Callable[..., R]], Task[..., R]]: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """Decorator: `@app.task` or `@app.task(name=..., bind=True, queue=..., ...)`."""
        def register(fun: Callable[..., Any]) -> Task[..., Any]:
            if inspect.isasyncgenfunction(fun):
                raise ConfigurationError(
                    f"{getattr(fun, '__qualname__', fun)!r} is an async generator: a task returns one value "
                    f"(an async def task may; a generator's items would never be read)")
            name = options.pop("name", None) or self.gen_task_name(fun)
            bind = options.pop("bind", False)
            cls = _task_class(options.pop("base", None) or self.task_cls)
            task: Task[..., Any] = cls(self, fun, name, bind=bind, **options)
            self.tasks[name] = task
            return task
        if len(args) == 1 and callable(args[0]) and not options:
            return register(args[0])
        if args:
            raise TypeError("use @app.task or @app.task(**options)")
        return register

    def gen_task_name(self, fun: Callable[..., Any]) -> str:
        module = fun.__module__
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{fun.__name__}"

    # --- connections (lazy: nothing connects until used) --------------------------------------------
    def _connect(self, url: str, socket_timeout: Optional[float] = None, retries: int = 8) -> Any:
        """A client for `url`: one server (redis-py's URL forms, redis+embedded://), a Redis Cluster
        (redis+cluster://) or a Sentinel group (sentinel://, its master found through the sentinels);
        see minique/urls.py and docs/scaling.md."""
        from .connections import make_client
        from .embedded import resolve_url
        from .pipe import FAILOVER_TIMEOUT
        target = self._deployment(url)
        timeouts: Dict[str, Any] = {"socket_timeout": socket_timeout or self.conf.redis_socket_timeout,
                                    "socket_connect_timeout": self.conf.broker_connection_timeout}
        retry = (RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries)
                 if self.conf.broker_connection_retry else None)
        return make_client(target, resolve_url(url) if target.kind == "redis" else url, timeouts, retry,
                           FAILOVER_TIMEOUT if retries else 0.0)

    def _deployment(self, url: str) -> Any:
        """The `urls.Target` `url` names, with its transport options: the broker's, or for the result store's
        own URL its own (master_name falling back to the broker's). Shared by the sync and asyncio clients."""
        from . import urls
        result = url == self.conf.result_url and url != self.conf.broker_url
        options = dict(self.conf.broker_transport_options or {})
        if result:
            options = {"master_name": options.get("master_name"),
                       **dict(self.conf.result_backend_transport_options or {})}
        return urls.parse(url, options, "result_backend" if result else "broker_url")

    @cached_property
    def broker_client(self) -> "redis.Redis":
        return cast("redis.Redis", self._connect(self.conf.broker_url))

    @cached_property
    def backend_client(self) -> "redis.Redis":
        if self.conf.result_url == self.conf.broker_url:
            return self.broker_client
        return cast("redis.Redis", self._connect(self.conf.result_url))

    @cached_property
    def broker(self) -> Any:
        from .brokers import make_broker
        return make_broker(self.broker_client, dict(self.conf.broker_transport_options or {}),
                           self.conf.task_max_deliveries)

    @cached_property
    def backend(self) -> Any:
        from .backend import ResultBackend
        accept = self.conf.result_accept_content or self.conf.accept_content
        return ResultBackend(self.backend_client, self.conf.result_expires,
                             serializers.canonical(self.conf.result_serializer),
                             frozenset(serializers.canonical(c) for c in accept),
                             self.conf.task_exception_max_size, self.conf.task_traceback_max_size)

    @cached_property
    def accept(self) -> FrozenSet[Any]:
        return self.conf.accept

    @cached_property
    def aio(self) -> Any:
        """The asyncio client's connections, one set per event loop (minique/aio.py)."""
        from .aio import Loops
        return Loops(self)

    @cached_property
    def control(self) -> Any:
        from .control import Control
        return Control(self)

    # --- sending ------------------------------------------------------------------------------------
    @property
    def _routers(self) -> List[Any]:
        """task_routes as callables, rebuilt when settings change."""
        version = self.conf.version
        if self._routers_at[0] != version:
            self._routers_at = (version, routing.build_routers(self.conf.task_routes))
        return self._routers_at[1]

    def _defaults(self, name: str) -> Dict[str, Any]:
        """What a message of task `name` gets unless apply_async says otherwise: queue, priority,
        serializer, ignore_result, expires. Cached until a setting changes (the send path is hot)."""
        key = (name, self.conf.version, len(self.tasks))
        found = self._defaults_cache.get(key)
        if found is not None:
            return cast("dict[str, Any]", found)
        conf, task = self.conf, self.tasks.get(name)
        static = routing.is_static(self._routers)
        route = (routing.route(self._routers, name, (), {}, {}, task) or {}) if static else {}
        priority = route.get("priority")
        if priority is None and task is not None:
            priority = task.priority
        if priority is None:
            priority = conf.task_default_priority or 0
        ignore = task.ignore_result if task is not None and task.ignore_result is not None else conf.task_ignore_result
        if route.get("queue"):
            queue = route["queue"]  # (checked by routing)
        elif task is not None and task.queue:
            queue = check_queue(task.queue, f"the queue option of task {name!r}")
        else:
            queue = check_queue(conf.task_default_queue, "task_default_queue")
        found = {"task": task, "dynamic_routes": not static and bool(self._routers), "queue": queue,
                 "priority": priority, "ignore_result": bool(ignore),
                 "serializer": serializers.canonical((task and task.serializer) or conf.task_serializer),
                 "expires": task.expires if task is not None else None, "security_key": conf.security_key}
        if len(self._defaults_cache) > 10_000:
            self._defaults_cache.clear()
        self._defaults_cache[key] = found
        return found

    def build_message(self, name: str, args: Any = None, kwargs: Optional[Dict[str, Any]] = None,
                      options: Optional[Dict[str, Any]] = None) -> message_mod.Message:
        """The message `apply_async(args, kwargs, **options)` sends, with routing and defaults applied."""
        options = options or {}
        d = self._defaults(name)
        queue, priority = d["queue"], d["priority"]
        if d["dynamic_routes"]:  # routers that look at the arguments
            route = routing.route(self._routers, name, args, kwargs, options, d["task"]) or {}
            queue = route.get("queue") or queue
            priority = route.get("priority", priority)
        if options.get("queue"):
            queue = check_queue(options["queue"], "apply_async(queue=...)")
        if options.get("priority") is not None:
            priority = options["priority"]
        if priority.__class__ is not int or not 0 <= priority <= 9:
            raise ValueError(f"priority must be an int from 0 to 9 (higher runs first), not {priority!r}")
        serializer = serializers.canonical(options["serializer"]) if options.get("serializer") else d["serializer"]
        fields: Dict[str, Any] = {"queue": queue, "priority": priority}
        if d["ignore_result"]:
            fields["ignore_result"] = True
        if options:
            self._apply_options(fields, options, d)
        parent = context.current()
        if parent is not None and not parent.called_directly and "parent_id" not in fields:
            fields["parent_id"] = parent.id
            fields["root_id"] = parent.root_id or parent.id
        else:
            parent = None  # (not sent by a running task: no child to note)
        task_id = options.get("task_id") or message_mod.new_id()
        if "root_id" not in fields:
            fields["root_id"] = task_id
        try:
            msg = message_mod.make(name, args, kwargs, serializer, task_id=task_id, **fields)
        except TypeError as exc:
            raise TypeError(f"cannot serialize arguments of {name} with {serializer}: {exc}") from exc
        if parent is not None:  # AsyncResult.children of the running task
            context.add_child(parent, task_id, fields.get("group_id"))
        if d["security_key"]:
            msg = sign(msg, d["security_key"])
        return msg

    def _apply_options(self, fields: Dict[str, Any], options: Dict[str, Any], defaults: Dict[str, Any]) -> None:
        """apply_async options that change the message: times, ids, canvas links, limits, headers."""
        now = time.time()
        eta = options.get("eta")
        if eta is not None:
            fields["eta"] = _epoch(eta, now, self._naive_tz()) if isinstance(eta, datetime) else float(eta)
        elif options.get("countdown"):
            fields["eta"] = now + float(options["countdown"])
        expires = options.get("expires", defaults["expires"])
        if expires is not None:
            fields["expires"] = _epoch(expires, now, self._naive_tz() if isinstance(expires, datetime) else None)
        for key in _DIRECT_FIELDS:
            value = options.get(key)
            if value is not None:
                fields[key] = value
        for option in ("rate_limit_key", "concurrency_key"):  # limits counted per this key (worker/)
            value = options.get(option)
            if value is not None:
                fields["headers"] = {**(fields.get("headers") or {}), option: str(value)}
        for option, field in (("link", "links"), ("link_error", "errbacks")):
            sigs = options.get(option)
            if sigs:
                fields[field] = [dict(s) for s in (sigs if isinstance(sigs, (list, tuple)) else [sigs])]

    def _naive_tz(self) -> Any:
        """The zone of naive datetimes given as eta/expires: `timezone`, else UTC (enable_utc), else local."""
        if self.conf.timezone:
            from zoneinfo import ZoneInfo
            return ZoneInfo(self.conf.timezone) if isinstance(self.conf.timezone, str) else self.conf.timezone
        return timezone.utc if self.conf.enable_utc else None

    def publish(self, pipe: Any, msg: message_mod.Message) -> None:
        """Add `msg` to `pipe` (None: send it now): into its queue, or the delayed set for a future ETA."""
        headers = None
        if before_task_publish.receivers:
            msg, headers = self._before_publish(msg)
        data = msg.encode()
        if msg.eta is not None and msg.eta > time.time():
            self.broker.send_later(self.broker_client if pipe is None else pipe, msg.queue, msg.priority, data,
                                   msg.eta)
        elif pipe is None:
            self.broker.send_now(msg.queue, msg.priority, data)
        else:
            self.broker.send(pipe, msg.queue, msg.priority, data)
        if after_task_publish.receivers:
            self._after_publish(msg, headers)

    def _publish_headers(self, msg: message_mod.Message) -> Dict[str, Any]:
        """The `headers` publish signals get: the message's own headers, then Celery's names for its fields."""
        headers = dict(msg.headers or {})
        headers.update(lang="py", task=msg.task, id=msg.id, root_id=msg.root_id, parent_id=msg.parent_id,
                       group=msg.group_id, group_index=msg.group_index, retries=msg.retries, eta=_iso(msg.eta),
                       expires=_iso(msg.expires), timelimit=[msg.time_limit, msg.soft_time_limit],
                       ignore_result=msg.ignore_result)
        return headers

    def _publish_body(self, msg: message_mod.Message) -> Any:
        """Celery's body: (args, kwargs, embed), for the publish signals' receivers to read."""
        try:
            args, kwargs = msg.args_kwargs({msg.content_type})
        except Exception:  # noqa: BLE001 - only to show it
            args, kwargs = [], {}
        return (args, kwargs, {"callbacks": msg.links, "errbacks": msg.errbacks, "chain": msg.chain,
                               "chord": msg.chord})

    def _before_publish(self, msg: message_mod.Message) -> Tuple[message_mod.Message, Dict[str, Any]]:
        """before_task_publish (sender: the task name); headers its receivers add travel with the
        message (`self.request.headers`, and as request attributes), re-signed with security_key."""
        headers = self._publish_headers(msg)
        before_task_publish.send(sender=msg.task, body=self._publish_body(msg), exchange="", routing_key=msg.queue,
                                 headers=headers, properties={"correlation_id": msg.id, "priority": msg.priority,
                                                              "content_type": msg.content_type},
                                 declare=[], retry_policy=None)
        own = {key: value for key, value in headers.items() if key not in _MESSAGE_HEADERS}
        if own != (msg.headers or {}):
            msg = msg._replace(headers=own or None)
            if self.conf.security_key:
                msg = sign(msg, self.conf.security_key)
        return msg, headers

    def _after_publish(self, msg: message_mod.Message, headers: Optional[Dict[str, Any]]) -> None:
        after_task_publish.send(sender=msg.task, body=self._publish_body(msg), exchange="", routing_key=msg.queue,
                                headers=headers if headers is not None else self._publish_headers(msg))

    def send_calls(self, calls: List[Call], pipe: Any = None) -> None:
        """Publish planned calls (canvas `plan()`): into the caller's pipeline `pipe`, or now: one
        message alone, many in pipelined chunks where those alike share one encoded Template."""
        if pipe is not None:
            for name, a, k, o in calls:
                self.publish(pipe, self.build_message(name, a, k, o))
            return
        if len(calls) == 1:
            name, a, k, o = calls[0]
            self.publish(None, self.build_message(name, a, k, o))
            return
        now = time.time()
        items = []
        last: Optional[Tuple[Any, ...]] = None  # (name, options less the varying ones, Template, queue, priority, eta)
        # publish signals see each message: then each is built alone (a signed message is signed whole)
        signalled = bool(before_task_publish.receivers or after_task_publish.receivers)
        templates = not self.conf.security_key and not signalled
        sent: List[Tuple[Any, ...]] = []  # (message, headers) for after_task_publish once their chunk is sent
        parent = context.current()  # sent by a running task: its children (build_message notes the others)
        if parent is not None and parent.called_directly:
            parent = None
        for name, a, k, o in calls:
            shape = {key: v for key, v in o.items() if key not in _VARYING}
            if last is not None and last[0] == name and last[1] == shape:  # like the previous: only id, args, index
                template, queue, priority, eta = last[2:]
                try:
                    body = message_mod.encode_args(a, k, template.content_type)
                except TypeError as exc:
                    raise TypeError(f"cannot serialize arguments of {name}: {exc}") from exc
                task_id = o.get("task_id") or message_mod.new_id()
                data = template.encode(task_id, body, o.get("group_index"))
                if parent is not None and o.get("parent_id") is None:
                    context.add_child(parent, task_id, o.get("group_id"))
            else:
                msg = self.build_message(name, a, k, o)
                if signalled:
                    headers = None
                    if before_task_publish.receivers:
                        msg, headers = self._before_publish(msg)
                    if after_task_publish.receivers:
                        sent.append((msg, headers))
                queue, priority, data = msg.queue, msg.priority, msg.encode()
                eta = msg.eta if msg.eta is not None and msg.eta > now else None
                if templates and not self._defaults(name)["dynamic_routes"]:
                    last = (name, shape, message_mod.Template(msg), queue, priority, eta)
            items.append((queue, priority, data, eta))
            if len(items) == SEND_CHUNK:  # workers start on the first messages while the rest are built
                self.broker.send_many(items)
                items = []
                for msg, headers in sent:
                    self._after_publish(msg, headers)
                sent = []
        if items:
            self.broker.send_many(items)
        for msg, headers in sent:
            self._after_publish(msg, headers)

    def send_task(self, name: str, args: Any = None, kwargs: Optional[Dict[str, Any]] = None,
                  **options: Any) -> AsyncResult[Any]:
        """Send a task by name (it need not be importable here); returns an AsyncResult."""
        task = self.tasks.get(name)
        if (task is not None and task.unique) or options.get("unique_key") is not None:
            return self._send_unique(name, args, kwargs, options, task)
        msg = self.build_message(name, args, kwargs, options)
        self.publish(None, msg)
        return AsyncResult(msg.id, app=self, task_name=name)

    def _send_unique(self, name: str, args: Any, kwargs: Optional[Dict[str, Any]], options: Dict[str, Any],
                     task: Any) -> AsyncResult[Any]:
        """send_task for a unique task: claim its key, then send; the holder's result if it is taken."""
        from . import unique
        options, key, task_id, ttl = self._unique_options(name, args, kwargs, options, task)
        holder = unique.claim(self.broker_client, key, task_id, ttl)
        if holder is not None:
            unique.count_duplicate(self.broker_client, name)
            return AsyncResult(holder, app=self, task_name=name)
        try:
            self.publish(None, self.build_message(name, args, kwargs, options))
        except BaseException:
            unique.release_now(self.broker_client, key, task_id)  # not sent: the next send may claim it
            raise
        return AsyncResult(task_id, app=self, task_name=name)

    def _unique_options(self, name: str, args: Any, kwargs: Optional[Dict[str, Any]], options: Dict[str, Any],
                        task: Any) -> Tuple[Dict[str, Any], str, str, float]:
        """A unique send's (options with its id and headers, key, task id, seconds the key holds);
        shared by `send_task` and `asend_task`."""
        from . import unique
        options = dict(options)
        key = options.pop("unique_key", None)
        key = unique.key_for(name, args, kwargs) if key is None else str(key)
        ttl = options.pop("unique_for", None) or (task.unique_for if task is not None else None) or unique.DEFAULT_FOR
        until = options.pop("unique_until", None) or (task.unique_until if task is not None else None) or "finished"
        if until not in unique.MODES:
            raise ValueError(f"unique_until must be one of {unique.MODES}, not {until!r}")
        task_id = options.get("task_id") or message_mod.new_id()
        options["task_id"] = task_id
        headers = {**(options.get("headers") or {}), unique.HEADER: key}
        if until == "started":
            headers[unique.UNTIL_HEADER] = "started"
        options["headers"] = headers
        return options, key, task_id, float(ttl)

    async def asend_task(self, name: str, args: Any = None, kwargs: Optional[Dict[str, Any]] = None,
                         **options: Any) -> Any:
        """`send_task` for asyncio code: sends without blocking the event loop (minique/aio.py)."""
        return await self.aio.send_task(name, args, kwargs, options)

    def send_many(self, name: str, calls: Iterable[Tuple[Any, Optional[Dict[str, Any]]]], **options: Any) -> List[Any]:
        """Send many calls of one task, pipelined (a round trip per 1,000); returns their AsyncResults.

        The options are applied once: each call only gets its own id and encoded arguments."""
        calls = list(calls)
        planned = [(name, args, kwargs, {**options, "task_id": task_id})
                   for (args, kwargs), task_id in zip(calls, message_mod.new_ids(len(calls)))]
        self.send_calls(planned)
        return [AsyncResult(o["task_id"], app=self, task_name=name) for *_, o in planned]

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any:
        return AsyncResult(task_id, app=self, **kwargs)

    def GroupResult(self, group_id: str, results: List[Any]) -> Any:
        return GroupResult(group_id, results, app=self)

    def signature(self, name: str, args: Any = None, kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> Any:
        return Signature(name, args, kwargs, options, app=self)

    # --- beat ---------------------------------------------------------------------------------------
    def add_periodic_task(self, schedule: Any, sig: Any, args: Any = (), kwargs: Optional[Dict[str, Any]] = None,
                          name: Optional[str] = None, **opts: Any) -> str:
        """Add a beat entry, as Celery's add_periodic_task (the same as a `beat_schedule` entry); returns
        its key (`name`, else the signature's repr). Before the app is configured it waits, as in
        Celery, and is added when the configuration is read (so it outlives a config source)."""
        if not isinstance(sig, Signature):  # a task (or anything with a task name)
            sig = Signature(getattr(sig, "name", sig), args, kwargs, app=self)
        elif args or kwargs:
            sig = sig.clone(args, kwargs)
        key = name or repr(sig)
        entry = {"task": sig["task"], "schedule": schedule, "args": tuple(sig.get("args") or ()),
                 "kwargs": dict(sig.get("kwargs") or {}), "options": {**dict(sig.get("options") or {}), **opts}}
        if self.configured:
            self._add_periodic_task(key, entry, name)
        else:
            self._pending_periodic.append((key, entry, name))
        return key

    def _add_periodic_task(self, key: str, entry: Dict[str, Any], name: Optional[str]) -> None:
        schedule_conf = dict(self.conf.beat_schedule or {})
        if name is None and key in schedule_conf:
            import logging
            logging.getLogger("minique.app").warning(
                "Periodic task key=%r shadowed a previous unnamed periodic task; give add_periodic_task a name",
                key)
        schedule_conf[key] = entry
        self.conf.beat_schedule = schedule_conf

    # --- the command line -----------------------------------------------------------------------------
    def start(self, argv: Optional[List[str]] = None) -> None:
        """Run the `minique` command with this app (Celery's app.start), e.g. `if __name__ == "__main__":
        app.start()` in proj/celery.py, then `python -m proj.celery worker`."""
        import sys

        from .cli import main
        module = sys.modules.get("__main__")
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.name not in sys.modules and any(v is self for v in vars(module).values()):
            # run as `python -m proj.celery`: `from .celery import app` in proj/tasks.py must find this
            # module (and app), not import the file a second time as another app
            sys.modules[spec.name] = module  # type: ignore[assignment]
        main.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="minique",
                  obj={"app_object": self})

    def close(self) -> None:
        for attr in ("broker_client", "backend_client"):
            client = self.__dict__.get(attr)
            if client is not None:
                client.close()

    async def aclose(self) -> None:
        """Close the asyncio client's connections of the running event loop (they also close when
        the loop shuts down, e.g. at the end of `asyncio.run`)."""
        aio = self.__dict__.get("aio")
        if aio is not None:
            await aio.aclose()

    def __repr__(self) -> str:
        return f"<Minique {self.main or '__main__'}>"

