"""RFC 7989 Session-ID: the end-to-end session identifier (sans-IO).

A Session-ID header value is the sender's own UUID (32 lower-case hex digits) and the peer's
in a ``remote`` parameter; a UA that does not know the peer's UUID yet sends the null UUID
(32 zeros), as an initial INVITE does (RFC 7989 §7). The recording session is a SIP session
of its own, so its requests carry a Session-ID of their own; the recorded call's Session-ID
goes into the metadata as ``<sipSessionID>`` (RFC 7865 §6.3).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace

from ..errors import SipError

__all__ = ["NULL_UUID", "SessionId", "parse_session_id"]

NULL_UUID = "0" * 32
_UUID = re.compile(r"[0-9a-f]{32}")
_VALUE = re.compile(r"\s*([0-9A-Fa-f]{32})\s*((?:;[^;]*)*)\s*")


@dataclass(frozen=True, slots=True)
class SessionId:
    """One side's view of a session: its own UUID and the peer's (null until known)."""

    local: str
    remote: str = NULL_UUID

    @classmethod
    def new(cls) -> SessionId:
        return cls(uuid.uuid4().hex)

    @property
    def header(self) -> str:
        """The header value: ``local;remote=remote`` (RFC 7989 §6)."""
        return f"{self.local};remote={self.remote}"

    def learn(self, value: str | None) -> SessionId:
        """This session id once the peer's Session-ID (in its response or request) is known:
        the peer's own UUID is the first part of its value. Unchanged for a missing or null
        one; :class:`SipError` for a malformed one."""
        if not value:
            return self
        peer_local, _peer_remote = parse_session_id(value)
        if peer_local == NULL_UUID:
            return self
        return replace(self, remote=peer_local)


def parse_session_id(value: str) -> tuple[str, str | None]:
    """``(uuid, remote uuid or None)`` of a Session-ID value, lower-cased; :class:`SipError`
    if it is not RFC 7989 syntax (upper-case hex, as RFC 7329 peers send, is accepted)."""
    m = _VALUE.fullmatch(value)
    if m is None:
        raise SipError(f"Session-ID {value[:80]!r} is not 32 hex digits with parameters "
                       "(RFC 7989 §6)")
    remote: str | None = None
    for param in m.group(2).split(";")[1:]:
        name, _, val = param.strip().partition("=")
        if name.strip().lower() == "remote":
            val = val.strip().lower()
            if not _UUID.fullmatch(val):
                raise SipError(f"Session-ID remote parameter {val[:40]!r} is not 32 hex digits")
            remote = val
    return m.group(1).lower(), remote
