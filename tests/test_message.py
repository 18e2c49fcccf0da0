"""Message encoding and serializers (pure, no Redis)."""
import datetime

import msgpack
import pytest

from minique import message, serializers
from minique.exceptions import ContentDisallowed, DecodeError


def test_round_trip_keeps_every_field():
    m = message.make("t.add", (1, 2), {"z": 3}, "json", task_id="abc", queue="q", priority=7, retries=2,
                     eta=123.5, expires=456.0, root_id="r", parent_id="p", group_id="g", group_index=4,
                     chord={"id": "c", "n": 2, "cb": {"task": "cb"}}, chain=[{"task": "next"}],
                     links=[{"task": "l"}], errbacks=[{"task": "e"}], ignore_result=True, time_limit=5.0,
                     soft_time_limit=4.0, headers={"h": 1})
    back = message.decode(m.encode())
    assert back == m
    assert back.args_kwargs({"json"}) == ([1, 2], {"z": 3})


def test_defaults_are_left_off_the_wire():
    m = message.make("t", (), None, "json", task_id="i")
    raw = msgpack.unpackb(m.encode())
    assert set(raw) == {"v", "i", "t", "b", "ts"}


def test_msgpack_body_carries_bytes():
    m = message.make("t", (b"\x00\xff",), None, "msgpack")
    assert message.decode(m.encode()).args_kwargs({"msgpack"}) == ([b"\x00\xff"], {})


def test_json_body_carries_bytes_and_refuses_other_objects_with_a_clear_error():
    m = message.make("t", (b"\x00\xff",), None, "json")
    assert message.decode(m.encode()).args_kwargs({"json"}) == ([b"\x00\xff"], {})
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        message.make("t", (object(),), None, "json")


@pytest.mark.parametrize("data, why", [
    (b"\xc1garbage", "not a msgpack"),
    (msgpack.packb([1, 2]), "not a map"),
    (msgpack.packb({"v": 99, "i": "x", "t": "y", "b": b""}), "version"),
    (msgpack.packb({"v": 1, "i": "x"}), "malformed"),
    (msgpack.packb({"v": 1, "i": 5, "t": "y", "b": b""}), "'id' \\('i'\\) is int, not str"),
])
def test_decode_errors_say_what_is_wrong(data, why):
    with pytest.raises(DecodeError, match=why):
        message.decode(data)


def _wire(**changes):
    """A valid message's wire map with some fields replaced, packed."""
    raw = msgpack.unpackb(message.make("t", (1,), None, "json", task_id="i1").encode())
    raw.update(changes)
    return msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize("key, value, field, found", [
    ("i", 5, "id", "int"), ("t", b"name", "task", "bytes"), ("b", "[[1],{}]", "body", "str"),
    ("ct", 1, "content_type", "int"), ("q", None, "queue", "NoneType"),
    ("p", "5", "priority", "str"), ("p", True, "priority", "bool"), ("p", 5.0, "priority", "float"),
    ("r", 1.5, "retries", "float"), ("r", None, "retries", "NoneType"),
    ("eta", True, "eta", "bool"), ("eta", "soon", "eta", "str"), ("exp", [1], "expires", "list"),
    ("root", 5, "root_id", "int"), ("par", b"p", "parent_id", "bytes"), ("grp", 1.0, "group_id", "float"),
    ("gi", "1", "group_index", "str"), ("gi", False, "group_index", "bool"),
    ("chord", ["c"], "chord", "list"), ("chain", {"task": "n"}, "chain", "dict"),
    ("link", "l", "links", "str"), ("err", 7, "errbacks", "int"),
    ("ir", 1, "ignore_result", "int"), ("ir", None, "ignore_result", "NoneType"),
    ("tl", "5", "time_limit", "str"), ("stl", False, "soft_time_limit", "bool"),
    ("h", [], "headers", "list"), ("ts", "now", "sent_at", "str"), ("sig", "abc", "signature", "str"),
])
def test_a_field_of_the_wrong_type_is_a_decode_error_naming_it(key, value, field, found):
    with pytest.raises(DecodeError, match=f"'{field}' \\('{key}'\\) is {found}, not "):
        message.decode(_wire(**{key: value}))


