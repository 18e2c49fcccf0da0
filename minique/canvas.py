"""Canvas: signatures and the workflows built from them (group, chain, chord), Celery's API.

Applying a canvas is planned first, purely: `plan()` turns it into the list of
(task name, args, kwargs, options) messages to send now, with every task id fixed
in advance (`plan_with_result()` also gives the result handles, so the caller has
them at once). Planning leaves the canvas as it was: the ids it fixes go on copies,
so planning an unfrozen canvas twice gives two sets of fresh ids; `freeze()` (as
Celery's) is what sets ids on the canvas itself. What runs later travels
inside those messages: a chain's remaining steps ride on the running step
(`chain` field); a chord's callback rides on every header member (`chord`
field), and the worker that completes the join sends it. Workers re-plan those
follow-ups with this same module, so client and worker agree by construction.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, Iterable, List, NamedTuple, Optional, Tuple, Type, TypeVar, cast

from . import context
from .message import new_id
from .result import AsyncResult, GroupResult

# (task name, args, kwargs, options) of one message to send, as app.build_message takes them
Call = Tuple[str, Any, Optional[Dict[str, Any]], Dict[str, Any]]

# Options that address one message, not a whole canvas: they go to one step only.
_PER_MESSAGE = ("task_id", "chain", "chord", "group_id", "group_index", "link", "link_error")


def _app(app: Any) -> Any:
    return app if app is not None else context.current_app()


R_co = TypeVar("R_co", covariant=True)


class Signature(Dict[str, Any], Generic[R_co]):
    """A task call not yet made: name, args, kwargs, options. A dict, so it travels in messages.

    For type checkers `add.s(1, 2)` is a `Signature[int]`: its `delay()` gives an `AsyncResult[int]`
    (a chain, group or chord is untyped)."""

    subtask_type: Optional[str] = None

    def __init__(self, task: Any = None, args: Any = None, kwargs: Optional[Dict[str, Any]] = None,
                 options: Optional[Dict[str, Any]] = None, subtask_type: Optional[str] = None, immutable: bool = False,
                 app: Any = None, **extra: Any):
        if isinstance(task, dict):
            init = dict(task)
        else:
            name = task if isinstance(task, str) or task is None else task.name
            init = {"task": name, "args": tuple(args or ()), "kwargs": dict(kwargs or {}),
                    "options": dict(options or {}), "subtask_type": subtask_type or self.subtask_type,
                    "immutable": immutable}
        init.update(extra)
        init["args"] = tuple(init.get("args") or ())
        init["kwargs"] = dict(init.get("kwargs") or {})
        init["options"] = dict(init.get("options") or {})
        init.setdefault("immutable", False)
        init.setdefault("subtask_type", self.subtask_type)
        super().__init__(init)
        self._app = app if app is not None else (
            getattr(task, "app", None) if not isinstance(task, (str, dict)) else None)

    # dict-backed attributes
    name = property(lambda self: self["task"])
    task = property(lambda self: self["task"])
    args = property(lambda self: self["args"])
    kwargs = property(lambda self: self["kwargs"])
    options = property(lambda self: self["options"])
    immutable = property(lambda self: self["immutable"])
    id = property(lambda self: self["options"].get("task_id"))

    @property
    def app(self) -> Any:
        return _app(self._app)

    @property
    def type(self) -> Any:
        return self.app.tasks[self.name]

    # --- building -----------------------------------------------------------------------------------
    def clone(self, args: Any = None, kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> "Signature[Any]":
        sig = from_dict(self, self._app, copy=True)
        if args or kwargs or options:
            a, k, o = sig._merge(args, kwargs, options)
            sig["args"], sig["kwargs"], sig["options"] = a, k, o
        return sig

    def _merge(self, args: Any, kwargs: Optional[Dict[str, Any]],
               options: Dict[str, Any]) -> Tuple[Tuple[Any, ...], Dict[str, Any], Dict[str, Any]]:
        """Partial application: new args go first, kwargs merge; immutable signatures take none."""
        opts = {**self.options, **{k: v for k, v in options.items() if v is not None}}
        if self.immutable:
            return tuple(self.args), dict(self.kwargs), opts
        return tuple(args or ()) + tuple(self.args), {**self.kwargs, **(kwargs or {})}, opts

    def set(self, immutable: Optional[bool] = None, **options: Any) -> "Signature[Any]":
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: "Signature[Any]") -> "Signature[Any]":
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: "Signature[Any]") -> "Signature[Any]":
        self.options.setdefault("link_error", []).append(errback)
        return errback

    on_error = link_error

    def freeze(self, _id: Optional[str] = None, **options: Any) -> Any:
        """Fix the task id now (so results can be handed out before sending)."""
        if _id:
            self.options["task_id"] = _id
        self.options.setdefault("task_id", new_id())
        return AsyncResult(self.id, app=self.app, task_name=self.name)

    def __or__(self, other: Any) -> Any:
        if isinstance(other, (Signature, dict)):
            return chain(self, other, app=self._app)
        return NotImplemented

    # --- applying -----------------------------------------------------------------------------------
    def plan(self, args: Any = (), kwargs: Optional[Dict[str, Any]] = None,
             options: Optional[Dict[str, Any]] = None) -> List[Call]:
        """The messages to send to apply this signature with extra partial args (pure: the signature
        is left as it was; ids it has no frozen value for are fresh each time)."""
        return self._plan(args, kwargs, options or {}, False)[0]

    def plan_with_result(self, args: Any = (), kwargs: Optional[Dict[str, Any]] = None,
                         options: Optional[Dict[str, Any]] = None) -> Tuple[List[Call], Any]:
        """plan(), and the result handle of what it planned (with the ids it chose)."""
        return self._plan(args, kwargs, options or {}, True)

    def _plan(self, args: Any, kwargs: Optional[Dict[str, Any]], options: Dict[str, Any],
              with_result: bool) -> Tuple[List[Call], Any]:
        """(calls, the result handle if `with_result`, else None): what each kind of signature defines."""
        a, k, o = self._merge(args, kwargs, options)
        for key in ("link", "link_error"):
            if o.get(key):
                o[key] = [dict(s) for s in (o[key] if isinstance(o[key], (list, tuple)) else [o[key]])]
        o.setdefault("task_id", self.options.get("task_id") or new_id())
        return [(self.name, a, k, o)], (AsyncResult(o["task_id"], app=self._app, task_name=self.name)
                                         if with_result else None)

    def result(self) -> Any:
        """The result handle of a frozen signature."""
        return AsyncResult(self.id, app=self.app, task_name=self.name)

    def apply_async(self, args: Any = (), kwargs: Optional[Dict[str, Any]] = None,
                    **options: Any) -> "AsyncResult[R_co]":
        if self.app.conf.task_always_eager:
            return cast("AsyncResult[R_co]", self.apply(args, kwargs, **options))
        calls, result = self.plan_with_result(args, kwargs, options)
        self.app.send_calls(calls)
        return cast("AsyncResult[R_co]", result)

    def delay(self, *args: Any, **kwargs: Any) -> "AsyncResult[R_co]":
        return self.apply_async(args, kwargs)

    async def aapply_async(self, args: Any = (), kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> Any:
        """`apply_async` for asyncio code: the same plan, sent without blocking the event loop."""
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        calls, result = self.plan_with_result(args, kwargs, options)
        await self.app.aio.send_calls(calls)
        return result

    async def adelay(self, *args: Any, **kwargs: Any) -> Any:
        return await self.aapply_async(args, kwargs)

    def apply(self, args: Any = (), kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> Any:
        """Run here and now (eager), with the signature's options: its frozen id, link, link_error."""
        a, k, o = self._merge(args, kwargs, options)
        return self.type.apply(a, k, **o)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here and now, as Celery does for a plain signature."""
        a, k, _ = self._merge(args, kwargs, {})
        return self.type(*a, **k)

    def __repr__(self) -> str:
        args = ", ".join([repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()])
        return f"{self.name}({args}){'!' if self.immutable else ''}"

    def __reduce__(self) -> Any:
        return (from_dict, (dict(self),))


def _link_last(steps: List[Signature[Any]], own: Dict[str, Any]) -> None:
    """A chain's own link and link_error belong to its last step (copies, in `steps`): its result is
    the chain's, and a failure before it abandons it, which runs its errbacks (abandoned())."""
    last = steps[-1]
    for key in ("link", "link_error"):
        sigs = own.get(key)
        if sigs:
            last.options[key] = list(last.options.get(key) or ()) + (list(sigs) if isinstance(sigs, (list, tuple))
                                                                      else [sigs])


