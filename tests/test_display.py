"""Decoding a message for display (minique.display): json and msgpack only, the signature first (pure)."""
import pickle

import pytest

from minique import message, serializers
from minique.config import mask_url
from minique.display import Refused, checked_message, describe_for_display
from minique.signing import sign

KEY = "s3cret"


class OpensAFile:
    """Unpickling this creates the file at `path`: what an attacker's pickle could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickled_message(path, key=None):
    msg = message.make("t.add", (), None, "pickle", queue="q")._replace(
        body=pickle.dumps([[OpensAFile(path)], {}]))
    return sign(msg, key) if key else msg


def test_json_and_msgpack_bodies_are_shown_with_the_envelope():
    for serializer in ("json", "msgpack"):
        msg = message.make("t.add", (1, "two"), {"k": [3]}, serializer, queue="q", priority=7, retries=2)
        shown = describe_for_display(msg.encode(), None)
        assert (shown["args"], shown["kwargs"], shown["problem"], shown["verified"]) == ([1, "two"], {"k": [3]},
                                                                                        None, None)
        assert (shown["id"], shown["name"], shown["queue"], shown["priority"], shown["retries"],
                shown["content_type"]) == (msg.id, "t.add", "q", 7, 2, serializer)


def test_pickle_is_never_decoded_for_display_signed_or_not(tmp_path):
    marker = tmp_path / "opened"
    for key in (None, KEY):
        shown = describe_for_display(pickled_message(marker, key).encode(), key)
        assert shown["name"] == "t.add" and shown["args"] is None and shown["kwargs"] is None
        assert "pickle body is not decoded" in shown["problem"]
    assert not marker.exists()
    # (the same bytes, unpickled, do open the file: the test would see it)
    pickle.loads(serializers.unpack(pickled_message(marker).encode())["b"])
    assert marker.exists()


def test_with_a_key_the_signature_is_checked_before_anything_is_decoded(tmp_path):
    signed = sign(message.make("t.add", (1, 2)), KEY)
    shown = describe_for_display(signed.encode(), KEY)
    assert shown["verified"] is True and shown["args"] == [1, 2]
    for bad in (message.make("t.add", (1, 2)),                                         # unsigned
                sign(message.make("t.add", (1, 2)), "other-key"),                      # another key
                signed._replace(body=serializers.dumps([[6, 6], {}], "json"))):       # altered after signing
        shown = describe_for_display(bad.encode(), KEY)
        assert shown["verified"] is False and shown["args"] is None and shown["kwargs"] is None
        assert "signature does not verify" in shown["problem"] and shown["name"] == "t.add"
        with pytest.raises(Refused, match="signature does not verify"):
            checked_message(bad.encode(), KEY)
    assert checked_message(signed.encode(), KEY) == signed
    assert checked_message(bad.encode(), None).body == bad.body  # without a key: any message that decodes


def test_what_does_not_decode_is_described_not_raised():
    for data in (b"\xc1", serializers.pack([1]), serializers.pack({"v": 1, "i": "abc", "t": 5, "b": b""}),
                 serializers.pack({"v": 1, "i": ["x"]})):
        shown = describe_for_display(data, KEY)
        assert shown["args"] is None and shown["problem"].startswith("undecodable message")
        with pytest.raises(Refused):
            checked_message(data, None)
    assert describe_for_display(serializers.pack({"v": 1, "i": "abc", "t": 5, "b": b""}), None)["id"] == "abc"
    assert describe_for_display(serializers.pack({"v": 1, "i": ["x"]}), None)["id"] is None
    # a body that is not [args, kwargs]: the envelope, and why there are no arguments
    odd = message.make("t.x")._replace(body=b'"text"')
    shown = describe_for_display(odd.encode(), None)
    assert shown["name"] == "t.x" and shown["args"] is None and "[args, kwargs]" in shown["problem"]


def test_mask_url_hides_passwords_only():
    assert mask_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://user:p%40ss@host/1") == "rediss://user:***@host/1"
    assert mask_url("redis://:p@ss@host/0") == "redis://:***@host/0"  # an @ in the password
    assert mask_url("redis://host/0?db=1&password=pw&x=2") == "redis://host/0?db=1&password=***&x=2"
    assert mask_url("unix://:pw@/run/redis.sock?db=0") == "unix://:***@/run/redis.sock?db=0"
    for plain in ("redis://host:6379/0", "rediss://user@host", "redis+embedded:///tmp/x.db", "not a url"):
        assert mask_url(plain) == plain
