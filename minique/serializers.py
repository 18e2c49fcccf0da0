"""Body serializers by name: json, msgpack and (only when a user lists it) pickle.

The envelope of every message is always msgpack (see message.py); these encode the
user's data in it: a task's [args, kwargs] and its return value.
"""
from __future__ import annotations

import base64
import datetime
import decimal
import json
import threading
import uuid
from typing import Any, Callable, Dict, Iterable, List, Tuple

import msgpack

from .exceptions import ContentDisallowed, DecodeError

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]


def _portable(obj: Any, fmt: str) -> Any:
    """msgpack's extras (dates and times as ISO strings, UUIDs and decimals as strings, sets as lists);
    anything else is a clear error. (json writes these with their types: `_json_default`.)"""
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, (uuid.UUID, decimal.Decimal)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not {fmt} serializable")


def _msgpack_default(obj: Any) -> Any:
    return _portable(obj, "msgpack")


# --- JSON with types ---------------------------------------------------------------------------------
# kombu's JSON (kombu >= 5.3, kombu/utils/json.py) writes these types as {"__type__": name, "__value__": v},
# and so does minique, with kombu's names and encodings, so a value means the same to Celery and to
# minique (the table is in docs/protocol.md). Only types json cannot write reach `_json_default`: plain
# dicts, lists, strings and numbers are written by json's C encoder as before.

def _bytes_marker(obj: Any) -> Dict[str, Any]:
    raw = obj if type(obj) is bytes else bytes(obj)
    try:
        return {"__type__": "bytes", "__value__": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"__type__": "base64", "__value__": base64.b64encode(raw).decode("ascii")}


_JSON_TYPES: Tuple[Tuple[type, Callable[[Any], Any]], ...] = (
    # (type, its marker), in isinstance order: datetime before date, as a datetime is a date too
    (bytes, _bytes_marker),
    (bytearray, _bytes_marker),
    (datetime.datetime, lambda o: {"__type__": "datetime", "__value__": o.isoformat()}),
    (datetime.date, lambda o: {"__type__": "date", "__value__": o.isoformat()}),
    (datetime.time, lambda o: {"__type__": "time", "__value__": o.isoformat()}),
    (decimal.Decimal, lambda o: {"__type__": "decimal", "__value__": str(o)}),
    (uuid.UUID, lambda o: {"__type__": "uuid", "__value__": {"hex": o.hex}}),
    (set, list),
    (frozenset, list),
)
_JSON_EXACT: Dict[type, Callable[[Any], Any]] = dict(_JSON_TYPES)


def _json_default(obj: Any) -> Any:
    marker = _JSON_EXACT.get(type(obj))
    if marker is not None:
        return marker(obj)
    for cls, marker in _JSON_TYPES:  # a subclass (a pendulum DateTime, a Decimal subclass...)
        if isinstance(obj, cls):
            return marker(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _uuid_from(value: Any) -> uuid.UUID:
    if not isinstance(value, dict):
        raise ValueError(f"a uuid's __value__ is a map (kombu writes {{'hex': ...}}), not {type(value).__name__}")
    return uuid.UUID(**value)  # kombu's form: {"hex": ...} (UUID's other keyword arguments work too)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"__value__ is a {type(value).__name__}, not a string")
    return value


_JSON_DECODERS: Dict[str, Callable[[Any], Any]] = {
    "bytes": lambda v: _text(v).encode("utf-8"),
    "base64": lambda v: base64.b64decode(_text(v).encode("utf-8")),  # (as lenient as kombu's)
    "datetime": lambda v: datetime.datetime.fromisoformat(_text(v)),
    "date": lambda v: datetime.datetime.fromisoformat(_text(v)).date(),
    "time": lambda v: datetime.time.fromisoformat(_text(v)),
    "decimal": lambda v: decimal.Decimal(_text(v)),
    "uuid": _uuid_from,
}


def _typed(obj: Dict[str, Any]) -> Any:
    """json's object_hook: a {"__type__", "__value__"} map (those two keys, no others) is the value it
    stands for; an unknown __type__ is an error, as in kombu (never silently a dict)."""
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        kind = obj["__type__"]
        decoder = _JSON_DECODERS.get(kind) if isinstance(kind, str) else None
        if decoder is None:
            raise ValueError(f"unsupported __type__ {kind!r:.60} (known: {', '.join(sorted(_JSON_DECODERS))})")
        return decoder(obj["__value__"])
    return obj


_json_encoder = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False)


