"""Settings with Celery's names, meanings and defaults; unknown names are warned about.

Also the checks a worker runs on its settings at start (`check_worker_settings`) and `mask_url`,
which every place that prints or logs a Redis URL goes through.
"""
from __future__ import annotations

import importlib
import os
import re
import warnings
from typing import Any, Dict, FrozenSet, Iterable, Iterator, Mapping, Optional, Tuple, Union, cast
from urllib.parse import urlsplit, urlunsplit

DEFAULTS: Dict[str, Any] = {
    # Connections
    "broker_url": "redis://localhost:6379/0",
    "result_backend": None,                      # None: the broker's Redis
    "broker_transport_options": {},              # visibility_timeout, queue_type ("streams"|"lists"), max_deliveries;
                                                 # master_name, sentinel_kwargs, min_other_sentinels (sentinel://)
    "result_backend_transport_options": {},      # master_name, sentinel_kwargs, min_other_sentinels of result_backend
    "broker_connection_retry": True,
    "broker_connection_retry_on_startup": True,  # a worker started before Redis waits for it (False: exit)
    "broker_connection_max_retries": 100,        # start-up attempts before a worker gives up (0/None: forever)
    "broker_connection_timeout": 4.0,            # also: how long a one-shot CLI command tries to reach Redis
    "redis_socket_timeout": 120.0,
    # Serialization
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": None,               # None: accept_content
    # Time
    "timezone": None,
    "enable_utc": True,
    # Routing
    "task_routes": None,
    "task_default_queue": "default",             # Celery says "celery"; see README
    "task_default_priority": 0,
    "task_queue_max_priority": 9,
    "task_create_missing_queues": True,
    # Task execution
    "task_acks_late": False,
    "task_acks_on_failure_or_timeout": True,
    "task_reject_on_worker_lost": False,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_ignore_result": False,
    "task_store_errors_even_if_ignored": False,
    "task_track_started": False,
    "task_always_eager": False,
    "task_eager_propagates": False,
    "task_annotations": None,
    "task_default_rate_limit": None,
    "worker_rate_limit_scope": "cluster",        # "cluster": a rate limit holds across workers; "worker": Celery's
    "task_max_message_size": 16 * 1024 * 1024,   # bytes; larger messages are dead-lettered
    "task_max_deliveries": 10,                   # redeliveries past this go to the dead letters
    "task_send_sent_event": False,
    # Results
    "result_expires": 86400,
    "result_extended": False,
    # Worker
    "worker_concurrency": None,                  # None: the CPU count
    "worker_prefetch_multiplier": 4,
    "worker_early_ack_window": 0.005,            # seconds an early ack may wait to share a write (0: never)
    "worker_max_tasks_per_child": None,
    "worker_max_memory_per_child": None,         # KiB
    "worker_pool": "prefork",                    # prefork, threads, solo, asyncio
    "worker_async_concurrency": 100,             # -P asyncio: tasks at once in each pool process
    "worker_send_task_events": True,
    "worker_shutdown_timeout": None,             # seconds a warm shutdown waits; None: as long as tasks run
    "worker_hijack_root_logger": True,
    "worker_log_format": None,
    "worker_log_json": False,
    "worker_metrics_port": 0,
    "worker_metrics_host": "127.0.0.1",          # address /metrics binds ("0.0.0.0": every interface)
    "worker_health_port": 0,                     # /livez and /readyz on a port of their own (0: off)
    "worker_health_host": "0.0.0.0",             # the probes come from the orchestrator, not the loopback
    "worker_heartbeat_interval": 2.0,
    "worker_state_db": None,                     # accepted and ignored: revokes live in Redis (minique:revoked)
    "worker_autoscale": None,                    # "MAX,MIN" (or (max, min)): as --autoscale
    "worker_autoscale_keepalive": 30.0,          # seconds the pool must have been larger than needed to shrink
    # seconds a revoke is kept past the last moment its task could start: its ETA or expiry when the revoke
    # finds it waiting in a delayed set, else the revoke itself (Celery: CELERY_WORKER_REVOKE_EXPIRES, 3 h)
    "worker_revoke_expires": 7 * 86400,
    # Beat
    "beat_schedule": {},
    "beat_max_loop_interval": 300.0,
    "beat_lease_seconds": 5.0,                   # leader lease; a standby takes over within this
    "beat_missed_policy": "once",                # "once" | "skip" | "all"
    # Security (docs/security.md)
    "security_key": None,                        # bytes/str: HMAC-sign messages, reject unsigned ones
    "security_message_max_age": None,            # seconds: replay protection (off: None); see docs/security.md
    "task_exception_max_size": 4096,             # characters of an exception's message kept (results, events, logs)
    "task_traceback_max_size": 8192,             # characters of a traceback kept in a result (its end)
    "task_argsrepr_max_size": 512,               # characters of an argument repr in events and inspect
    # Include
    "imports": (),
    "include": (),
}

