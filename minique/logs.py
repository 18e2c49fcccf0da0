"""Logging set-up for the worker and beat: one line per event, plain or JSON."""
from __future__ import annotations

import json
import logging
import sys
from typing import Optional

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
    level = parse_level(loglevel)
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(PLAIN))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
