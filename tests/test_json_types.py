"""JSON with types: bytes, datetime, date, time, Decimal and UUID round-trip through the json
serializer in kombu's {"__type__", "__value__"} shape (pure, no Redis; the table is in docs/protocol.md).

KOMBU_TEXT is what kombu 5.7's `kombu.utils.json.dumps(VALUES, separators=(",", ":"),
ensure_ascii=False)` writes, byte for byte (kombu is not a test dependency: the text is kept here)."""
import datetime
import decimal
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from minique import message, serializers
from minique.display import describe_for_display
from minique.exceptions import DecodeError

UTC = datetime.timezone.utc
PLUS2 = datetime.timezone(datetime.timedelta(hours=2))
VALUES = [b"abc", b"\xff\x00", "é".encode(), datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
          datetime.datetime(2024, 1, 2, tzinfo=UTC), datetime.datetime(2024, 7, 1, 12, tzinfo=PLUS2),
          datetime.date(2024, 1, 2), datetime.time(1, 2, 3), datetime.time(1, 2, 3, 400),
          decimal.Decimal("1.10"), decimal.Decimal("-1E+5"), uuid.UUID("03c5a5fa-f960-4256-b86a-b76020ffb1d5"),
          {"k": [b"z"], "n": None}]
KOMBU_TEXT = (
    '[{"__type__":"bytes","__value__":"abc"},{"__type__":"base64","__value__":"/wA="},'
    '{"__type__":"bytes","__value__":"é"},{"__type__":"datetime","__value__":"2024-01-02T03:04:05.000006"},'
    '{"__type__":"datetime","__value__":"2024-01-02T00:00:00+00:00"},'
    '{"__type__":"datetime","__value__":"2024-07-01T12:00:00+02:00"},{"__type__":"date","__value__":"2024-01-02"},'
    '{"__type__":"time","__value__":"01:02:03"},{"__type__":"time","__value__":"01:02:03.000400"},'
    '{"__type__":"decimal","__value__":"1.10"},{"__type__":"decimal","__value__":"-1E+5"},'
    '{"__type__":"uuid","__value__":{"hex":"03c5a5faf9604256b86ab76020ffb1d5"}},'
    '{"k":[{"__type__":"bytes","__value__":"z"}],"n":null}]')


def loads(data):
    return serializers.loads(data, "json", {"json"})


def test_minique_writes_what_kombu_writes():
    assert serializers.dumps(VALUES, "json") == KOMBU_TEXT.encode()


def test_what_kombu_writes_reads_back_as_the_same_typed_values():
    got = loads(KOMBU_TEXT.encode())
    assert got == VALUES
    assert [type(v) for v in got] == [type(v) for v in VALUES]
    assert got[5].utcoffset() == datetime.timedelta(hours=2) and got[3].tzinfo is None
    assert str(got[9]) == "1.10"  # exact, trailing zero kept


def test_a_zone_comes_back_as_its_fixed_offset_and_bytearray_as_bytes():
    """As with kombu: isoformat keeps the offset, not the zone's name."""
    zone = datetime.timezone(datetime.timedelta(hours=-5), "EST")
    when = datetime.datetime(2024, 1, 1, 9, tzinfo=zone)
    back, raw = loads(serializers.dumps([when, bytearray(b"\x01\x02")], "json"))
    assert back == when and back.utcoffset() == datetime.timedelta(hours=-5)
    assert raw == b"\x01\x02" and type(raw) is bytes


def test_sets_travel_as_lists_and_other_objects_are_a_clear_type_error():
    assert loads(serializers.dumps({"s": frozenset({1})}, "json")) == {"s": [1]}
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        serializers.dumps([object()], "json")


@pytest.mark.parametrize("text, why", [
    ('{"__type__":"complex","__value__":"1+2j"}', "unsupported __type__ 'complex'"),
    ('{"__type__":7,"__value__":1}', "unsupported __type__ 7"),
    ('{"__type__":"datetime","__value__":"yesterday"}', "Invalid isoformat string"),
    ('{"__type__":"datetime","__value__":5}', "__value__ is a int, not a string"),
    ('{"__type__":"decimal","__value__":"one"}', "cannot decode json body"),
    ('{"__type__":"uuid","__value__":"03c5a5fa"}', "a uuid's __value__ is a map"),
    ('{"__type__":"uuid","__value__":{"hex":"zz"}}', "hexadecimal"),
])
def test_a_typed_map_that_does_not_parse_is_a_decode_error_saying_why(text, why):
    """As in kombu an unknown __type__ is an error (never silently a dict): the worker dead-letters the message."""
    with pytest.raises(DecodeError, match=why):
        loads(("[[" + text + "],{}]").encode())


def test_only_a_map_of_exactly_the_two_keys_is_a_typed_value():
    for plain in ({"__type__": "bytes"}, {"__value__": "x"}, {"__type__": "bytes", "__value__": "x", "more": 1},
                  {"type": "bytes", "value": "x"}):
        assert loads(serializers.dumps(plain, "json")) == plain


def test_a_body_read_from_utf16_json_is_typed_too():
    text = '[[{"__type__":"date","__value__":"2024-01-02"}],{}]'
    assert loads(text.encode("utf-16")) == [[datetime.date(2024, 1, 2)], {}]


def test_the_msgpack_serializer_is_unchanged():
    """msgpack carries bytes natively; dates, UUIDs and decimals stay strings there."""
    data = serializers.dumps([b"\x00", datetime.date(2024, 1, 2), decimal.Decimal("1.5"),
                              uuid.UUID(int=1)], "msgpack")
    assert serializers.loads(data, "msgpack", {"msgpack"}) == [b"\x00", "2024-01-02", "1.5",
                                                                "00000000-0000-0000-0000-000000000001"]


def test_typed_arguments_in_a_message_and_on_display():
    args = (b"\xff", datetime.datetime(2024, 1, 2, tzinfo=UTC), uuid.UUID(int=5), decimal.Decimal("0.1"))
    msg = message.make("t.typed", args, {"on": datetime.date(2024, 1, 2)}, "json")
    assert message.decode(msg.encode()).args_kwargs({"json"}) == (list(args), {"on": datetime.date(2024, 1, 2)})
    shown = describe_for_display(msg.encode(), None)
    assert shown["problem"] is None and shown["args"] == list(args)
    assert shown["kwargs"] == {"on": datetime.date(2024, 1, 2)}


_TZ = st.sampled_from([None, UTC, PLUS2, datetime.timezone(datetime.timedelta(hours=-9, minutes=-30))])
TYPED = (st.binary(max_size=24) | st.datetimes(timezones=_TZ) | st.dates() | st.times(timezones=_TZ)
         | st.decimals(allow_nan=False, allow_infinity=False) | st.uuids())
PLAIN = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
NESTED = st.recursive(TYPED | PLAIN, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(NESTED)
def test_any_nesting_of_typed_and_plain_values_round_trips(value):
    back = loads(serializers.dumps(value, "json"))
    assert back == value
    assert _shape(back) == _shape(value)


def _shape(value):
    """Types all the way down (== alone says 1 == 1.0 and misses a datetime's offset)."""
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, (datetime.datetime, datetime.time)):
        return type(value), value.utcoffset() if isinstance(value, datetime.datetime) else value.tzinfo
    return type(value)
