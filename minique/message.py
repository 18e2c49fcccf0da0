"""The task message: an immutable envelope and its wire encoding (pure, no I/O).

Wire format (documented in docs/protocol.md): a msgpack map with short keys. The
user's [args, kwargs] travel as an opaque `body` encoded with `content_type`, so a
worker can route, log, expire and dead-letter a message without decoding user data.
Fields at their default value are left out, which keeps the hot path small.
"""
from __future__ import annotations

import operator
import os
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

from . import serializers
from .exceptions import DecodeError

PROTOCOL_VERSION = 1


def new_id() -> str:
    """A fresh task id: a random UUID4 string, as Celery's (formatted directly: it is on the send path)."""
    return _uuid4(os.urandom(16))


def new_ids(n: int) -> List[str]:
    """n fresh task ids from one read of the system's randomness (the bulk path)."""
    raw = os.urandom(16 * n)
    return [_uuid4(raw[i:i + 16]) for i in range(0, 16 * n, 16)]


def _uuid4(random16: bytes) -> str:
    h = (int.from_bytes(random16, "big") & _UUID4_CLEAR | _UUID4_SET).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)   # version and variant bits
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


class Message(NamedTuple):
    """One task invocation as it travels through the broker. Copy with `_replace`."""

    id: str
    task: str
    body: bytes                              # serialize([args, kwargs], content_type)
    content_type: str = "json"
    queue: str = "default"
    priority: int = 0                        # 0..9, higher runs first
    retries: int = 0
    eta: Optional[float] = None              # epoch seconds; not before
    expires: Optional[float] = None          # epoch seconds; not after
    root_id: Optional[str] = None
    parent_id: Optional[str] = None
    group_id: Optional[str] = None
    group_index: Optional[int] = None
    chord: Optional[Dict[str, Any]] = None   # {"id", "size", "callback": sig dict} for a header member
    chain: Optional[List[Dict[str, Any]]] = None  # signatures still to run after this one, next first
    links: Optional[List[Dict[str, Any]]] = None  # signatures applied with the result on success
    errbacks: Optional[List[Dict[str, Any]]] = None  # signatures applied with the task id on failure
    ignore_result: bool = False
    time_limit: Optional[float] = None
    soft_time_limit: Optional[float] = None
    headers: Optional[Dict[str, Any]] = None  # user headers, passed through untouched
    sent_at: float = 0.0
    signature: Optional[bytes] = None         # HMAC of the rest, when security_key is set

    def args_kwargs(self, accept: Iterable[str]) -> Tuple[List[Any], Dict[str, Any]]:
        """Decode the body (ContentDisallowed / DecodeError when it cannot be)."""
        decoded = serializers.loads(self.body, self.content_type, accept)
        if (not isinstance(decoded, (list, tuple)) or len(decoded) != 2
                or not isinstance(decoded[0], (list, tuple)) or not isinstance(decoded[1], dict)):
            raise DecodeError("message body is not [args, kwargs]")
        return list(decoded[0]), decoded[1]

    def encode(self) -> bytes:
        return encode(self)


# (attribute, wire key) in field order; the required ones come first.
_WIRE = (
    ("id", "i"), ("task", "t"), ("body", "b"), ("content_type", "ct"), ("queue", "q"),
    ("priority", "p"), ("retries", "r"), ("eta", "eta"), ("expires", "exp"),
    ("root_id", "root"), ("parent_id", "par"), ("group_id", "grp"), ("group_index", "gi"),
    ("chord", "chord"), ("chain", "chain"), ("links", "link"), ("errbacks", "err"),
    ("ignore_result", "ir"), ("time_limit", "tl"), ("soft_time_limit", "stl"),
    ("headers", "h"), ("sent_at", "ts"), ("signature", "sig"),
)
_DEFAULTS = Message._field_defaults
assert tuple(attr for attr, _ in _WIRE) == Message._fields  # encode() relies on the order
_OPTIONAL = tuple((key, _DEFAULTS[attr]) for attr, key in _WIRE[3:])
_WIRE_DEFAULTS = {key: _DEFAULTS.get(attr) for attr, key in _WIRE}
_pick = operator.itemgetter(*(key for _, key in _WIRE))  # wire map -> field values, in field order


def encode(message: Message) -> bytes:
    """The message's wire bytes (msgpack map, default-valued fields left out)."""
    return serializers.pack(_wire_map(message))


def _wire_map(message: Message) -> Dict[str, Any]:
    out: Dict[str, Any] = {"v": PROTOCOL_VERSION, "i": message.id, "t": message.task, "b": message.body}
    for (key, default), value in zip(_OPTIONAL, message[3:]):
        if value != default:
            out[key] = value
    return out


class Template:
    """Wire bytes of many messages that differ only in id, body and group index (the bulk path: one
    task, one set of options). A message that is its own root keeps being its own root."""

    def __init__(self, message: Message):
        self.fields = _wire_map(message)
        self.content_type = message.content_type
        self.own_root = message.root_id == message.id

    def encode(self, task_id: str, body: bytes, group_index: Optional[int] = None) -> bytes:
        out = self.fields.copy()
        out["i"] = task_id
        out["b"] = body
        if self.own_root:
            out["root"] = task_id
        if group_index is None:
            out.pop("gi", None)
        else:
            out["gi"] = group_index
        return serializers.pack(out)


def decode(data: bytes) -> Message:
    """Parse wire bytes into a Message; DecodeError says what is wrong."""
    try:
        raw = serializers.unpack(data)
    except Exception as exc:
        raise DecodeError(f"not a msgpack message: {exc}") from exc
    if not isinstance(raw, dict):
        raise DecodeError(f"message is a {type(raw).__name__}, not a map")
    if raw.get("v") != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {raw.get('v')!r}")
    if "i" not in raw or "t" not in raw or "b" not in raw:
        missing = ", ".join(repr(key) for key in ("i", "t", "b") if key not in raw)
        raise DecodeError(f"malformed message: missing {missing}")
    message = Message._make(_pick({**_WIRE_DEFAULTS, **raw}))
    if not isinstance(message.id, str) or not isinstance(message.task, str) or not isinstance(message.body, bytes):
        raise DecodeError("message lacks a string id, a string task name or a bytes body")
    return message


def peek_id(data: bytes) -> Optional[str]:
    """The task id of a message that may not decode fully (for dead-letter records)."""
    try:
        raw = serializers.unpack(data)
        return raw.get("i") if isinstance(raw, dict) else None
    except Exception:
        return None


def make(task: str, args: Any = (), kwargs: Optional[Dict[str, Any]] = None, serializer: str = "json",
         task_id: Optional[str] = None, **fields: Any) -> Message:
    """Build a message, serializing [args, kwargs] with `serializer`."""
    return Message(id=task_id or new_id(), task=task, body=encode_args(args, kwargs, serializer),
                   content_type=serializer, sent_at=time.time(), **fields)


def encode_args(args: Any, kwargs: Optional[Dict[str, Any]], serializer: str) -> bytes:
    """The body: [args, kwargs] serialized (TypeError when they cannot be)."""
    return serializers.dumps([list(args or ()), kwargs or {}], serializer)
