"""NG codec: bytes in → values out, malformed input → NgProtocolError with an offset."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import NgProtocolError
from orchestrator.ng.codec import (
    CookieJar,
    StreamDecoder,
    bencode_decode,
    bencode_encode,
    bencode_end,
    decode_body,
    decode_message,
    encode_message,
    json_decode,
    json_document,
    json_encode,
    ng_value,
    split_cookie,
    text,
)

# ----------------------------------------------------------------------------- tables
ENCODE = [
    ({"command": "ping"}, b"d7:command4:pinge"),
    ({"b": 1, "a": [b"x", -2]}, b"d1:al1:xi-2ee1:bi1ee"),  # keys sorted (bencode spec)
    ({"sdp": b"\xff\x00\r\n"}, b"d3:sdp4:\xff\x00\r\ne"),  # any bytes
    ({"k": "é"}, b"d1:k2:\xc3\xa9e"),
    ({}, b"de"),
    ({"l": [[], {}]}, b"d1:llledeee"),
]


@pytest.mark.parametrize(("value", "wire"), ENCODE)
def test_bencode_table(value: dict, wire: bytes) -> None:
    assert bencode_encode(value) == wire
    assert bencode_decode(wire) == _norm(value)


def test_decode_keeps_bytes_and_text_helper() -> None:
    d = bencode_decode(b"d3:sdp3:\xff\xfeA6:result2:oke")
    assert d == {b"sdp": b"\xff\xfeA", b"result": b"ok"}
    s = text(d[b"sdp"])
    assert s.encode("utf-8", "surrogateescape") == b"\xff\xfeA"  # lossless


MALFORMED_BENCODE = [
    (b"d7:command4:pin", 10, "exceeds"),  # truncated string
    (b"d7:command", 10, "truncated"),  # value missing
    (b"d3:abci1e", 9, "unterminated dictionary"),
    (b"d99999999999999999999:xe", 1, "exceeds"),  # huge length prefix, no allocation
    (b"di1e1:ae", 1, "key is not a string"),
    (b"d1:ai1x2ee", 5, "invalid integer"),
    (b"d1:ai-e", 5, "invalid integer"),
    (b"d1:ai 1ee", 5, "invalid integer"),  # int() would accept the space
    (b"d1:a1_0:xe", 4, "invalid string length"),
    (b"d1:ax", 4, "unexpected byte"),
    (b"d1:a1:be trailing", 8, "trailing"),
    (b"d1:a" + b"l" * 200 + b"e" * 201, 67, "nested too deeply"),
]


@pytest.mark.parametrize(("wire", "offset", "message"), MALFORMED_BENCODE)
def test_malformed_bencode(wire: bytes, offset: int, message: str) -> None:
    with pytest.raises(NgProtocolError) as ei:
        bencode_decode(wire)
    assert ei.value.offset == offset
    assert message in str(ei.value)


def test_json_bytes_safe_roundtrip() -> None:
    value = {"sdp": b"v=0\r\n\xff\x80", "n": 5, "l": [b"a", [b"\xc3"]]}
    wire = json_encode(value)
    assert wire.startswith(b"{") and b"\xff\x80" in wire  # raw bytes kept, not re-encoded
    assert json_decode(wire) == {b"sdp": b"v=0\r\n\xff\x80", b"n": 5, b"l": [b"a", [b"\xc3"]]}


@pytest.mark.parametrize(("wire", "message"), [
    (b'c ["a"]', "neither bencode nor JSON"),  # non-dict JSON
    (b'c "a"', "neither bencode nor JSON"),
    (b'c {"a": 1', "JSON"),
    (b'c {"a": 1} x', "Extra data"),
    (b"c li1ee", "neither bencode nor JSON"),
    (b"c ", "empty body"),
    (b"nocookie", "without a cookie"),
    (b" d1:a1:be", "without a cookie"),
])
def test_malformed_messages(wire: bytes, message: str) -> None:
    with pytest.raises(NgProtocolError, match=message):
        decode_message(wire)


def test_json_error_offset_is_in_bytes() -> None:
    with pytest.raises(NgProtocolError) as ei:
        json_decode('{"é": x}'.encode())
    assert ei.value.offset == 7  # 'é' is two bytes; JSON reported character 6


def test_message_framing() -> None:
    wire = encode_message(b"ck_1", {"command": "ping"})
    assert wire == b"ck_1 d7:command4:pinge"
    assert decode_message(wire) == (b"ck_1", {b"command": b"ping"}, "bencode")
    jw = encode_message(b"ck_2", {"command": "ping"}, "json")
    assert jw == b'ck_2 {"command":"ping"}'
    assert decode_message(jw)[2] == "json"
    assert split_cookie(b"abc d1:a1:be") == (b"abc", 4)


def test_bencode_end_incomplete_and_complete() -> None:
    msg = b"d6:result4:ponge"
    assert bencode_end(msg) == len(msg)
    for i in range(1, len(msg)):
        assert bencode_end(msg[:i]) is None, i
    with pytest.raises(NgProtocolError):
        bencode_end(b"d1:ax")


def test_stream_decoder_splits_any_chunking() -> None:
    a = encode_message(b"c1", {"result": "pong"})
    b = encode_message(b"c2", {"result": "ok", "sdp": b"x" * 3000})
    stream = a + b
    for step in (1, 7, 1000, len(stream)):
        dec = StreamDecoder()
        got = []
        for i in range(0, len(stream), step):
            got += list(dec.feed(stream[i:i + step]))
        assert [c for c, _ in got] == [b"c1", b"c2"]
        assert decode_body(got[1][1])[0][b"sdp"] == b"x" * 3000
        assert dec.pending == 0


def test_stream_decoder_rejects_json_and_huge_messages() -> None:
    with pytest.raises(NgProtocolError, match="not a bencode"):
        list(StreamDecoder().feed(b'c1 {"result":"ok"}'))
    with pytest.raises(NgProtocolError, match="larger than"):
        list(StreamDecoder(max_message=1000).feed(b"c1 d3:sdp999999:"))


def test_duplicate_keys_after_normalisation_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        bencode_encode({"a": 1, b"a": 2})


def test_cookies_unique_and_prefixed() -> None:
    a, b = CookieJar(), CookieJar()
    ca = {a.next() for _ in range(1000)}
    assert len(ca) == 1000
    assert a.prefix != b.prefix
    assert b" " not in a.next()


# ----------------------------------------------------------------------------- properties
keys = st.binary(max_size=12)  # str keys are in the tables (b"a" and "a" would collide)
leaves = st.one_of(st.binary(max_size=40), st.integers(min_value=-(2**70), max_value=2**70),
                   st.text(max_size=20))
values = st.recursive(leaves, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25)
dicts = st.dictionaries(keys, values, max_size=6)


def _norm(v: object) -> object:
    """The decoded form of an encodable value: str → UTF-8 bytes, tuple → list."""
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape")
    if isinstance(v, dict):
        return {_norm(k): _norm(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


@given(dicts)
@settings(max_examples=300, deadline=None)
def test_bencode_roundtrip(d: dict) -> None:
    wire = bencode_encode(d)
    assert bencode_decode(wire) == _norm(d)
    assert bencode_end(wire) == len(wire)


@given(dicts)
@settings(max_examples=300, deadline=None)
def test_json_roundtrip_bytes_safe(d: dict) -> None:
    assert json_decode(json_encode(d)) == _norm(d)


@given(dicts)
@settings(max_examples=300, deadline=None)
def test_json_document_then_ng_value_equals_json_decode(d: dict) -> None:
    wire = json_encode(d)
    assert ng_value(json_document(wire)) == json_decode(wire) == _norm(d)


def test_json_document_keeps_str_and_types_errors() -> None:
    doc = json_document(b'{"sdp":"v=0\\r\\n\xff","n":[1,{"a":null}]}')  # raw byte 0xff
    assert doc == {"sdp": "v=0\r\n\udcff", "n": [1, {"a": None}]}
    assert ng_value(doc) == {b"sdp": b"v=0\r\n\xff", b"n": [1, {b"a": None}]}
    assert json_document(b' {"a": 1} ') == {"a": 1}  # whitespace: the slow path accepts it
    with pytest.raises(NgProtocolError, match="not a dictionary"):
        json_document(b"[1]")
    with pytest.raises(NgProtocolError) as ei:
        json_document(b'{"a":1}x')
    assert ei.value.offset == 7
    with pytest.raises(NgProtocolError) as ei:
        json_document('{"é": x}'.encode(), 0)
    assert ei.value.offset == 7  # in bytes (the character offset is 6)
    with pytest.raises(NgProtocolError):
        json_document(b"")
    with pytest.raises(NgProtocolError):
        json_document(b"[" * 100000)


@given(st.binary(max_size=300))
@settings(max_examples=1000, deadline=None)
def test_decode_raises_only_protocol_errors(data: bytes) -> None:
    for fn in (decode_message, lambda b: decode_body(b), bencode_decode, json_decode,
               json_document):
        try:
            fn(data)
        except NgProtocolError:
            pass


@given(dicts, st.integers(min_value=0, max_value=400), st.binary(max_size=4))
@settings(max_examples=500, deadline=None)
def test_mutated_messages_raise_only_protocol_errors(d: dict, cut: int, junk: bytes) -> None:
    wire = encode_message(b"ck", d)
    for mutated in (wire[:cut], wire[:cut] + junk + wire[cut:], wire[:cut] + junk):
        try:
            decode_message(mutated)
        except NgProtocolError:
            pass
        try:
            list(StreamDecoder().feed(mutated))
        except NgProtocolError:
            pass
