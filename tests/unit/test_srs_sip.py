"""The reference SRS's side of the recording session dialog (lab.srs.sip)."""

from __future__ import annotations

import pytest

from orchestrator.errors import SipError
from orchestrator.lab.srs.sip import Dialog
from orchestrator.sip import parse_sip_message
from tests.unit.test_sip import INVITE

# --------------------------------------------------------------------------- dialog

def test_dialog_requests_reverse_the_parties() -> None:
    d = Dialog.from_invite(parse_sip_message(INVITE), "srs-tag", "udp")
    assert (d.remote_tag, d.remote_cseq, d.route_set) == ("src1", 7, ("<sip:10.0.0.9;lr>",))
    assert d.next_hop() == ("10.0.0.9", 5060)  # loose routing: the first route
    bye = d.request("BYE", sent_by=("127.0.0.1", 5090))
    msg = parse_sip_message(bye.data)
    assert msg.start_line == "BYE sip:siprec-src@127.0.0.1:5060 SIP/2.0"
    assert msg.header("from") == "<sip:srs@127.0.0.1:5090>;tag=srs-tag"
    assert msg.header("to") == "<sip:siprec-src@127.0.0.1>;tag=src1"
    assert msg.header("cseq") == "1 BYE" and bye.cseq == 1
    assert msg.header("route") == "<sip:10.0.0.9;lr>"
    assert msg.header("via") == f"SIP/2.0/UDP 127.0.0.1:5090;branch={bye.branch};rport"
    assert bye.branch.startswith("z9hG4bK")
    inv = d.request("INVITE", sent_by=("127.0.0.1", 5090), contact="<sip:srs@h>;+sip.srs",
                    body=b"v=0\r\n")
    assert inv.cseq == 2 and inv.branch != bye.branch
    assert parse_sip_message(inv.data).header("content-type") == "application/sdp"


def test_dialog_acks() -> None:
    d = Dialog.from_invite(parse_sip_message(INVITE.replace(b"Record-Route: <sip:10.0.0.9;lr>\r\n",
                                                            b"")), "t", "tcp")
    assert d.next_hop() == ("127.0.0.1", 5060)
    ack2xx = parse_sip_message(d.ack(5, sent_by=("h", 1)))
    assert ack2xx.header("cseq") == "5 ACK" and "TCP h:1" in (ack2xx.header("via") or "")
    hop = parse_sip_message(d.ack(5, sent_by=("h", 1), branch="z9hG4bKsame",
                                  to_value="<sip:x@y>;tag=z"))
    assert "branch=z9hG4bKsame" in (hop.header("via") or "")
    assert hop.header("to") == "<sip:x@y>;tag=z"


def test_dialog_target_refresh_ignores_a_bad_contact() -> None:
    d = Dialog.from_invite(parse_sip_message(INVITE), "t", "udp")
    d.refresh_target(parse_sip_message(INVITE.replace(b"127.0.0.1:5060>", b"127.0.0.2:5070>")))
    assert d.remote_target == "sip:siprec-src@127.0.0.2:5070"
    d.refresh_target(parse_sip_message(INVITE.replace(b"<sip:siprec-src@127.0.0.1:5060>",
                                                      b"<tel:+1555>")))
    assert d.remote_target == "sip:siprec-src@127.0.0.2:5070"


@pytest.mark.parametrize(("mutation", "error"), [
    ((b"Contact: <sip:siprec-src@127.0.0.1:5060>;+sip.src\r\n", b""), "without Contact"),
    ((b";tag=src1", b""), "no tag"),
    ((b"<sip:siprec-src@127.0.0.1:5060>", b"<tel:+1555>"), "not a SIP URI"),
])
def test_dialog_from_a_bad_invite(mutation: tuple[bytes, bytes], error: str) -> None:
    with pytest.raises(SipError, match=error):
        Dialog.from_invite(parse_sip_message(INVITE.replace(*mutation)), "t", "udp")
