"""Typing checks for typed tasks (issue 21), read by mypy only: `mypy tests/typing` (in .ci/run).

Not a test module (pytest collects test_*.py only) and never imported: each `assert_type` states what a type
checker must infer, and each `# type: ignore[code]` marks a call the checker must refuse. mypy runs with
`warn_unused_ignores` (pyproject.toml), so an ignore that is no longer needed (the check stopped catching
the error) fails the run just as a wrong `assert_type` does.
"""
from __future__ import annotations

from typing import Any, List

from typing_extensions import assert_type

from minique import AsyncResult, GroupResult, Minique, Signature, Task
from minique.result import EagerResult

app = Minique("typing_checks")


# --- a plain task ---------------------------------------------------------------------------------------
@app.task
def add(x: int, y: int) -> int:
    return x + y


add_task: Task[[int, int], int] = add
assert_type(add(1, 2), int)  # a direct call runs the function
assert_type(add.delay(1, 2), AsyncResult[int])
assert_type(add.delay(1, y=2), AsyncResult[int])
assert_type(add.delay(1, 2).get(timeout=1), int)
assert_type(add.apply_async((1, 2), countdown=1), AsyncResult[int])
assert_type(add.apply_async(args=(1, 2), kwargs={}, queue="q").get(), int)
assert_type(add.apply((1, 2)), EagerResult[int])
assert_type(add.apply((1, 2)).get(), int)
assert_type(add.AsyncResult("some-id").get(), int)
assert_type(add.delay_many([(1, 2), (3, 4)]), List[AsyncResult[int]])
assert_type(add.s(1), Signature[int])  # (partial: its arguments are not checked)
assert_type(add.si(1, 2), Signature[int])


# --- with options, and bind=True (the bound `self` is not one of the task's parameters) -------------------
@app.task(name="typing.mul", queue="q", max_retries=3)
def mul(x: float, factor: float = 2.0) -> float:
    return x * factor


@app.task(bind=True, autoretry_for=(ConnectionError,))
def fetch(self: Task[..., Any], url: str, *, retries: int = 0) -> bytes:
    return url.encode() * (retries + 1)


@app.task(bind=False)
def noop() -> None:
    return None


@app.task(bind=True)
def celery_style(self, x: int) -> str:  # type: ignore[no-untyped-def]  # a bare `self`, as Celery's docs write it
    return str(x)


@app.task()
def empty_parens(s: str) -> int:
    return len(s)


def no_self() -> int:
    return 1


mul_task: Task[[float, float], float] = mul
assert_type(mul.delay(3.0).get(), float)
assert_type(fetch.delay("http://x", retries=1), AsyncResult[bytes])
assert_type(fetch("http://x"), bytes)
assert_type(fetch.delay("http://x").get(timeout=5), bytes)
assert_type(noop.delay().get(), None)
assert_type(celery_style.delay(1).get(), str)
assert_type(empty_parens.delay("abc"), AsyncResult[int])


def untyped(x):  # type: ignore[no-untyped-def]  # (shows the strict flags of pyproject.toml apply to this file)
    return x


def with_a_flag(bind: bool) -> None:  # bind not known statically: the parameters are not checked
    @app.task(bind=bind)
    def either(*args: Any) -> str:
        return ""

    assert_type(either.delay(1, 2, 3).get(), str)


# --- results ----------------------------------------------------------------------------------------------
def results(r: AsyncResult[int], g: GroupResult[int], e: EagerResult[str]) -> None:
    assert_type(r.get(), int)
    assert_type(r.wait(timeout=1), int)
    assert_type(g.get(timeout=1), List[int])
    assert_type(g[0], AsyncResult[int])
    assert_type([x.get() for x in g], List[int])
    assert_type(e.get(), str)
    widened: AsyncResult[object] = r  # covariant: a handle only gives values out
    del widened


# --- what must be refused ---------------------------------------------------------------------------------
add.delay("x", 2)  # type: ignore[arg-type]
add.delay(1)  # type: ignore[call-arg]
add.delay(1, 2, 3)  # type: ignore[call-arg]
add.delay(1, z=2)  # type: ignore[call-arg]
add("x", "y")  # type: ignore[arg-type]
fetch.delay(1)  # type: ignore[arg-type]
fetch.delay(fetch, "http://x")  # type: ignore[arg-type, call-arg]  # self is not passed
fetch.delay("http://x", tries=1)  # type: ignore[call-arg]
celery_style.delay("1")  # type: ignore[arg-type]
empty_parens.delay(s=1)  # type: ignore[arg-type]
app.task(bind=True)(no_self)  # type: ignore[arg-type]  # a bound task's function takes the task first
mul.delay(1.0).get().upper()  # type: ignore[attr-defined]
wrong_task: Task[[str], int] = add  # type: ignore[assignment]
wrong: AsyncResult[str] = add.delay(1, 2)  # type: ignore[assignment]
not_a_str: str = add.apply_async((1, 2)).get()  # type: ignore[assignment]


# --- shared tasks (minique.shared_task): typed as app.task's ---------------------------------------------
from minique import shared_task  # noqa: E402


@shared_task
def shared_add(x: int, y: int) -> int:
    return x + y


@shared_task(bind=True, name="shared.neg")
def shared_neg(self: Any, x: int) -> int:
    return -x


shared_add_task: Task[[int, int], int] = shared_add
assert_type(shared_add.delay(1, 2).get(), int)
assert_type(shared_neg.delay(1), AsyncResult[int])
shared_add.delay("x", 2)  # type: ignore[arg-type]


# --- an async def task: its result is what the coroutine returns ----------------------------------------
@app.task
async def adouble(x: int) -> int:
    return 2 * x


assert_type(adouble.delay(2), AsyncResult[int])
assert_type(adouble.delay(2).get(timeout=1), int)
adouble.delay("x")  # type: ignore[arg-type]


# --- signatures: add.s(...) is a Signature[int] ------------------------------------------------------------
assert_type(add.s(1, 2), Signature[int])
assert_type(add.s(1, 2).delay().get(timeout=1), int)
assert_type(add.si(1, 2).apply_async(countdown=1), AsyncResult[int])
