"""The SIP toolkit (RFC 3261), sans-IO: no sockets, no clocks of its own.

Shared by the controller's recording dialogs, the reference SRS, the lab's phones and
``siprecctl check``:

- :mod:`.message`: parse and build whole messages, responses, TCP stream framing;
- :mod:`.headers`: Via, SIP URIs, name-addr (quoted display names), CSeq, tags, the
  CR/LF/NUL guard :func:`sip_safe`;
- :mod:`.routing`: route sets, loose routers, the Request-URI and next hop of in-dialog
  requests;
- :mod:`.timers`: T1/T2, Timers A/B/E/F/G/H and the 2xx retransmission schedule.
"""

from __future__ import annotations

from .headers import (
    BRANCH_COOKIE,
    NameAddr,
    SipUri,
    Via,
    contact_uri,
    format_name_addr,
    new_branch,
    new_tag,
    parse_cseq,
    parse_name_addr,
    parse_uri,
    parse_via,
    quote_string,
    sip_safe,
    split_commas,
    tag_of,
    unquote_string,
)
from .message import (
    REASONS,
    SipMessage,
    StreamFramer,
    build_headers,
    build_message,
    build_response,
    lenient_message,
    looks_like_sip,
    parse_sip_message,
    request_problem,
    top_via,
)
from .routing import is_loose_router, next_hop, request_target, route_set, route_uri
from .timers import T1, T2, T4, Retransmitter, Timers

__all__ = [
    "BRANCH_COOKIE",
    "REASONS",
    "T1",
    "T2",
    "T4",
    "NameAddr",
    "Retransmitter",
    "SipMessage",
    "SipUri",
    "StreamFramer",
    "Timers",
    "Via",
    "build_headers",
    "build_message",
    "build_response",
    "contact_uri",
    "format_name_addr",
    "is_loose_router",
    "lenient_message",
    "looks_like_sip",
    "new_branch",
    "new_tag",
    "next_hop",
    "parse_cseq",
    "parse_name_addr",
    "parse_sip_message",
    "parse_uri",
    "parse_via",
    "quote_string",
    "request_problem",
    "request_target",
    "route_set",
    "route_uri",
    "sip_safe",
    "split_commas",
    "tag_of",
    "top_via",
    "unquote_string",
]
