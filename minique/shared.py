"""What code written without an app in hand uses (Celery's names): `shared_task`, `current_app`, and
the `Proxy` they are.

`@shared_task` registers the function in every app when that app is finalized (those that exist
and those created later; a finalized app at once) and returns a proxy to the task of that name in
the *current* app, so library and Django-app code needs no import of the project's app.
`current_app` is a proxy to the current app: the app `-A` named in a worker, else the app created
last; with no app at all, a default app (as Celery's).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Concatenate, Literal, Optional, ParamSpec, TypeVar, cast, overload

from . import context

if TYPE_CHECKING:
    from .task import Task

P = ParamSpec("P")
R = TypeVar("R")

_default_lock = threading.Lock()


class Proxy:
    """Stands for the object `factory()` returns, looked up again on every use (Celery's local.Proxy)."""

    __slots__ = ("_Proxy__factory", "__dict__")

    def __init__(self, factory: Callable[[], Any], name: Optional[str] = None, doc: Optional[str] = None):
        object.__setattr__(self, "_Proxy__factory", factory)
        if name is not None:
            object.__setattr__(self, "__custom_name__", name)
        if doc is not None:
            object.__setattr__(self, "__doc__", doc)

    def _get_current_object(self) -> Any:
        return self.__factory()

    @property  # type: ignore[misc]  # (read-only here) isinstance(proxy, Task) holds, as in Celery
    def __class__(self) -> Any:
        return self._get_current_object().__class__

    @property
    def __name__(self) -> str:
        try:
            return cast(str, self.__custom_name__)
        except AttributeError:
            return cast(str, self._get_current_object().__name__)

    def __getattr__(self, name: str) -> Any:
        if name == "__members__":
            return dir(self._get_current_object())
        return getattr(self._get_current_object(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get_current_object(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._get_current_object(), name)

    def __dir__(self) -> Any:
        return dir(self._get_current_object())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get_current_object()(*args, **kwargs)

    def __repr__(self) -> str:
        try:
            return repr(self._get_current_object())
        except Exception:  # noqa: BLE001 - a repr must not fail (e.g. before an app exists)
            return f"<{type(self).__name__} unbound>"

    def __bool__(self) -> bool:
        try:
            return bool(self._get_current_object())
        except RuntimeError:
            return False

    def __eq__(self, other: object) -> bool:
        return bool(self._get_current_object() == other)

    def __ne__(self, other: object) -> bool:
        return bool(self._get_current_object() != other)

    def __hash__(self) -> int:
        return hash(self._get_current_object())

    def __reduce__(self) -> Any:
        return self._get_current_object().__reduce__()


def get_current_app() -> Any:
    """The current app; a default app (default settings) is made if none exists yet, as Celery's."""
    app = context._current_app
    if app is None:
        with _default_lock:
            app = context._current_app
            if app is None:
                from .app import Minique
                app = Minique("default")
    return app


current_app: Any = Proxy(get_current_app, name="current_app")


@overload
def shared_task(fun: Callable[P, R], /) -> Task[P, R]: ...
@overload
def shared_task(*, bind: Literal[True], **options: Any) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]:
    ...
@overload
def shared_task(*, bind: Literal[False] = ..., **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...
@overload
def shared_task(*, bind: bool, **options: Any) -> Callable[[Callable[..., R]], Task[..., R]]: ...


def shared_task(*args: Any, **options: Any) -> Any:
    """Decorator, as `@app.task` (the same options) for code without an app: the task registers in
    every app when it is finalized (`app.finalize()`; the worker and beat finalize at start), and the
    name refers to the current app's task of that name."""
    def declare(fun: Callable[..., Any]) -> Any:
        name = options.get("name")

        def register(app: Any) -> None:
            task_name = name or app.gen_task_name(fun)
            if task_name not in app.tasks:  # (an app's own task of that name wins, as in Celery)
                app.task(**dict(options))(fun)

        context.connect_on_app_finalize(register)
        for app in context.apps():
            if app.finalized:
                register(app)

        def task_of_current_app() -> Any:
            app = get_current_app()
            if not app.finalized:
                app.finalize()
            return app.tasks[name or app.gen_task_name(fun)]
        return Proxy(task_of_current_app, name=getattr(fun, "__name__", None), doc=fun.__doc__)

    if len(args) == 1 and callable(args[0]) and not options:
        return declare(args[0])
    if args:
        raise TypeError("use @shared_task or @shared_task(**options)")
    return declare
