"""Decoding a message for people to read (dashboard, `inspect`, CLI, event readers) — pure, no I/O.

The one place where a message is opened for display, so every reader follows the same rules:

* only json and msgpack bodies are decoded (`DISPLAYABLE`), whatever `accept_content` says:
  unpickling runs code chosen by whoever wrote the bytes, and a reader is not the executor;
* with a `security_key`, the signature is checked first, and a message whose signature does not
  verify shows its envelope only, never its arguments: what is shown is what a worker would run;
* a message that does not decode is described by its id (when one can be read) and why.

`checked_message` is the same check for a reader that re-sends what it shows (the dashboard's
retry and replay): the bytes re-sent are the bytes checked and shown.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from . import serializers
from .exceptions import ContentDisallowed, DecodeError
from .message import Message, decode
from .signing import Key, verify

DISPLAYABLE = frozenset({"json", "msgpack"})

_ENVELOPE = ("queue", "priority", "retries", "eta", "expires", "root_id", "parent_id", "group_id", "sent_at",
             "content_type")


class Refused(ValueError):
    """A message that may not be shown or re-sent, with why (undecodable, or unsigned or forged)."""


def checked_message(data: bytes, security_key: Optional[Key]) -> Message:
    """The message in `data`, when it decodes and (with `security_key`) its signature verifies;
    `Refused` says why not."""
    try:
        msg = decode(data)
    except DecodeError as exc:
        raise Refused(str(exc)) from None
    if security_key and not verify(msg, security_key):
        raise Refused("unsigned or forged message: its signature does not verify under security_key")
    return msg


def describe_for_display(data: bytes, security_key: Optional[Key]) -> Dict[str, Any]:
    """What may be shown of the message `data`: its envelope fields, `verified` (None without a key),
    `args` and `kwargs` (decoded values, or None when they may not be decoded) and `problem` (None,
    or why something is missing)."""
    out: Dict[str, Any] = {"id": _peek_id(data), "name": None, "verified": None, "args": None, "kwargs": None,
                           "problem": None}
    try:
        msg = decode(data)
    except DecodeError as exc:
        out["problem"] = f"undecodable message: {exc}"
        return out
    out["id"], out["name"] = msg.id, msg.task
    out.update((field, getattr(msg, field)) for field in _ENVELOPE)
    if security_key:
        out["verified"] = verify(msg, security_key)
        if not out["verified"]:
            out["problem"] = "unsigned or forged message (its signature does not verify): arguments not decoded"
            return out
    if msg.content_type not in DISPLAYABLE:
        out["problem"] = f"a {msg.content_type} body is not decoded for display (only json and msgpack are)"
        return out
    try:
        out["args"], out["kwargs"] = msg.args_kwargs(DISPLAYABLE)
    except (ContentDisallowed, DecodeError) as exc:
        out["problem"] = str(exc)
    return out


def _peek_id(data: bytes) -> Optional[str]:
    """The task id of a message that does not decode, when it has one that is a string."""
    try:
        raw = serializers.unpack(data)
    except Exception:  # noqa: BLE001 - not msgpack at all: no id
        return None
    found = raw.get("i") if isinstance(raw, dict) else None
    return found if isinstance(found, str) else None