def _json_dumps(obj: Any) -> bytes:
    if obj is None:  # the commonest result, and encode() costs a new C encoder per call
        return b"null"
    return _json_encoder.encode(obj).encode()


_json_decoder = json.JSONDecoder()
_json_typed_decoder = json.JSONDecoder(object_hook=_typed)
# only a text holding this key (unescaped, as JSON writers write keys) can hold a typed value: the others
# (nearly every body and result) skip the object hook and decode as fast as before
_TYPE_KEY = '"__type__"'


def _json_loads(data: bytes) -> Any:
    """json.loads without its encoding detection for the usual UTF-8 (a tenth of a task's decode), and
    without its two whitespace scans when the value fills the text (as every body minique writes)."""
    try:
        text = data.decode("utf-8")
    except (UnicodeDecodeError, AttributeError):
        return json.loads(data, object_hook=_typed)  # UTF-16/32 JSON, or a str
    decoder = _json_typed_decoder if _TYPE_KEY in text else _json_decoder
    try:
        value, end = decoder.raw_decode(text)
        if end == len(text):
            return value
    except ValueError:
        pass
    return decoder.decode(text)  # whitespace around the value, or json's own error for bad input


_packer_opts = dict(use_bin_type=True, default=_msgpack_default)


_local = threading.local()


def _msgpack_dumps(obj: Any) -> bytes:
    # One Packer per thread: packb() builds a new one per call, which costs twice the packing.
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(**_packer_opts)
    packed: bytes = packer.pack(obj)
    return packed


def _msgpack_loads(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _pickle_dumps(obj: Any) -> bytes:
    import pickle
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _pickle_loads(data: bytes) -> Any:
    import pickle
    return pickle.loads(data)  # noqa: S301 - only reached when the user lists pickle


_REGISTRY: Dict[str, Tuple[Encoder, Decoder]] = {
    "json": (_json_dumps, _json_loads),
    "msgpack": (_msgpack_dumps, _msgpack_loads),
    "pickle": (_pickle_dumps, _pickle_loads),
}

# Celery's long content-type names map onto ours, so accept_content written for Celery works.
ALIASES = {
    "application/json": "json",
    "application/x-msgpack": "msgpack",
    "application/x-python-serialize": "pickle",
}


def canonical(name: str) -> str:
    """Our short name for a serializer or content type; ValueError when unknown."""
    name = ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise ValueError(f"unknown serializer {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return name


def register(name: str, encoder: Encoder, decoder: Decoder) -> None:
    """Add a serializer (for example a custom one); it must still be listed in accept_content."""
    _REGISTRY[name] = (encoder, decoder)


def dumps(obj: Any, serializer: str) -> bytes:
    """Encode `obj` with the named serializer; TypeError carries a clear message."""
    return _REGISTRY[serializer][0](obj)


def loads(data: bytes, content_type: str, accept: Iterable[str]) -> Any:
    """Decode `data`, refusing content types not in `accept` (ContentDisallowed)."""
    if content_type not in accept:
        raise ContentDisallowed(f"refusing content of type {content_type!r}; accept_content is {sorted(accept)}")
    try:
        return _REGISTRY[content_type][1](data)
    except Exception as exc:  # any decoder failure is the same thing to the caller
        raise DecodeError(f"cannot decode {content_type} body: {exc}") from exc


pack = _msgpack_dumps
unpack = _msgpack_loads


def unpack_all(data: bytes) -> List[Any]:
    """Every msgpack object in `data`, packed one after another."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    return list(unpacker)
