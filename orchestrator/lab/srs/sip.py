"""The reference SRS's side of a recording session dialog (RFC 3261 §12.1.1), sans-IO.

The SIP toolkit itself (parsing, header helpers, responses, framing, route sets, timers) is
:mod:`orchestrator.sip`; this module holds what is the SRS's own: the methods it allows and
the requests it sends in the dialog.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import SipError
from ...sip import (
    SipMessage,
    build_message,
    contact_uri,
    new_branch,
    next_hop,
    parse_cseq,
    parse_uri,
    request_target,
    route_set,
    tag_of,
)

__all__ = ["ALLOW", "KNOWN_METHODS", "Dialog", "OutgoingRequest"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE"
#: Methods the SRS recognises but does not support: 405, not 501 (RFC 3261 §8.2.1, §21.5.2).
KNOWN_METHODS = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "REGISTER",
                           "INFO", "MESSAGE", "PRACK", "REFER", "SUBSCRIBE", "NOTIFY",
                           "PUBLISH"})


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """A request the SRS sends in a dialog, with what matching its responses needs."""

    data: bytes
    method: str
    cseq: int
    branch: str


@dataclass(slots=True)
class Dialog:
    """The UAS side of the recording session dialog (RFC 3261 §12.1.1).

    ``local_party``/``remote_party`` are the INVITE's To and From values: requests the SRS
    sends carry the first (with the SRS's tag) as From and the second as To.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_party: str
    remote_party: str
    remote_target: str
    route_set: tuple[str, ...]
    remote_cseq: int
    transport: str
    local_cseq: int = 0

    @classmethod
    def from_invite(cls, msg: SipMessage, local_tag: str, transport: str) -> Dialog:
        """Dialog state from an initial INVITE; :class:`SipError` if Contact is unusable."""
        contact = msg.header("contact")
        if contact is None:
            raise SipError("INVITE without Contact: no remote target (RFC 3261 §8.1.1.8)")
        target = contact_uri(contact)
        parse_uri(target)
        remote_tag = tag_of(msg.header("from"))
        if remote_tag is None:
            raise SipError("From has no tag (RFC 3261 §8.1.1.3)")
        number, _ = parse_cseq(msg.header("cseq"))
        return cls(call_id=msg.header("call-id") or "", local_tag=local_tag,
                   remote_tag=remote_tag, local_party=msg.header("to") or "",
                   remote_party=msg.header("from") or "", remote_target=target,
                   route_set=route_set(msg.header_all("record-route"), uac=False),
                   remote_cseq=number, transport=transport)

    def refresh_target(self, msg: SipMessage) -> None:
        """Target refresh from a re-INVITE/UPDATE Contact (RFC 3261 §12.2.2)."""
        contact = msg.header("contact")
        if contact:
            try:
                uri = contact_uri(contact)
                parse_uri(uri)
            except SipError:
                return
            self.remote_target = uri

    def next_hop(self) -> tuple[str, int]:
        """``(host, port)`` to send in-dialog requests to: the first route if there is a
        route set (RFC 3261 §12.2.1.1), else the remote target."""
        uri = next_hop(self.route_set, self.remote_target)
        return uri.bare_host, uri.default_port()

    def _common(self, method: str, cseq: int, branch: str, sent_by: tuple[str, int],
                to_value: str | None = None) -> tuple[str, list[tuple[str, str]]]:
        """The Request-URI and the headers every request in the dialog carries."""
        transport = self.transport.upper()
        local = self.local_party if tag_of(self.local_party) else \
            f"{self.local_party};tag={self.local_tag}"
        ruri, routes = request_target(self.route_set, self.remote_target)
        headers = [("Via", f"SIP/2.0/{transport} {sent_by[0]}:{sent_by[1]};branch={branch};rport"),
                   ("Max-Forwards", "70")]
        headers += [("Route", r) for r in routes]
        headers += [("From", local), ("To", to_value or self.remote_party),
                    ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}")]
        return ruri, headers

    def request(self, method: str, *, sent_by: tuple[str, int], contact: str | None = None,
                body: bytes = b"", content_type: str | None = None,
                headers: Sequence[tuple[str, str]] = ()) -> OutgoingRequest:
        """A new in-dialog request with the next local CSeq (RFC 3261 §12.2.1.1)."""
        if self.local_cseq == 0:
            self.local_cseq = 1
        else:
            self.local_cseq += 1
        branch = new_branch()
        ruri, lines = self._common(method, self.local_cseq, branch, sent_by)
        if contact:
            lines.append(("Contact", contact))
        lines.extend(headers)
        if body:
            lines.append(("Content-Type", content_type or "application/sdp"))
        data = build_message(f"{method} {ruri} SIP/2.0", lines, body)
        return OutgoingRequest(data, method, self.local_cseq, branch)

    def ack(self, cseq: int, *, sent_by: tuple[str, int], branch: str | None = None,
            to_value: str | None = None) -> bytes:
        """ACK for a final response to an INVITE the SRS sent.

        2xx: a new transaction (new branch, RFC 3261 §13.2.2.4); non-2xx: same branch and the
        response's To (hop-by-hop, §17.1.1.3).
        """
        ruri, lines = self._common("ACK", cseq, branch or new_branch(), sent_by, to_value)
        return build_message(f"ACK {ruri} SIP/2.0", lines)