_ENV_OVERRIDES = {"broker_url": "MINIQUE_BROKER_URL", "result_backend": "MINIQUE_RESULT_BACKEND",
                  "worker_metrics_host": "MINIQUE_METRICS_HOST"}


class Settings(Mapping[str, Any]):
    """`app.conf`: attribute and item access over DEFAULTS plus what the user set.

    Two layers over the defaults: a config source (`from_object`) and explicit writes
    (`conf.x = ...`, `update`, the app's keyword arguments), which win over the source whenever
    they were made, as Celery's `changes` do."""

    __slots__ = ("_data", "version", "_written", "_configure")

    def __init__(self, **values: Any):
        object.__setattr__(self, "_data", {})      # the source's values overlaid by the writes
        object.__setattr__(self, "_written", set())  # keys written explicitly
        object.__setattr__(self, "_configure", None)  # PendingSettings: what the first read runs
        object.__setattr__(self, "version", 0)  # bumped on every change, so derived values can be cached
        self.update(values)

    # Mapping protocol
    def __getitem__(self, key: str) -> Any:
        if key in _ENV_OVERRIDES and os.environ.get(_ENV_OVERRIDES[key]):
            return os.environ[_ENV_OVERRIDES[key]]
        if key in self._data:
            return self._data[key]
        if key in DEFAULTS:
            return DEFAULTS[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(set(DEFAULTS) | set(self._data))

    def __len__(self) -> int:
        return len(set(DEFAULTS) | set(self._data))

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no setting named {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in DEFAULTS and not key.isupper():
            warnings.warn(f"unknown setting {key!r} (kept, but minique does not use it)", stacklevel=3)
        self._data[key] = value
        self._written.add(key)
        object.__setattr__(self, "version", self.version + 1)

    def update(self, values: Union[Mapping[str, Any], Iterable[Tuple[str, Any]]] = (), **more: Any) -> None:
        for key, value in dict(values, **more).items():
            self[key] = value

    def changes(self) -> Dict[str, Any]:
        return dict(self._data)

    def from_object(self, obj: Any, namespace: Optional[str] = None) -> None:
        """Make `obj` the config source: a module name, "module:attribute", a module, an object or a
        mapping (see `read_source`). It replaces the previous source; explicit writes still win."""
        values = read_source(obj, namespace)
        for key in values:
            if key not in DEFAULTS and not key.isupper():
                warnings.warn(f"unknown setting {key!r} (kept, but minique does not use it)", stacklevel=3)
        data = {key: value for key, value in self._data.items() if key in self._written}
        data.update((key, value) for key, value in values.items() if key not in self._written)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "version", self.version + 1)

    # Derived values used in several places
    @property
    def visibility_timeout(self) -> float:
        return float(self["broker_transport_options"].get("visibility_timeout", 3600))

    @property
    def result_url(self) -> str:
        return cast("str", self["result_backend"] or self["broker_url"])

    @property
    def accept(self) -> FrozenSet[Any]:
        from .serializers import canonical
        return frozenset(canonical(c) for c in self["accept_content"])


class PendingSettings(Settings):
    """An app's `conf` before it is configured: writes are kept, and the first read configures the
    app (Celery's lazy configuration: `on_configure`, the config source, `on_after_configure`).
    Configuring turns the object into a plain Settings, so reads cost nothing extra afterwards."""

    __slots__ = ()

    def _configured(self) -> None:
        configure = self._configure  # the app's: under its lock; ends with `done()`
        if configure is not None:
            configure()

    def done(self) -> None:
        """Configured: from now on a plain Settings (same layout: only the behaviour changes)."""
        object.__setattr__(self, "_configure", None)
        object.__setattr__(self, "__class__", Settings)

    def __getitem__(self, key: str) -> Any:
        self._configured()
        return Settings.__getitem__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._configured()
        return Settings.__iter__(self)

    def __len__(self) -> int:
        self._configured()
        return Settings.__len__(self)

    def changes(self) -> Dict[str, Any]:
        self._configured()
        return Settings.changes(self)


def import_object(path: str) -> Any:
    """"module", "module:attribute" or "module.attribute" (Celery's rules for config sources and
    task classes): the module, else the attribute of the module before the last dot."""
    if ":" in path:
        module, _, attr = path.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    try:
        return importlib.import_module(path)
    except ImportError as first:
        module, _, attr = path.rpartition(".")
        if not module:
            raise
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            raise first from None


_OLD_NAMES = ("CELERY_", "CELERYD_", "CELERYBEAT_", "BROKER_")  # Celery 3's setting names


def read_source(obj: Any, namespace: Optional[str] = None) -> Dict[str, Any]:
    """The settings a config source gives, by their setting names.

    `obj` is a module name, "module:attribute" (e.g. "django.conf:settings"), a module, any object
    (its attributes) or a mapping. Without `namespace`, its lowercase public names are read; with
    `namespace="CELERY"`, only the names starting with "CELERY_", the prefix cut and lowercased
    (`CELERY_BROKER_URL` is `broker_url`), as Celery's `config_from_object(..., namespace=...)`."""
    if isinstance(obj, str):
        try:
            obj = import_object(obj)
        except (ImportError, AttributeError) as exc:
            from .exceptions import ConfigurationError
            raise ConfigurationError(f"cannot import config module {obj!r}: {exc}") from exc
    wrapped = getattr(obj, "_wrapped", None)  # Django's LazySettings: the settings it stands for
    if wrapped is not None and type(obj).__name__ == "LazySettings":
        getattr(obj, "DEBUG", None)  # (loads Django's settings)
        obj = obj._wrapped
    items = list(obj.items()) if isinstance(obj, Mapping) else [
        (name, getattr(obj, name)) for name in dir(obj) if not name.startswith("_")]
    out: Dict[str, Any] = {}
    if namespace:
        prefix = namespace.rstrip("_") + "_"
        for name, value in items:
            if isinstance(name, str) and name.startswith(prefix) and len(name) > len(prefix):
                out[name[len(prefix):].lower()] = value
        return out
    old = sorted(name for name, _ in items if isinstance(name, str) and name.isupper() and name.startswith(_OLD_NAMES))
    if old:  # Celery 3's names: not read, and silently ignoring them would send a worker to the defaults
        warnings.warn(f"config source has upper-case setting names that are not read: {', '.join(old[:5])}"
                      f"{' ...' if len(old) > 5 else ''}; use the lower-case names (broker_url, result_backend, "
                      f"...), or config_from_object(..., namespace='CELERY') for CELERY_-prefixed names",
                      stacklevel=4)
    for name, value in items:
        if not isinstance(name, str) or not name.islower():
            continue
        if callable(value) and not isinstance(value, type) and type(value).__module__ in ("builtins", "types"):
            continue  # helper functions and imported modules in a config module are not settings
        if type(value).__name__ == "module":
            continue
        out[name] = value
    return out


# --- printing URLs --------------------------------------------------------------------------------

_SECRET_PARAM = re.compile(r"(^|&)(password|pass|pwd)=[^&]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`url` fit to print: the password (`scheme://user:PASSWORD@host`, or `?password=`) as `***`.

    A URL without a password comes back unchanged; so does text that is not a URL."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a broken IPv6 host: mask whatever sits between // and the last @
        return re.sub(r"(//[^/?#:@]*:)[^/?#]*@", r"\1***@", url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:***@{hostport}" if at and ":" in userinfo else parts.netloc
    query = _SECRET_PARAM.sub(r"\1\2=***", parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# --- a worker's settings, checked when it starts --------------------------------------------------

def _number(name: str, flag: Optional[str], value: Any, integer: bool, minimum: float, strict: bool,
            what: str) -> Any:
    """`value` as a number of the right kind within its range, or a ConfigurationError naming the setting."""
    number: Any = None
    if isinstance(value, str) and value.strip():  # a config file or environment may give "4"
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            pass
    elif not isinstance(value, bool) and isinstance(value, int if integer else (int, float)):
        number = value
    if number is None or number != number or number < minimum or (strict and number == minimum):
        from .exceptions import ConfigurationError
        raise ConfigurationError(f"{name}{f' ({flag})' if flag else ''} must be {what}, not {value!r}")
    return number


def check_worker_settings(concurrency: Any, prefetch_multiplier: Any, conf: Mapping[str, Any],
                          max_tasks_per_child: Any = None, max_memory_per_child: Any = None) -> Tuple[int, int]:
    """What a worker cannot run with, as one ConfigurationError with Celery's setting names.

    `concurrency`, `prefetch_multiplier` (and the two per-child limits) are the worker's own values
    (its command line, else `conf`); the time limits are read from `conf`. Returns (concurrency,
    prefetch multiplier) as ints: concurrency 0 or None means the CPU count, as in Celery."""
    size = 0 if concurrency is None else _number(
        "worker_concurrency", "-c/--concurrency", concurrency, True, 0, False,
        "a number of pool processes >= 1 (0 or unset: the CPU count)")
    prefetch = _number("worker_prefetch_multiplier", "--prefetch-multiplier", prefetch_multiplier, True, 0, False,
                       "a number of messages >= 0")
    for name, flag, value, what in (
            ("worker_max_tasks_per_child", "--max-tasks-per-child", max_tasks_per_child, "a number of tasks >= 1"),
            ("worker_max_memory_per_child", "--max-memory-per-child", max_memory_per_child, "KiB >= 1")):
        if value is not None:
            _number(name, flag, value, True, 1, False, f"{what} (unset: no limit)")
    for name, flag in (("task_time_limit", "--time-limit"), ("task_soft_time_limit", "--soft-time-limit")):
        if conf[name] is not None:
            _number(name, flag, conf[name], False, 0, True, "seconds > 0 (None: no limit)")
    for name in ("broker_connection_timeout", "worker_heartbeat_interval"):
        _number(name, None, conf[name], False, 0, True, "seconds > 0")
    if conf["worker_rate_limit_scope"] not in ("cluster", "worker"):
        from .exceptions import ConfigurationError
        raise ConfigurationError(f"worker_rate_limit_scope must be \"cluster\" (a limit holds across workers) or "
                                 f"\"worker\" (Celery's: per worker), not {conf['worker_rate_limit_scope']!r}")
    retries = conf["broker_connection_max_retries"]
    if retries is not None:
        _number("broker_connection_max_retries", None, retries, True, 0, False, "a number >= 0 (0 or None: forever)")
    return (size or os.cpu_count() or 1), prefetch
