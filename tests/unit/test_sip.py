"""The SIP toolkit (orchestrator.sip): header helpers, responses, stream framing,
retransmission timing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import SipError
from orchestrator.sip import (
    T1,
    T2,
    T4,
    Retransmitter,
    StreamFramer,
    Timers,
    build_message,
    build_response,
    contact_uri,
    format_name_addr,
    is_loose_router,
    lenient_message,
    next_hop,
    parse_cseq,
    parse_name_addr,
    parse_sip_message,
    parse_uri,
    parse_via,
    quote_string,
    request_problem,
    request_target,
    route_set,
    route_uri,
    sip_safe,
    split_commas,
    tag_of,
    unquote_string,
)

INVITE = (
    b"INVITE sip:srs@127.0.0.1:5090 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKabc;rport\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKdef\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:siprec-src@127.0.0.1>;tag=src1\r\n"
    b"To: <sip:srs@127.0.0.1:5090>\r\n"
    b"Call-ID: siprec-1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Contact: <sip:siprec-src@127.0.0.1:5060>;+sip.src\r\n"
    b"Record-Route: <sip:10.0.0.9;lr>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


# --------------------------------------------------------------------------- header helpers

@pytest.mark.parametrize(("value", "expected"), [
    ("SIP/2.0/UDP 1.2.3.4:5060;branch=z9hG4bK1;rport",
     ("UDP", "1.2.3.4", 5060, "z9hG4bK1", True)),
    ("SIP/2.0/tcp host.example;branch=z9hG4bK2", ("TCP", "host.example", None, "z9hG4bK2", False)),
    ("SIP / 2.0 / UDP [2001:db8::1]:5070 ;branch=z9hG4bK3",
     ("UDP", "[2001:db8::1]", 5070, "z9hG4bK3", False)),
    ("SIP/2.0/UDP a:1;branch=z9hG4bK4, SIP/2.0/UDP b:2", ("UDP", "a", 1, "z9hG4bK4", False)),
])
def test_parse_via(value: str, expected: tuple[object, ...]) -> None:
    v = parse_via(value)
    assert (v.transport, v.host, v.port, v.branch, v.has_rport) == expected


@pytest.mark.parametrize("value", ["", "SIP/2.0 1.2.3.4", "HTTP/1.1/TCP a:1", "SIP/2.0/UDP a:99999"])
def test_parse_via_rejects(value: str) -> None:
    with pytest.raises(SipError):
        parse_via(value)


@pytest.mark.parametrize(("uri", "expected"), [
    ("sip:srs@127.0.0.1:5090", ("sip", "srs", "127.0.0.1", 5090, None, 5090)),
    ("sip:127.0.0.1;transport=TCP;lr", ("sip", None, "127.0.0.1", None, "tcp", 5060)),
    ("sips:a@example.com", ("sips", "a", "example.com", None, None, 5061)),
    ("SIP:x@[::1]:5062?Subject=hi", ("sip", "x", "[::1]", 5062, None, 5062)),
])
def test_parse_uri(uri: str, expected: tuple[object, ...]) -> None:
    u = parse_uri(uri)
    assert (u.scheme, u.user, u.host, u.port, u.transport, u.default_port()) == expected


@pytest.mark.parametrize("uri", ["tel:+1555", "sip:", "sip:a@b:0", "mailto:x@y"])
def test_parse_uri_rejects(uri: str) -> None:
    with pytest.raises(SipError):
        parse_uri(uri)


@pytest.mark.parametrize(("value", "expected"), [
    ("1 INVITE", (1, "INVITE")), ("  42   bye ", (42, "BYE")),
])
def test_parse_cseq(value: str, expected: tuple[int, str]) -> None:
    assert parse_cseq(value) == expected


@pytest.mark.parametrize("value", [None, "", "x INVITE", "1", "1 IN VITE", "2147483648 ACK"])
def test_parse_cseq_rejects(value: str | None) -> None:
    with pytest.raises(SipError):
        parse_cseq(value)


@pytest.mark.parametrize(("value", "tag"), [
    ("<sip:a@b>;tag=xyz", "xyz"), ('"x;tag=no" <sip:a@b;tag=no>;tag=yes', "yes"),
    ("sip:a@b;tag=bare", "bare"), ("<sip:a@b>", None), (None, None),
])
def test_tag_of(value: str | None, tag: str | None) -> None:
    assert tag_of(value) == tag


def test_split_commas_respects_quotes_and_brackets() -> None:
    assert split_commas('"a, b" <sip:x@y>, <sip:z@w;p=1,2>') == \
        ['"a, b" <sip:x@y>', "<sip:z@w;p=1,2>"]


def test_build_message_refuses_header_injection() -> None:
    with pytest.raises(SipError):
        build_message("SIP/2.0 200 OK", [("X", "a\r\nInjected: yes")])


# --------------------------------------------------------------------------- responses

def test_response_copies_headers_tags_to_and_marks_via() -> None:
    req = parse_sip_message(INVITE)
    data = build_response(req, 200, to_tag="srs9", headers=[("Contact", "<sip:srs@h>")],
                          body=b"v=0\r\n", received="127.0.0.1", rport=40000)
    resp = parse_sip_message(data)
    assert resp.status == 200 and resp.start_line == "SIP/2.0 200 OK"
    assert resp.header_all("via") == [
        "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKabc;rport=40000;received=127.0.0.1",
        "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKdef"]
    assert parse_name_addr(resp.header("to") or "").param("tag") == "srs9"
    assert (resp.header("from"), resp.header("call-id"), resp.header("cseq")) == \
        ("<sip:siprec-src@127.0.0.1>;tag=src1", "siprec-1", "7 INVITE")
    assert resp.header("content-type") == "application/sdp"
    assert resp.declared_length == len(resp.body) == 5


def test_100_has_no_to_tag_and_existing_tags_are_kept() -> None:
    req = parse_sip_message(INVITE)
    assert tag_of(parse_sip_message(build_response(req, 100, to_tag="t")).header("to")) is None
    in_dialog = parse_sip_message(INVITE.replace(b"To: <sip:srs@127.0.0.1:5090>",
                                                 b"To: <sip:srs@127.0.0.1:5090>;tag=old"))
    assert tag_of(parse_sip_message(build_response(in_dialog, 200, to_tag="new"))
                  .header("to")) == "old"


@pytest.mark.parametrize(("mutation", "problem"), [
    ((b"Call-ID: siprec-1\r\n", b""), "missing call-id header"),
    ((b"CSeq: 7 INVITE", b"CSeq: 7 BYE"), "does not match"),
    ((b"CSeq: 7 INVITE", b"CSeq: seven INVITE"), "malformed CSeq"),
    ((b"From: <sip:siprec-src@127.0.0.1>", b"From: <sip:siprec-src@127.0.0.1"), "missing '>'"),
    ((b"SIP/2.0/UDP 10.0.0.5:5060", b"SIP/3.0/UDP 10.0.0.5:5060"), "malformed Via"),
    ((b"Call-ID: siprec-1", b"Call-ID: siprec\x00-1"), "call-id header contains NUL"),
])
def test_request_problem(mutation: tuple[bytes, bytes], problem: str) -> None:
    msg = parse_sip_message(INVITE.replace(*mutation))
    assert problem in (request_problem(msg) or "")


def test_request_problem_none_for_a_good_request() -> None:
    assert request_problem(parse_sip_message(INVITE)) is None


def test_lenient_message_skips_bad_lines_and_needs_the_reply_headers() -> None:
    broken = INVITE.replace(b"Max-Forwards: 70\r\n", b"this is not a header\r\n")
    with pytest.raises(SipError):
        parse_sip_message(broken)
    msg = lenient_message(broken)
    assert msg is not None and msg.method == "INVITE" and msg.header("call-id") == "siprec-1"
    assert parse_sip_message(build_response(msg, 400)).status == 400
    assert lenient_message(INVITE.replace(b"CSeq: 7 INVITE\r\n", b"")) is None
    assert lenient_message(b"\x00garbage") is None
    assert lenient_message(b"SIP/2.0 200 OK\r\n\r\n") is None  # never answer a response


# --------------------------------------------------------------------------- TCP framing

def test_framer_splits_by_content_length_across_chunks() -> None:
    body_msg = INVITE.replace(b"Content-Length: 0", b"Content-Length: 4") + b"abcd"
    stream = b"\r\n\r\n" + INVITE + body_msg + INVITE[:30]
    f = StreamFramer()
    out = []
    for i in range(0, len(stream), 7):  # byte-dribbled
        out += f.feed(stream[i:i + 7])
    assert out == [INVITE, body_msg]
    assert f.feed(INVITE[30:]) == [INVITE]


@pytest.mark.parametrize(("data", "error"), [
    (b"OPTIONS sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n", "without Content-Length"),
    (b"OPTIONS sip:a SIP/2.0\r\nContent-Length: x1\r\n\r\n", "not a number"),
    (b"OPTIONS sip:a SIP/2.0\r\nl: 99999999\r\n\r\n", "exceeds"),
])
def test_framer_errors_keep_earlier_messages_and_the_bad_head(data: bytes, error: str) -> None:
    f = StreamFramer()
    assert f.feed(INVITE + data) == [INVITE]
    assert error in (f.error or "")
    assert f.broken_head is not None and f.broken_head.startswith(b"OPTIONS sip:a")
    with pytest.raises(SipError):
        f.feed(b"more")


def test_framer_bounds_the_header_block() -> None:
    f = StreamFramer()
    f.max_header = 100
    assert f.feed(b"X" * 101) == []
    assert "header block longer" in (f.error or "")


# --------------------------------------------------------------------------- retransmission

def test_2xx_retransmission_doubles_to_t2_until_64_t1() -> None:
    # RFC 3261 §13.3.1.4: T1, 2T1, 4T1, then T2 (4 s) until 64*T1 = 32 s
    assert Retransmitter(100.0).schedule() == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5,
                                               27.5, 31.5]


def test_invite_timer_a_doubles_without_cap_until_timer_b() -> None:
    # RFC 3261 §17.1.1.2: Timer A doubles; Timer B = 64*T1
    assert Retransmitter(0.0, t2=None).schedule() == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert Retransmitter(0.0, t1=0.05, t2=None, timeout=1.0).schedule() == \
        [0.05, 0.15, 0.35, 0.75]


def test_retransmitter_poll_sequence() -> None:
    r = Retransmitter(10.0, t1=1.0, t2=2.0, timeout=6.0)
    table = [(10.5, "wait"), (11.0, "send"), (11.5, "wait"), (13.0, "send"), (14.9, "wait"),
             (15.0, "send"), (16.0, "expired")]
    assert [(now, r.poll(now)) for now, _ in table] == table
    assert r.sent == 4


def test_retransmitter_catches_up_one_step_per_poll() -> None:
    r = Retransmitter(0.0, t1=1.0, t2=4.0, timeout=64.0)
    assert r.poll(10.0) == "send"  # a late poll sends once and moves on by one interval
    assert r.next_at == 3.0 and r.wake_at() == 3.0


# --------------------------------------------------------------------------- fuzz

@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_framer_never_raises_anything_but_sip_error(chunks: list[bytes]) -> None:
    f = StreamFramer()
    for chunk in chunks:
        try:
            for m in f.feed(chunk):
                assert b"\r\n\r\n" in m
        except SipError:
            assert f.error is not None
            return


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([b"", INVITE[:120], INVITE]))
def test_lenient_message_and_request_problem_never_crash(junk: bytes, prefix: bytes) -> None:
    data = prefix + junk
    msg = lenient_message(data)
    if msg is not None:
        build_response(msg, 400)
    try:
        parsed = parse_sip_message(data)
    except SipError:
        return
    if parsed.method is not None:
        request_problem(parsed)


# --------------------------------------------------------------------------- CR/LF guard, name-addr

@pytest.mark.parametrize("bad", ["x\r\nVia: evil", "tag\n", "a\0b", "\r"])
def test_sip_safe_refuses_cr_lf_nul(bad: str) -> None:
    assert sip_safe("fine; tag=1", "value") == "fine; tag=1"
    with pytest.raises(SipError, match="value contains CR, LF or NUL"):
        sip_safe(bad, "value")


@pytest.mark.parametrize(("start", "headers"), [
    ("SIP/2.0 200 OK", [("X", "a\0b")]), ("SIP/2.0 200 OK", [("X\r\nY", "1")]),
    ("OPTIONS sip:a SIP/2.0\r\nX: injected", []),
])
def test_build_message_refuses_nul_and_crlf_anywhere(start: str,
                                                      headers: list[tuple[str, str]]) -> None:
    with pytest.raises(SipError):
        build_message(start, headers)


@pytest.mark.parametrize(("display", "quoted"), [
    ('Alice "Al" Smith', r'"Alice \"Al\" Smith"'), ("back\\slash", r'"back\\slash"'),
    ("tab\tok", '"tab\tok"'), ("bell\x07", '"bell\\\x07"'), ("Zoë", '"Zoë"'),
])
def test_quote_string_escapes_quoted_pairs(display: str, quoted: str) -> None:
    assert quote_string(display) == quoted
    assert unquote_string(quoted) == display


def test_format_name_addr() -> None:
    assert format_name_addr("sip:a@b") == "<sip:a@b>"
    assert format_name_addr("sip:a@b;transport=tcp", 'A "x"', (("tag", "t1"), ("+sip.src", None))) \
        == r'"A \"x\"" <sip:a@b;transport=tcp>;tag=t1;+sip.src'
    for uri, display in (("sip:a@b>", None), ("sip:a b@c", None), ("sip:a@b", "x\r\ny")):
        with pytest.raises(SipError):
            format_name_addr(uri, display)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\r\n\0",
                                      blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_name_addr_round_trip(display: str) -> None:
    value = format_name_addr("sip:alice@example.com", display, (("tag", "t1"),))
    na = parse_name_addr(value)
    assert (na.display, na.uri, na.param("tag")) == (display, "sip:alice@example.com", "t1")
    assert tag_of(value) == "t1"
    assert split_commas(value + ", <sip:b@c>") == [value, "<sip:b@c>"]
    assert parse_name_addr(na.format()) == na


def test_contact_uri_takes_the_first_contact() -> None:
    assert contact_uri('"a, b" <sip:x@y;transport=tcp>;+sip.src, <sip:z@w>') == \
        "sip:x@y;transport=tcp"
    with pytest.raises(SipError):
        contact_uri("")


def test_response_copies_record_route_when_asked() -> None:
    req = parse_sip_message(INVITE.replace(b"Record-Route: <sip:10.0.0.9;lr>\r\n",
                                           b"Record-Route: <sip:10.0.0.9;lr>, <sip:10.0.0.8;lr>\r\n"))
    assert parse_sip_message(build_response(req, 200)).header("record-route") is None
    resp = parse_sip_message(build_response(req, 200, to_tag="t", record_route=True))
    assert resp.header_all("record-route") == ["<sip:10.0.0.9;lr>, <sip:10.0.0.8;lr>"]


# --------------------------------------------------------------------------- route sets

def test_route_set_is_record_route_in_order_for_the_uas_reversed_for_the_uac() -> None:
    rr = ["<sip:p1.example;lr>, <sip:p2.example;lr;r2=on>", "<sip:p3.example;lr>;x=1"]
    uas = ("<sip:p1.example;lr>", "<sip:p2.example;lr;r2=on>", "<sip:p3.example;lr>;x=1")
    assert route_set(rr, uac=False) == uas
    assert route_set(rr, uac=True) == tuple(reversed(uas))
    assert route_set([], uac=True) == ()
    assert [route_uri(r) for r in uas] == ["sip:p1.example;lr", "sip:p2.example;lr;r2=on",
                                           "sip:p3.example;lr"]


@pytest.mark.parametrize(("route", "loose"), [
    ("<sip:p1.example;lr>", True), ("<sip:p1.example;LR=on;transport=tcp>", True),
    ("sip:10.0.0.1;lr", True), ("<sip:p1.example;transport=udp>", False),
    ("<sip:p1.example>;lr", False),  # a header parameter, not the URI's
    ("<sip:p1.example;lrx=1>", False), ("<sip:lr.example;ftag=a;lr2>", False),
    ("<sip:a@b;x=1;lr?h=v>", True), ("<tel:+1555;lr>", False), ("garbage;lr", False),
])
def test_loose_router_is_the_uris_own_lr_parameter(route: str, loose: bool) -> None:
    assert is_loose_router(route) is loose


def test_request_target_loose_and_strict_routing() -> None:
    target = "sip:srs@10.0.0.5:5090"
    assert request_target([], target) == (target, [])
    loose = ["<sip:p1;lr>", "<sip:p2;lr>"]
    assert request_target(loose, target) == (target, loose)
    # RFC 3261 §12.2.1.1: a strict router becomes the Request-URI, the target the last Route
    assert request_target(["<sip:p1>", "<sip:p2;lr>"], target) == \
        ("sip:p1", ["<sip:p2;lr>", f"<{target}>"])
    assert next_hop(loose, target).host == "p1"
    assert next_hop([], target).default_port() == 5090


# --------------------------------------------------------------------------- timers

def test_timers_table() -> None:
    t = Timers()
    assert t.invite_request(0.0).schedule() == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # Timer A, B
    assert t.non_invite_request(0.0).schedule() == \
        [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]  # Timer E to T2, F
    assert t.invite_response(0.0).schedule() == t.non_invite_request(0.0).schedule()  # G, H
    assert (t.timer_b, t.timer_h, T1, T2, T4) == (32.0, 32.0, 0.5, 4.0, 5.0)
    assert Timers(0.05, 0.4, transaction=1.0).request("INVITE", 0.0).schedule() == \
        [0.05, 0.15, 0.35, 0.75]
    assert Timers(0.05, 0.4, transaction=1.0).request("BYE", 0.0).schedule() == \
        [0.05, 0.15, 0.35, 0.75]


def test_reliable_transport_only_waits_and_provisional_stops_timer_a() -> None:
    r = Timers().invite_request(0.0, reliable=True)
    assert [r.poll(now) for now in (0.5, 1.5, 31.9, 32.0)] == ["wait", "wait", "wait", "expired"]
    a = Timers().invite_request(0.0)
    assert a.poll(0.5) == "send"
    a.stop_retransmitting()  # a 1xx: Proceeding (RFC 3261 §17.1.1.2)
    assert a.wake_at() == 32.0 and a.poll(20.0) == "wait"
