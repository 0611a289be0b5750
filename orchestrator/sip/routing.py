"""Dialog route sets (RFC 3261 §12.1, §12.2.1.1, §16.12): sans-IO.

A route set entry is a Record-Route value as received (``<sip:p1.example;lr>``, header
parameters included), so that it goes back out unchanged as a Route value.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SipError
from .headers import SipUri, parse_name_addr, parse_uri, split_commas

__all__ = ["is_loose_router", "next_hop", "request_target", "route_set", "route_uri"]


def route_set(record_routes: Sequence[str], *, uac: bool) -> tuple[str, ...]:
    """The route set from the Record-Route header values (each possibly comma-joined) of
    the dialog-creating request (UAS: in order, §12.1.1) or of its 2xx response (UAC:
    reversed, §12.1.2)."""
    entries = tuple(v for value in record_routes for v in split_commas(value))
    return tuple(reversed(entries)) if uac else entries


def route_uri(route: str) -> str:
    """The URI of a route set entry (a name-addr, or a bare URI)."""
    return parse_name_addr(route).uri if "<" in route else route.strip()


def is_loose_router(route: str) -> bool:
    """True if the route's URI carries the ``lr`` parameter (RFC 3261 §19.1.1), parsed from
    the URI itself: an ``;lr`` elsewhere (a header parameter, part of a host or of another
    parameter's value) does not count. An unparsable URI is not a loose router."""
    try:
        return parse_uri(route_uri(route)).lr
    except SipError:
        return False


def request_target(routes: Sequence[str], remote_target: str) -> tuple[str, list[str]]:
    """``(Request-URI, Route values)`` of an in-dialog request (RFC 3261 §12.2.1.1).

    Loose routing (the first route has ``lr``, or there is none): the remote target, the
    route set as it is. A strict router: its URI as Request-URI, the remaining routes and
    the remote target as Route values.
    """
    if not routes or is_loose_router(routes[0]):
        return remote_target, list(routes)
    return route_uri(routes[0]), [*routes[1:], f"<{remote_target}>"]


def next_hop(routes: Sequence[str], remote_target: str) -> SipUri:
    """Where an in-dialog request is sent: the first route if there is a route set, else
    the remote target (RFC 3261 §12.2.1.1, §8.1.2); :class:`SipError` if not a SIP URI."""
    return parse_uri(route_uri(routes[0]) if routes else remote_target)
