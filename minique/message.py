"""The task message: an immutable envelope and its wire encoding (pure, no I/O).

Wire format (documented in docs/protocol.md): a msgpack map with short keys. The
user's [args, kwargs] travel as an opaque `body` encoded with `content_type`, so a
worker can route, log, expire and dead-letter a message without decoding user data.
Fields at their default value are left out, which keeps the hot path small. `decode`
checks the type of every field present (it is on the worker's hot path: one pass over
the fields present, see _SLOTS).
"""
from __future__ import annotations

import os
import time
from typing import AbstractSet, Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

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

# The types a wire field may have, exactly (msgpack gives exact types: a bool is no number here).
_NONE = type(None)
_NUMBER: AbstractSet[type] = frozenset({int, float, _NONE})
_TYPES: Dict[str, AbstractSet[type]] = {
    "id": {str}, "task": {str}, "body": {bytes}, "content_type": {str}, "queue": {str},
    "priority": {int}, "retries": {int}, "eta": _NUMBER, "expires": _NUMBER,
    "root_id": {str, _NONE}, "parent_id": {str, _NONE}, "group_id": {str, _NONE}, "group_index": {int, _NONE},
    "chord": {dict, _NONE}, "chain": {list, _NONE}, "links": {list, _NONE}, "errbacks": {list, _NONE},
    "ignore_result": {bool}, "time_limit": _NUMBER, "soft_time_limit": _NUMBER, "headers": {dict, _NONE},
    "sent_at": _NUMBER, "signature": {bytes, _NONE},
}
_LISTS = ("chain", "links", "errbacks")  # lists of signature maps
# wire key -> (index in Message, the types that need no further look); decode() fills a copy of
# _DEFAULT_VALUES in one pass. A list (its items must be maps too) takes _check_more, off the usual path.
_SLOTS = {key: (index, frozenset(_TYPES[attr] - {list} if attr in _LISTS else _TYPES[attr]))
          for index, (attr, key) in enumerate(_WIRE)}
_DEFAULT_VALUES = [None, None, None] + [_DEFAULTS[attr] for attr, _ in _WIRE[3:]]  # id, task, body: required
_PRIORITY, _RETRIES = 5, 6
assert Message._fields[_PRIORITY] == "priority" and Message._fields[_RETRIES] == "retries"


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
    values = _DEFAULT_VALUES.copy()
    slot_of = _SLOTS.get
    for key, value in raw.items():  # only the fields present (the others are at their default)
        slot = slot_of(key)
        if slot is None:  # "v", or a field this version does not know
            continue
        if type(value) not in slot[1]:
            _check_more(Message._fields[slot[0]], key, value)
        values[slot[0]] = value
    if values[0] is None or values[1] is None or values[2] is None:
        missing = ", ".join(repr(key) for key in ("i", "t", "b") if key not in raw)
        raise DecodeError(f"malformed message: missing {missing}")
    if not 0 <= values[5] <= 9:  # (_PRIORITY)
        raise DecodeError(f"message field 'priority' ('p') is {values[5]}, not from 0 to 9")
    if values[6] < 0:  # (_RETRIES)
        raise DecodeError(f"message field 'retries' ('r') is {values[6]}, not 0 or more")
    return tuple.__new__(Message, values)


def _check_more(attr: str, key: str, value: Any) -> None:
    """DecodeError unless `value` is right for `attr` (a wrong type, or a list, which _SLOTS leaves to this)."""
    if type(value) is list and attr in _LISTS:
        for item in value:
            if type(item) is not dict:
                raise DecodeError(f"message field {attr!r} ({key!r}) holds a {type(item).__name__}, not only maps")
        return
    expected = " or ".join(sorted("None" if t is _NONE else t.__name__ for t in _TYPES[attr]))
    raise DecodeError(f"message field {attr!r} ({key!r}) is {type(value).__name__}, not {expected}")


def peek_id(data: bytes) -> Optional[str]:
    """The task id of a message that may not decode fully (for dead-letter records); None unless it is a string."""
    try:
        raw = serializers.unpack(data)
    except Exception:
        return None
    task_id = raw.get("i") if isinstance(raw, dict) else None
    return task_id if isinstance(task_id, str) else None


def make(task: str, args: Any = (), kwargs: Optional[Dict[str, Any]] = None, serializer: str = "json",
         task_id: Optional[str] = None, **fields: Any) -> Message:
    """Build a message, serializing [args, kwargs] with `serializer`."""
    return Message(id=task_id or new_id(), task=task, body=encode_args(args, kwargs, serializer),
                   content_type=serializer, sent_at=time.time(), **fields)


def encode_args(args: Any, kwargs: Optional[Dict[str, Any]], serializer: str) -> bytes:
    """The body: [args, kwargs] serialized (TypeError when they cannot be)."""
    return serializers.dumps([list(args or ()), kwargs or {}], serializer)