def _steps_of(tasks: Iterable[Any], app: Any) -> List[Signature[Any]]:
    out: List[Signature[Any]] = []
    for t in tasks:
        sig = from_dict(t, app) if not isinstance(t, Signature) else t
        if isinstance(sig, chain):
            out.extend(sig.tasks)
        else:
            out.append(sig)
    return out


class chain(Signature[Any]):
    """Run signatures one after another, each getting the previous result as its first argument."""

    subtask_type = "chain"

    def __init__(self, *tasks: Any, app: Any = None, **options: Any):
        if len(tasks) == 1 and isinstance(tasks[0], dict) and tasks[0].get("subtask_type") == "chain":
            init = dict(tasks[0])
            steps = init.get("kwargs", {}).get("tasks", [])
            options = {**init.get("options", {}), **options}
        else:
            if len(tasks) == 1 and not isinstance(tasks[0], dict):
                tasks = tuple(tasks[0])
            steps = tasks
        steps = _steps_of(steps, app)
        super().__init__("minique.chain", (), {"tasks": steps}, options, subtask_type="chain", app=app)

    @property
    def tasks(self) -> List[Signature[Any]]:
        return cast("list[Signature[Any]]", self.kwargs["tasks"])

    def __or__(self, other: Any) -> Any:
        if isinstance(other, (Signature, dict)):
            return chain(*self.tasks, other, app=self._app)
        return NotImplemented

    def freeze(self, _id: Optional[str] = None, **options: Any) -> Any:
        for t in self.tasks[:-1]:
            t.freeze()
        return self.tasks[-1].freeze(_id)

    def _plan(self, args: Any, kwargs: Optional[Dict[str, Any]], options: Dict[str, Any],
              with_result: bool) -> Tuple[List[Call], Any]:
        if not self.tasks:
            return [], None
        options = {**self.options, **options}
        shared = {k: v for k, v in options.items() if k not in _PER_MESSAGE}
        own = {k: v for k, v in options.items() if k in _PER_MESSAGE}
        # the steps travel with their ids fixed and the chain's options: copies get them, ours stay as they are
        steps = [from_dict(s, self._app, copy=True) for s in self.tasks]
        for step in steps:
            step.options.update(shared)
            if not isinstance(step, (group, chord)):
                step.options.setdefault("task_id", new_id())
            else:
                step.freeze()
        if len(steps) > 1:  # (a one-step chain's callbacks go with its only message, below)
            _link_last(steps, own)
        # What the whole chain owes to its context (its own id, chord membership) belongs to the last step.
        last = steps[-1]
        if own.get("task_id") and not isinstance(last, (group, chord)):
            last.options["task_id"] = own["task_id"]
        for key in ("chord", "group_id", "group_index", "chain"):
            if key in own:
                last.options[key] = own[key]
        first, rest = steps[0], steps[1:]
        if isinstance(first, group) and rest:
            calls = chord(first, chain(*rest, app=self._app) if len(rest) > 1 else rest[0],
                          app=self._app).plan(args, kwargs, {})
        elif isinstance(first, chord) and rest:
            body = chain(first.body, *rest, app=self._app)
            calls = chord(first.header, body, app=self._app, **first.options).plan(args, kwargs, {})
        else:
            opts: Dict[str, Any] = {}
            if rest:
                opts["chain"] = [dict(s) for s in rest] + list(first.options.get("chain") or [])
            for key in ("link", "link_error"):
                if key in own and len(steps) == 1:
                    opts[key] = own[key]
            calls = first.plan(args, kwargs, opts)
        return calls, _chain_result(steps) if with_result else None

    def result(self) -> Any:
        """The last step's result; `.parent` walks back through the steps."""
        return _chain_result(self.tasks)

    def apply(self, args: Any = (), kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> Any:
        """Run the steps here and now, each given the previous result (a group's as a list), as the
        chain sent would: a step that fails ends it, and the rest fail with its exception (the
        errbacks of the step that would have ended the chain run). The chain's link and link_error
        go to its last step, as when it is sent."""
        options = {**self.options, **options}
        own = {k: options.pop(k) for k in ("link", "link_error", "task_id") if options.get(k)}
        options = {k: v for k, v in options.items() if k not in _PER_MESSAGE}
        steps = [from_dict(s, self._app, copy=True) for s in self.tasks]
        if not steps:
            return None
        _link_last(steps, own)
        for step in steps:  # every step gets its id now, as when the chain is sent (freeze)
            if isinstance(step, (group, chord)):
                step.freeze()
            else:
                step.options.setdefault("task_id", new_id())
        if own.get("task_id") and not isinstance(steps[-1], (group, chord)):
            steps[-1].options["task_id"] = own["task_id"]
        res: Any = None
        for i, step in enumerate(steps):
            if i:
                failed = _eager_failure(res)
                if failed is not None:
                    return _eager_abandon(self.app, steps[i:], failed, res)
            value = (args, kwargs) if i == 0 else ((res.get(),), None)
            step_res = step.apply(*value, **options)
            if res is not None and getattr(step_res, "parent", None) is None:
                step_res.parent = res
            res = step_res
        return res

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)


