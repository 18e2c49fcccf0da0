"""Caps on what a failure writes: exception messages, tracebacks and argument reprs (pure, no I/O).

A task can raise an exception with a message of any size; without a cap, a 1 MB message became a
1 MB stored result, a 1.3 MB event and a 1 MB log line. Everything that reports a failure cuts
its text with `cut`, which says how much it left out, so a cut is never mistaken for the whole:

    ValueError('xxxx…' … [1048000 more characters]

Sizes are in characters (str), set with (defaults in minique/config.py, docs/security.md):
- `task_exception_max_size`  an exception's message and repr: stored results, events, logs, dead-letter reasons
- `task_traceback_max_size`  a traceback: stored results
- `task_argsrepr_max_size`   the reprs of a task's arguments: events, `inspect`
"""
from __future__ import annotations

from typing import Any, List, Optional

EXCEPTION_MAX = 4096
TRACEBACK_MAX = 8192
ARGSREPR_MAX = 512
MARK = " … [{} more characters]"         # where `cut` left out the end
HEAD_MARK = "[{} more characters] … "    # where `cut_tail` left out the start


def cut(text: str, limit: Optional[int]) -> str:
    """`text` whole when it has at most `limit` characters, else its start and a mark saying how much
    was left out (the result then has about `limit` characters in all). None or 0: no cap."""
    if not limit or len(text) <= limit:
        return text
    keep = max(0, limit - len(MARK.format(len(text))))
    return text[:keep] + MARK.format(len(text) - keep)


def cut_tail(text: str, limit: Optional[int]) -> str:
    """As `cut`, keeping the end instead (a traceback's last lines say where it was raised, and what)."""
    if not limit or len(text) <= limit:
        return text
    keep = max(0, limit - len(HEAD_MARK.format(len(text))))
    return HEAD_MARK.format(len(text) - keep) + text[len(text) - keep:]


def safe_repr(value: Any, limit: Optional[int]) -> str:
    """repr(value), cut to `limit`; a repr that raises is named rather than raised."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not fail what reports it
        return f"<unrepresentable {type(value).__name__}>"
    return cut(text, limit)


def exception_args(args: Any, limit: Optional[int], max_args: int = 32) -> List[Any]:
    """An exception's args as stored: scalars as they are, anything else as its str(), the texts
    sharing `limit` characters (each cut to its share); at most `max_args` of them (one more then
    says how many were left out)."""
    items = list(args)
    kept = items[:max_args]
    texts = sum(1 for a in kept if not (a is None or isinstance(a, (bool, int, float))))
    share = max(64, limit // texts) if limit and texts else limit
    out: List[Any] = []
    for a in kept:
        if a is None or isinstance(a, (bool, int, float)):
            out.append(a)
            continue
        try:
            text = a if isinstance(a, str) else str(a)
        except Exception:  # noqa: BLE001 - a broken __str__ must not fail what reports it
            text = f"<unprintable {type(a).__name__}>"
        out.append(cut(text, share))
    if len(items) > max_args:
        out.append(f"… [{len(items) - max_args} more arguments]")
    return out
