"""Message signing with `security_key`: an HMAC-SHA256 over the envelope (pure, no I/O).

The signature covers the whole wire encoding of the message less its `signature` field,
so a worker can tell a message a holder of the key sent from a forged or altered one.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Union

from .message import Message

Key = Union[str, bytes]


def signing_payload(msg: Message) -> bytes:
    """The bytes the signature covers: the message's encoding without its signature."""
    return msg._replace(signature=None).encode()


def _digest(msg: Message, key: Key) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    return hmac.new(raw, signing_payload(msg), hashlib.sha256).digest()


def sign(msg: Message, key: Key) -> Message:
    """The message with an HMAC-SHA256 of the rest of it attached."""
    return msg._replace(signature=_digest(msg, key))


def verify(msg: Message, key: Key) -> bool:
    """Whether the message carries a valid signature under `key` (compared in constant time)."""
    if not msg.signature:
        return False
    return hmac.compare_digest(msg.signature, _digest(msg, key))