@pytest.mark.parametrize("key, value, why", [
    ("p", 10, "'priority' .* is 10, not from 0 to 9"), ("p", -1, "'priority' .* is -1, not from 0 to 9"),
    ("r", -1, "'retries' .* is -1, not 0 or more"),
    ("chain", [{"task": "n"}, "n2"], "'chain' .* holds a str, not only maps"),
    ("link", [None], "'links' .* holds a NoneType"), ("err", [[]], "'errbacks' .* holds a list"),
])
def test_out_of_range_numbers_and_lists_of_non_maps_are_decode_errors(key, value, why):
    with pytest.raises(DecodeError, match=why):
        message.decode(_wire(**{key: value}))


def test_every_type_a_field_may_have_decodes():
    """Numbers may be ints or floats, optional fields an explicit nil (another producer's), and
    fields this version does not know are ignored."""
    m = message.decode(_wire(p=9, r=3, eta=5, exp=6.5, root=None, par=None, grp=None, gi=None, chord=None,
                             chain=[], link=None, err=[{"task": "e"}], ir=True, tl=None, stl=2, h=None, ts=None,
                             sig=None, future_field=[1, 2]))
    assert (m.priority, m.retries, m.eta, m.expires, m.chain, m.errbacks, m.ignore_result, m.soft_time_limit,
            m.sent_at) == (9, 3, 5, 6.5, [], [{"task": "e"}], True, 2, None)


def test_accept_content_is_enforced():
    m = message.make("t", (1,), None, "msgpack")
    with pytest.raises(ContentDisallowed):
        m.args_kwargs({"json"})


def test_pickle_is_refused_unless_listed():
    m = message.make("t", (1,), None, "pickle")
    with pytest.raises(ContentDisallowed):
        m.args_kwargs({"json", "msgpack"})
    assert m.args_kwargs({"pickle"}) == ([1], {})


def test_body_that_is_not_args_kwargs():
    m = message.make("t", (), None, "json")._replace(body=b'"just a string"')
    with pytest.raises(DecodeError, match=r"\[args, kwargs\]"):
        m.args_kwargs({"json"})


def test_peek_id_of_a_partial_message():
    assert message.peek_id(msgpack.packb({"i": "abc"})) == "abc"
    assert message.peek_id(b"\xc1") is None


def test_json_serializer_extras():
    """Dates keep their type (kombu's typed JSON, tests/test_json_types.py); sets arrive as lists."""
    data = serializers.dumps({"d": datetime.date(2024, 1, 2), "s": {1}}, "json")
    assert serializers.loads(data, "json", {"json"}) == {"d": datetime.date(2024, 1, 2), "s": [1]}


def test_json_bodies_from_other_producers():
    """Whitespace around the value and UTF-16 are JSON too; trailing data or a cut body is an error."""
    for text in (b'[[1],{}]', b' [[1], {}]\n', "[[1],{}]".encode("utf-16")):
        assert serializers.loads(text, "json", {"json"}) == [[1], {}]
    for bad, why in ((b'[[1],{}] x', "Extra data"), (b'[[1],{', "Expecting"), (b'', "Expecting value")):
        with pytest.raises(DecodeError, match=why):
            serializers.loads(bad, "json", {"json"})


def test_celery_content_type_names_are_understood():
    assert serializers.canonical("application/json") == "json"
    assert serializers.canonical("application/x-msgpack") == "msgpack"
    with pytest.raises(ValueError, match="unknown serializer"):
        serializers.canonical("yaml")


def test_template_encodes_like_the_full_path():
    from minique.message import Template, decode, encode, make
    own = make("t.x", (1,), {"k": 2}, queue="q", priority=3, expires=5.0, root_id=None)
    own = own._replace(root_id=own.id)
    tmpl = Template(own)
    body = b'[[7], {}]'
    assert decode(tmpl.encode("id-2", body)) == own._replace(id="id-2", body=body, root_id="id-2")
    child = make("t.x", (), {}, root_id="r", parent_id="p")
    assert decode(Template(child).encode("id-3", body)) == child._replace(id="id-3", body=body)
    assert encode(own) == Template(own).encode(own.id, own.body)


def test_template_sets_or_drops_the_group_index():
    from minique.message import Template, decode, make
    member = make("t.x", (), {}, group_id="g", group_index=0)
    tmpl = Template(member)
    assert decode(tmpl.encode("a", member.body, 7)).group_index == 7
    assert decode(tmpl.encode("b", member.body, None)).group_index is None


def test_new_ids_are_distinct_uuid4_strings():
    import uuid
    ids = message.new_ids(500) + [message.new_id() for _ in range(10)]
    assert len(set(ids)) == 510
    for i in ids:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 4 and u.variant == uuid.RFC_4122
    assert message.new_ids(0) == []
