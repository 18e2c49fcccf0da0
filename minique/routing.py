"""Routing: which queue and priority a task's message goes to (task_routes, Celery's forms)."""
from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Dict, List, Optional

from .keys import check_queue

Route = Dict[str, Any]


def _as_route(value: Any) -> Optional[Route]:
    """A router's answer as a route; a queue name it gives is checked (keys.check_queue)."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"queue": check_queue(value, "task_routes")}
    if isinstance(value, dict):
        if value.get("queue") is not None:
            check_queue(value["queue"], "task_routes")
        return dict(value)
    raise TypeError(f"a route must be a queue name or a dict of options, not {type(value).__name__}")


def _dict_router(table: Dict[Any, Any]) -> Callable[..., Optional[Route]]:
    for value in table.values():  # a bad queue name is refused when the table is read, not at a send
        _as_route(value)
    exact = {k: v for k, v in table.items() if isinstance(k, str) and not any(c in k for c in "*?[")}
    patterns = [(k, v) for k, v in table.items() if k not in exact]

    def route(name: str, *args: Any, **kwargs: Any) -> Optional[Route]:
        if name in exact:
            return _as_route(exact[name])
        for pattern, value in patterns:
            if isinstance(pattern, re.Pattern) and pattern.match(name) or \
                    isinstance(pattern, str) and fnmatch.fnmatchcase(name, pattern):
                return _as_route(value)
        return None
    route.static = True  # type: ignore[attr-defined]
    return route


def build_routers(task_routes: Any) -> List[Callable[..., Optional[Route]]]:
    """task_routes as a list of callables (name, args, kwargs, options, task=None) -> route or None."""
    if not task_routes:
        return []
    items = task_routes if isinstance(task_routes, (list, tuple)) else [task_routes]
    routers = []
    for item in items:
        if isinstance(item, dict):
            routers.append(_dict_router(item))
        elif callable(item):
            routers.append(item)
        elif isinstance(item, str):
            from importlib import import_module
            module, _, attr = item.rpartition(".")
            routers.append(getattr(import_module(module), attr))
        else:
            raise TypeError(f"task_routes entries must be dicts or callables, not {type(item).__name__}")
    return routers


def route(routers: List[Callable[..., Optional[Route]]], name: str, args: Any, kwargs: Any,
          options: Dict[str, Any], task: Any = None) -> Optional[Route]:
    """The first router's answer for this task, or None."""
    for router in routers:
        try:
            found = router(name, args, kwargs, options, task=task)
        except TypeError:
            found = router(name, args, kwargs, options)
        found = _as_route(found)
        if found:
            return found
    return None


def is_static(routers: List[Callable[..., Optional[Route]]]) -> bool:
    """True when every router depends on the task name only, so answers can be cached."""
    return all(getattr(r, "static", False) for r in routers)