class group(Signature[Any]):
    """Run signatures in parallel; the result is a GroupResult with their results in order."""

    subtask_type = "group"

    def __init__(self, *tasks: Any, app: Any = None, **options: Any):
        if len(tasks) == 1 and isinstance(tasks[0], dict) and tasks[0].get("subtask_type") == "group":
            init = dict(tasks[0])
            members = init.get("kwargs", {}).get("tasks", [])
            options = {**init.get("options", {}), **options}
        else:
            if len(tasks) == 1 and not isinstance(tasks[0], dict):
                tasks = tuple(tasks[0])
            members = tasks
        members = [from_dict(t, app) if not isinstance(t, Signature) else t for t in members]
        super().__init__("minique.group", (), {"tasks": members}, options, subtask_type="group", app=app)

    @property
    def tasks(self) -> List[Signature[Any]]:
        return cast("list[Signature[Any]]", self.kwargs["tasks"])

    def __or__(self, other: Any) -> Any:
        if isinstance(other, group):
            return chain(self, other, app=self._app)
        if isinstance(other, (Signature, dict)):
            return chord(self, other, app=self._app)
        return NotImplemented

    def freeze(self, _id: Optional[str] = None, **options: Any) -> Any:
        if _id:
            self.options["task_id"] = _id
        self.options.setdefault("task_id", new_id())
        for t in self.tasks:
            t.freeze()
        return self.result()

    def _plan(self, args: Any, kwargs: Optional[Dict[str, Any]], options: Dict[str, Any],
              with_result: bool) -> Tuple[List[Call], Any]:
        options = {**self.options, **options}
        group_id = options.pop("task_id", None) or new_id()
        shared = {k: v for k, v in options.items() if k not in _PER_MESSAGE}
        calls: List[Call] = []
        results = []
        for i, member in enumerate(self.tasks):
            member_calls, result = member._plan(args, kwargs, {**shared, "group_id": group_id, "group_index": i},
                                                with_result)
            calls.extend(member_calls)
            results.append(result)
        return calls, GroupResult(group_id, results, app=self.app) if with_result else None

    def result(self) -> Any:
        return GroupResult(self.id, [t.result() for t in self.tasks], app=self.app)

    def apply(self, args: Any = (), kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> Any:
        """Run every member here and now: a GroupResult (with the group's id) of their EagerResults."""
        options = {**self.options, **options}
        group_id = options.pop("task_id", None) or new_id()
        shared = {k: v for k, v in options.items() if k not in _PER_MESSAGE}
        return GroupResult(group_id, [t.apply(args, kwargs, **shared) for t in self.tasks], app=self.app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"


class chord(Signature[Any]):
    """A group (the header) whose results, as one list in order, go to a callback (the body)."""

    subtask_type = "chord"

    def __init__(self, header: Any = None, body: Any = None, app: Any = None, **options: Any):
        if isinstance(header, dict) and header.get("subtask_type") == "chord":
            init = dict(header)
            header, body = init["kwargs"]["header"], init["kwargs"].get("body")
            options = {**init.get("options", {}), **options}
        hdr = header if isinstance(header, group) else group(header if not isinstance(header, dict) else [header],
                                                             app=app)
        if isinstance(header, dict) and not isinstance(header, Signature) and header.get("subtask_type") == "group":
            hdr = group(header, app=app)
        body = from_dict(body, app) if body is not None and not isinstance(body, Signature) else body
        super().__init__("minique.chord", (), {"header": hdr, "body": body}, options, subtask_type="chord", app=app)

    @property
    def tasks(self) -> List[Signature[Any]]:
        return cast("list[Signature[Any]]", self.kwargs["header"].tasks)

    @property
    def header(self) -> "group":
        return cast("group", self.kwargs["header"])

    @property
    def body(self) -> Optional[Signature[Any]]:
        return cast("Signature[Any] | None", self.kwargs["body"])

    def __call__(self, body: Any = None, **options: Any) -> Any:
        if body is not None:
            self.kwargs["body"] = body if isinstance(body, Signature) else from_dict(body, self._app)
        return self.apply_async(**options)

    def _body(self) -> Signature[Any]:
        body = self.body
        if body is None:
            raise ValueError("a chord needs a body (callback): chord(header)(callback)")
        return body

    def freeze(self, _id: Optional[str] = None, **options: Any) -> Any:
        self.header.freeze()
        return self._body().freeze(_id)

    def _plan(self, args: Any, kwargs: Optional[Dict[str, Any]], options: Dict[str, Any],
              with_result: bool) -> Tuple[List[Call], Any]:
        if self.body is None:
            raise ValueError("a chord needs a body (callback): chord(header)(callback)")
        options = {**self.options, **options}
        own = {k: v for k, v in options.items() if k in _PER_MESSAGE}
        shared = {k: v for k, v in options.items() if k not in _PER_MESSAGE}
        body = from_dict(self.body, self._app, copy=True)  # the callback travels frozen: a copy, ours stays as it is
        body.freeze(own.get("task_id"))
        for key in ("chord", "group_id", "group_index", "chain"):
            if key in own:  # the chord as a whole is a step of something larger: its body carries that on
                target = body.tasks[-1] if isinstance(body, chain) else body
                target.options[key] = own[key]
        header = self.header
        chord_id = header.options.get("task_id") or new_id()
        size = len(header.tasks)
        calls: List[Call] = []
        results = []
        if size == 0:  # nothing to wait for: the callback gets an empty list now
            calls = body.plan(([],), None, shared)
        else:
            cb = dict(body)
            for i, member in enumerate(header.tasks):
                member_calls, result = member._plan(args, kwargs, {**shared, "group_id": chord_id, "group_index": i,
                                                                   "chord": {"id": chord_id, "n": size, "cb": cb}},
                                                    with_result)
                calls.extend(member_calls)
                results.append(result)
        return calls, _chord_result(body, GroupResult(chord_id, results, app=self.app)) if with_result else None

    def result(self) -> Any:
        return _chord_result(self._body(), self.header.result())

    def apply(self, args: Any = (), kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> Any:
        """Run the header here and now, then the body with the list of its results (in order), as
        the chord sent would. A member that fails fails the body with ChordError ("Dependency <id>
        raised ...") and the body's errbacks run; `.parent` of the result is the header's GroupResult."""
        from .exceptions import ChordError
        options = {**self.options, **options}
        own = {k: options.pop(k) for k in _PER_MESSAGE if k in options}
        body = from_dict(self._body(), self._app, copy=True)
        body.freeze(own.get("task_id"))  # (its id, as when the chord is sent)
        header = self.header.apply(args, kwargs, **options)
        for member in header.results:
            failed = _eager_failure(member)
            if failed is not None:
                error = ChordError(f"Dependency {member.id} raised {failed[0]!r}")
                res = _eager_abandon(self.app, [body], (error, None), header)
                break
        else:
            res = body.apply(([m.get() for m in header.results],), None, **options)
        target = res
        while getattr(target, "parent", None) is not None:
            target = target.parent
        if target is not header:
            target.parent = header
        return res

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"


_TYPES: Dict[str, Type[Signature[Any]]] = {"chain": chain, "group": group, "chord": chord}


# --- eager: a canvas run here and now behaves as the canvas sent ------------------------------------------

def _as_list(value: Any) -> List[Any]:
    if not value:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _eager_failure(res: Any) -> Optional[Tuple[BaseException, Optional[str]]]:
    """(exception, traceback) of an eager result that did not succeed (a group's first failed member),
    else None."""
    if isinstance(res, GroupResult):
        for member in res.results:
            failed = _eager_failure(member)
            if failed is not None:
                return failed
        return None
    meta = res._meta() if isinstance(res, AsyncResult) else None
    if meta is None or meta["status"] == "SUCCESS":
        return None
    value = meta["result"]
    return (value if isinstance(value, BaseException) else RuntimeError(repr(value))), meta.get("traceback")


def _eager_abandon(app: Any, rest: List[Signature[Any]], failed: Tuple[BaseException, Optional[str]],
                   parent: Any) -> Any:
    """The steps in `rest` never run (what came before them failed): each task in them fails with
    the exception, and the errbacks of the tasks that would have ended them run (given their ids), as
    canvas.abandoned() says of a canvas sent. Returns the last step's result (FAILURE)."""
    from .result import EagerResult
    exc, tb = failed
    res: Any = parent
    for step in rest:
        ids = _task_ids(step) or [new_id()]
        down = abandoned(app, step)
        for call in down.errbacks:
            _apply_planned(app, call)
        result: Any = EagerResult(ids[-1], exc, "FAILURE", tb, app=app)
        result.parent = res
        res = result
    return res


def _apply_planned(app: Any, call: Call) -> Any:
    """Run a planned call here and now, with the rest of its chain (the `chain` option) after it."""
    name, a, k, o = call
    o = dict(o)
    rest = o.pop("chain", None)
    sig: Signature[Any] = Signature(name, a, k, o, app=app)
    return chain(sig, *rest, app=app).apply() if rest else sig.apply()


def apply_linked(task: Any, args: Any, kwargs: Any, task_id: Optional[str], link: Any, link_error: Any,
                 options: Dict[str, Any]) -> Any:
    """Task.apply with callbacks, as a worker runs them: on success each `link` is applied with the
    return value; on failure each `link_error` with the task's id (also when the failure propagates)."""
    task_id = task_id or new_id()
    app = task.app
    try:
        res = task.apply(args, kwargs, task_id=task_id, **options)
    except Exception:
        for errback in _as_list(link_error):
            from_dict(errback, app).apply((task_id,))
        raise
    if res.state == "SUCCESS":
        for callback in _as_list(link):
            from_dict(callback, app).apply((res.result,))
    else:
        for errback in _as_list(link_error):
            from_dict(errback, app).apply((task_id,))
    return res


def _chain_result(steps: List[Signature[Any]]) -> Any:
    """The last step's result, its `.parent` walking back through the steps (frozen ones)."""
    parent = None
    for step in steps:
        res = step.result()
        if parent is not None and getattr(res, "parent", None) is None:
            res.parent = parent
        parent = res
    return parent


def _chord_result(body: Signature[Any], header: Any) -> Any:
    """The (frozen) callback's result, the header's GroupResult at the root of its parents."""
    res = body.result()
    target = res
    while getattr(target, "parent", None) is not None:
        target = target.parent
    target.parent = header
    return res


def from_dict(d: Any, app: Any = None, copy: bool = False) -> Signature[Any]:
    """Rebuild the right Signature class from a dict (as found in a message). `copy`: a copy down to
    every member's options, so that ids and options can be set on it (plan, clone) leaving `d` as it was."""
    if isinstance(d, Signature):
        return _copy(d, app) if copy else d
    kind = d.get("subtask_type")
    if kind in _TYPES:
        cls = _TYPES[kind]
        init = {**d, "options": dict(d.get("options") or {})}
        kw = dict(init.get("kwargs") or {})
        if kind == "chord":
            kw = {"header": group(kw["header"], app=app) if isinstance(kw["header"], dict) else kw["header"],
                  "body": from_dict(kw["body"], app) if kw.get("body") is not None else None}
        else:
            kw["tasks"] = [from_dict(t, app) for t in kw.get("tasks", [])]
        init["kwargs"] = kw
        sig = cls.__new__(cls)
        dict.__init__(sig, init)
        sig._app = app
    else:
        sig = Signature(dict(d), app=app)
    return _copy(sig, app) if copy else sig  # (members given as Signatures are shared until copied)


def _copy(sig: Signature[Any], app: Any = None) -> Signature[Any]:
    """`sig` with new dicts for its options and kwargs, and for its members', all the way down (the
    arguments themselves are shared: nothing here changes them)."""
    new = sig.__class__.__new__(sig.__class__)
    dict.__init__(new, sig)
    new["options"] = dict(sig.options)
    kw = dict(sig.kwargs)
    if isinstance(sig, (chain, group)):
        kw["tasks"] = [_copy(t, app) for t in sig.tasks]
    elif isinstance(sig, chord):
        kw["header"] = _copy(sig.header, app)
        if sig.body is not None:
            kw["body"] = _copy(sig.body, app)
    new["kwargs"] = kw
    new._app = app if app is not None else sig._app
    return new


signature = Signature
maybe_signature = from_dict


# --- what a task's outcome means downstream (the worker sends and stores; these only say what) -------------

def success_calls(app: Any, task_id: str, root_id: Optional[str], links: Optional[List[Dict[str, Any]]],
                  chain: Optional[List[Dict[str, Any]]], value: Any) -> List[Call]:
    """The calls a task's success sends: its links applied with `value`, then the next step of its
    chain (carrying the rest), all with the task as their parent and its root as theirs."""
    follow = {"parent_id": task_id, "root_id": root_id or task_id}
    calls: List[Call] = []
    for link in links or ():
        calls.extend(from_dict(link, app).plan((value,), None, dict(follow)))
    if chain:
        nxt, rest = chain[0], chain[1:]
        make_chain: Any = _TYPES["chain"]  # (the class: `chain` is the argument here)
        sig = make_chain(nxt, *rest, app=app) if rest else from_dict(nxt, app)
        calls.extend(sig.plan((value,), None, dict(follow)))
    return calls


class Downstream(NamedTuple):
    """What a failure (or a signature that will never run) means downstream. The caller does the I/O:
    stores FAILURE for each failed id, sends the errbacks, and for each chord whose end it claims
    (backend.chord_fail), fails the callback in turn: abandoned(callback), with a ChordError saying
    "Dependency <member id> raised <the exception>"."""

    failed_ids: List[str]                     # tasks that will now never run: their result becomes FAILURE
    errbacks: List[Call]                      # planned errback calls, each with a failed task's id as its one arg
    chords: List[Tuple[str, str, Signature[Any]]]  # (chord id, id of the member that failed, the chord's callback)


def failure_downstream(app: Any, task_id: str, errbacks: Optional[List[Dict[str, Any]]],
                       chain: Optional[List[Dict[str, Any]]], chord: Optional[Dict[str, Any]]) -> Downstream:
    """A task failed (or will not run: revoked, expired, lost); `errbacks`, `chain`, `chord` are its
    message's fields. Its errbacks run (with its id, as their parent); the rest of its chain never
    runs; its chord, if any, may now end."""
    out = Downstream([], [], [])
    for errback in errbacks or ():
        out.errbacks.extend(from_dict(errback, app).plan((task_id,), None, {"parent_id": task_id}))
    for step in chain or ():
        _abandon(app, from_dict(step, app), out)
    if chord:
        out.chords.append((chord["id"], task_id, from_dict(chord["cb"], app)))
    return out._replace(failed_ids=list(dict.fromkeys(out.failed_ids)))


def abandoned(app: Any, sig: Any) -> Downstream:
    """A signature that will never run (a later chain step, a chord callback): every task in it fails,
    the errbacks of the tasks that would have ended it run, and what waited on those fails too."""
    out = Downstream([], [], [])
    _abandon(app, from_dict(sig, app), out)
    return out._replace(failed_ids=list(dict.fromkeys(out.failed_ids)))


def _abandon(app: Any, sig: Signature[Any], out: Downstream) -> None:
    out.failed_ids.extend(_task_ids(sig))
    last: Any = sig  # what would have ended it: a chain's last step, a chord's callback, down to a task or group
    while isinstance(last, (chain, chord)):
        last = last.tasks[-1] if isinstance(last, chain) else last.body
    if isinstance(last, group):
        for member in last.tasks:
            _abandon(app, member, out)
        return
    for errback in last.options.get("link_error") or ():
        out.errbacks.extend(from_dict(errback, app).plan((last.id,), None, {}))
    for step in last.options.get("chain") or ():
        _abandon(app, from_dict(step, app), out)
    info = last.options.get("chord")
    if info:
        out.chords.append((info["id"], last.id, from_dict(info["cb"], app)))


def _task_ids(sig: Any) -> List[str]:
    """Every frozen task id in a canvas."""
    sig = from_dict(sig)
    if isinstance(sig, (chain, group)):
        return [i for t in sig.tasks for i in _task_ids(t)]
    if isinstance(sig, chord):
        return [i for t in sig.tasks for i in _task_ids(t)] + (_task_ids(sig.body) if sig.body else [])
    return [sig.id] if sig.id else []


class Replace(Exception):
    """Raised by Task.replace(): the worker sends `sig` in place of the running task."""

    def __init__(self, sig: Any):
        super().__init__(sig)
        self.sig = sig


# --- map, starmap, chunks: run inside one worker task ------------------------------------------------

def xmap(task: Any, it: Iterable[Any]) -> Signature[Any]:
    return Signature("minique.map", (task.name, list(it)), app=task.app, immutable=True)


def xstarmap(task: Any, it: Iterable[Any]) -> Signature[Any]:
    return Signature("minique.starmap", (task.name, [list(a) for a in it]), app=task.app, immutable=True)


class chunks(Signature[Any]):
    """Split an iterable of argument tuples into chunks of n, each run as one starmap task."""

    def __init__(self, task: Any, it: Iterable[Any], n: int, app: Any = None):
        items = [list(a) for a in it]
        super().__init__("minique.chunks", (task.name, items, n), app=app or task.app, immutable=True)

    def group(self) -> group:
        name, items, n = self.args
        parts = [items[i:i + n] for i in range(0, len(items), n)]
        return group([Signature("minique.starmap", (name, part), app=self._app, immutable=True) for part in parts],
                     app=self._app)

    def apply_async(self, args: Any = (), kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> Any:
        return self.group().apply_async(**options)

    async def aapply_async(self, args: Any = (), kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> Any:
        return await self.group().aapply_async(**options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async()


def register_builtins(app: Any) -> None:
    """Tasks every worker knows: map, starmap, and the group/chord unlock used by replace()."""
    task = cast(Callable[..., Callable[[Callable[..., Any]], Any]], app.task)  # (app: a Minique, not imported here)

    @task(name="minique.map")
    def _map(task_name: str, items: List[Any]) -> List[Any]:
        fun = app.tasks[task_name]
        return [fun(item) for item in items]

    @task(name="minique.starmap")
    def _starmap(task_name: str, items: List[Any]) -> List[Any]:
        fun = app.tasks[task_name]
        return [fun(*item) for item in items]

    @task(name="minique.identity")
    def _identity(value: Any) -> Any:
        return value


__all__ = ["Signature", "signature", "chain", "group", "chord", "chunks", "xmap", "xstarmap", "from_dict",
           "maybe_signature", "Replace", "Downstream", "failure_downstream", "abandoned", "success_calls"]

