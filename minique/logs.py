"""Logging set-up for the worker and beat: one line per event, plain or JSON."""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, Dict, Hashable, Optional

PLAIN = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL")  # Celery's -l names (WARN also works)
TASK_FIELDS = ("task_id", "task_name", "event", "queue", "runtime")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "pid": record.process, "message": record.getMessage()}
        for key in TASK_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def parse_level(loglevel: object) -> int:
    """A level name (any case) as logging's number; ValueError naming the choices for anything else."""
    name = str(loglevel).strip().upper()
    if name not in LEVELS and name != "WARN":
        raise ValueError(f"unknown log level {loglevel!r} (one of {', '.join(LEVELS)})")
    return int(getattr(logging, name))


def configure(loglevel: str = "INFO", logfile: Optional[str] = None, json_format: bool = False) -> None:
    """Set up the root logger, as Celery does: unless a `setup_logging` receiver takes it over (then
    minique configures nothing); then `after_setup_logger` and `after_setup_task_logger` may adjust."""
    from .signals import after_setup_logger, after_setup_task_logger, setup_logging
    level = parse_level(loglevel)
    fmt = "json" if json_format else PLAIN
    if setup_logging.receivers and setup_logging.send(sender=None, loglevel=level, logfile=logfile, format=fmt,
                                                      colorize=False):
        return
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(PLAIN))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if after_setup_logger.receivers:
        after_setup_logger.send(sender=None, logger=root, loglevel=level, logfile=logfile, format=fmt, colorize=False)
    if after_setup_task_logger.receivers:
        after_setup_task_logger.send(sender=None, logger=logging.getLogger("minique.task"), loglevel=level,
                                     logfile=logfile, format=fmt, colorize=False)


class Once:
    """Logs each kind of trouble once, then at most every `every` seconds with how often it recurred:
    a loop that meets the same bad record or the same error on every turn leaves one report, not a
    flood. Thread-safe; kinds are whatever the caller names them (a string or a tuple)."""

    def __init__(self, logger: logging.Logger, every: float = 300.0, limit: int = 1000):
        self.logger = logger
        self.every = every
        self.limit = limit  # kinds remembered (bounded: kinds may come from the data)
        self._next: Dict[Hashable, float] = {}
        self._quiet: Dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: Hashable, msg: str, *args: Any, level: int = logging.ERROR,
                 exc_info: bool = False) -> bool:
        """Log `msg % args` if this kind has not been logged lately; returns whether it was."""
        now = time.monotonic()
        with self._lock:
            due = self._next.get(kind)
            if due is not None and now < due:
                self._quiet[kind] = self._quiet.get(kind, 0) + 1
                return False
            if due is None and len(self._next) >= self.limit:
                self._next.clear()
                self._quiet.clear()
            self._next[kind] = now + self.every
            quiet = self._quiet.pop(kind, 0)
        if quiet:
            msg, args = f"{msg} (%d more since the last report)", (*args, quiet)
        elif due is None:
            msg = f"{msg} (reported once, then every {self.every:.0f}s while it lasts)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True
