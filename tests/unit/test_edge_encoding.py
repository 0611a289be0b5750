"""The edge's percent-encoding of SIP-derived values and its decoders."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import EvapiProtocolError, RecordingError
from orchestrator.recordings import (
    decode_metadata,
    decode_text,
    decode_uri,
    decode_value,
    original_bytes,
    readable,
)


def kamailio_encode(data: bytes) -> str:
    """What the generated config's {s.urlencode.param}{s.replace,+,%20} writes (lowercase
    hex; ASCII alnum and -._~ kept, C locale)."""
    keep = b"-._~"
    out = []
    for b in data:
        if (48 <= b <= 57) or (65 <= b <= 90) or (97 <= b <= 122) or b in keep:
            out.append(chr(b))
        else:
            out.append(f"%{b:02x}")
    return "".join(out)


@pytest.mark.parametrize(("encoded", "raw"), [
    # seen on the wire from Kamailio 5.6.3 (tests/integration/test_edge.py sends these)
    ("sip%3aal%ffice%40example.com", b"sip:al\xffice@example.com"),
    ("Caf%e9%20%5c%20x%22%20a%01", b'Caf\xe9 \\ x" a\x01'),
    ("C-1%20%01%7cx%3a%c3%a9%2b%25", "C-1 \x01|x:é+%".encode()),
    ("", b""),
    # an older config's {s.escape.param}: these characters were left as they are
    ("sip:+44(1)!*'$&[]/x", b"sip:+44(1)!*'$&[]/x"),
    ("%2B%2b", b"++"),
])
def test_decode_value(encoded: str, raw: bytes) -> None:
    assert decode_value(encoded) == raw


@pytest.mark.parametrize(("encoded", "message"), [
    ("abc%zz", "value: not percent-encoded at offset 3: '%zz'"),
    ("ab%4", "value: not percent-encoded at offset 2: '%4'"),
    ("a b", "value: not percent-encoded at offset 1: ' b'"),
    ("é", "value: not percent-encoded at offset 0: 'é'"),
    ("x\x01", "value: not percent-encoded at offset 1: '\\x01'"),
])
def test_decode_value_refuses_what_the_edge_never_writes(encoded: str, message: str) -> None:
    with pytest.raises(RecordingError) as exc:
        decode_value(encoded)
    assert str(exc.value) == message


def test_decode_value_error_class_and_name_chosen_by_the_caller() -> None:
    with pytest.raises(EvapiProtocolError, match=r"^event field 'from': not percent-encoded"):
        decode_value("%", what="event field 'from'", error=EvapiProtocolError)


@pytest.mark.parametrize(("raw", "text"), [
    ("Müller".encode(), "Müller"),
    (b"Caf\xe9", "Caf%e9"),                      # Latin-1, not UTF-8
    (b"A\x00B\tC\x7f", "A%00B%09C%7f"),           # controls
    ("\u0085".encode(), "%c2%85"),                # a C1 control
    ("\ufffe".encode(), "%ef%bf%be"),             # not a character XML 1.0 allows
    (b"100%", "100%25"),                          # % itself, so nothing is ambiguous
    (b"\xed\xa0\x80", "%ed%a0%80"),               # an encoded surrogate is not UTF-8
    (b'A"B \\ <x>&', 'A"B \\ <x>&'),              # printable: left to the XML/JSON layer
])
def test_readable(raw: bytes, text: str) -> None:
    assert readable(raw) == text
    assert original_bytes(text) == raw


def _xml_char(c: str) -> bool:
    cp = ord(c)
    return cp in (0x9, 0xA, 0xD) or 0x20 <= cp <= 0xD7FF or 0xE000 <= cp <= 0xFFFD \
        or 0x10000 <= cp <= 0x10FFFF


@given(st.binary(max_size=200))
def test_any_bytes_survive_the_edge_and_stay_readable(data: bytes) -> None:
    encoded = kamailio_encode(data)
    assert encoded.isascii() and " " not in encoded and "|" not in encoded and ":" not in encoded
    # it is RFC 3986 percent-encoding (Python's quote, hex digits in lowercase)
    assert encoded == re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(),
                             quote(data, safe="-._~"))
    assert decode_value(encoded) == data
    text = decode_text(encoded)
    assert original_bytes(text) == data
    assert all(_xml_char(c) for c in text)
    text.encode("utf-8")  # no lone surrogates (UnicodeEncodeError): JSON- and XML-safe


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs"),
                             blacklist_characters="%\ufffe\uffff"), max_size=100))
def test_printable_utf8_is_left_alone(printable: str) -> None:
    assert readable(printable.encode()) == printable


def test_decode_metadata_of_an_edge_recording() -> None:
    meta = ("call-id:1-6003%40127.0.0.1|from:sip%3a%2b44%ff%40h|to:sip%3abob%40h"
            "|from-name:A%22B|rule:default|edge:edge1|x-customer-id:C-1%20%7c%3ax")
    assert decode_metadata(meta) == {
        "call-id": "1-6003@127.0.0.1", "from": "sip:+44%ff@h", "to": "sip:bob@h",
        "from-name": 'A"B', "rule": "default", "edge": "edge1", "x-customer-id": "C-1 |:x"}
    with pytest.raises(RecordingError, match=r"^metadata 'from': not percent-encoded"):
        decode_metadata("from:a b|to:x")


@pytest.mark.parametrize(("encoded", "uri"), [
    ("sip%3a%2b44%ff1%40example.com", "sip:+44%ff1@example.com"),
    ("sip%3aa%2520b%40h", "sip:a%20b@h"),                  # the URI's own escape kept
    ("sip%3aag%01ent%40h", "sip:ag%01ent@h"),
    ("sip%3aM%c3%bcller%40h", "sip:M%c3%bcller@h"),         # a URI has no raw UTF-8
    ("sip%3aa%20b%40h", "sip:a%20b@h"),
])
def test_decode_uri(encoded: str, uri: str) -> None:
    assert decode_uri(encoded) == uri
