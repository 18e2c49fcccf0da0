"""Body serializers by name: json, msgpack and (only when a user lists it) pickle.

The envelope of every message is always msgpack (see message.py); these encode the
user's data in it: a task's [args, kwargs] and its return value.
"""
from __future__ import annotations

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
    """What Celery's serializers also carry (dates, UUIDs, decimals, sets); anything else is a clear error."""
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, (uuid.UUID, decimal.Decimal)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if fmt == "JSON" and isinstance(obj, (bytes, bytearray)):
        raise TypeError("bytes are not JSON serializable: use serializer='msgpack' for this task")
    raise TypeError(f"Object of type {type(obj).__name__} is not {fmt} serializable")


def _json_default(obj: Any) -> Any:
    return _portable(obj, "JSON")


def _msgpack_default(obj: Any) -> Any:
    return _portable(obj, "msgpack")


_json_encoder = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False)


def _json_dumps(obj: Any) -> bytes:
    if obj is None:  # the commonest result, and encode() costs a new C encoder per call
        return b"null"
    return _json_encoder.encode(obj).encode()


_json_decoder = json.JSONDecoder()


def _json_loads(data: bytes) -> Any:
    """json.loads without its encoding detection for the usual UTF-8 (a tenth of a task's decode), and
    without its two whitespace scans when the value fills the text (as every body minique writes)."""
    try:
        text = data.decode("utf-8")
    except (UnicodeDecodeError, AttributeError):
        return json.loads(data)  # UTF-16/32 JSON, or a str
    try:
        value, end = _json_decoder.raw_decode(text)
        if end == len(text):
            return value
    except ValueError:
        pass
    return _json_decoder.decode(text)  # whitespace around the value, or json's own error for bad input


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
