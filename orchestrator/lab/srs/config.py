"""The reference SRS's configuration: where it listens and records, how it (mis)behaves."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import LabError
from ...sip import Timers

__all__ = ["Behaviour", "SrsConfig"]

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TRANSPORTS = frozenset({"udp", "tcp"})


@dataclass(frozen=True)
class Behaviour:
    """How the SRS (mis)behaves, for testing an SRC. Times are seconds.

    ``reject``: answer every INVITE with this code; ``no_answer``: ignore INVITEs (no 100,
    nothing); ``answer_delay``: send 100 + 180, then the final answer after this delay;
    ``bye_after``/``snapshot_after``/``refresh_after``: after the ACK, send a BYE, a snapshot
    request re-INVITE (RFC 7866 §9.2) or a session refresh re-INVITE; ``move_on_refresh``:
    that refresh offers new RTP ports (the old ones are closed), as an SRS that moves a
    session to another media node does. ``reinvite_delay``: answer the SRC's re-INVITEs
    (after a 100) this late, as a slow SRS does.
    """

    reject: int | None = None
    no_answer: bool = False
    answer_delay: float = 0.0
    bye_after: float | None = None
    snapshot_after: float | None = None
    refresh_after: float | None = None
    move_on_refresh: bool = False
    reinvite_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.reject is not None and not 300 <= self.reject <= 699:
            raise LabError(f"behaviour.reject: {self.reject} is not a final non-2xx code "
                           "(300-699)")
        if self.answer_delay < 0 or self.reinvite_delay < 0:
            raise LabError("behaviour.answer_delay/reinvite_delay: must not be negative")
        for name in ("bye_after", "snapshot_after", "refresh_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise LabError(f"behaviour.{name}: must not be negative")


@dataclass(frozen=True)
class SrsConfig:
    """Where the SRS listens and records, and how it behaves.

    ``port`` 0 picks a free port (read it back from :attr:`SrsServer.port`). ``t1``/``t2``
    are RFC 3261's timers; ``timer_b`` is how long the SRS's own requests wait for a final
    response (Timer B/F). ``allow_public_targets`` lets the SRS send requests to a Contact
    outside loopback and private ranges. At most ``max_sessions`` sessions are kept in memory
    (the oldest ended ones are dropped; their files stay).
    """

    address: str = "127.0.0.1"
    port: int = 5090
    transports: tuple[str, ...] = ("udp", "tcp")
    record_dir: Path = Path("srs-recordings")
    rtp_address: str = "127.0.0.1"
    rtp_port_min: int = 40000
    rtp_port_max: int = 40999
    name: str = "srs"
    behaviour: Behaviour = field(default_factory=Behaviour)
    t1: float = 0.5
    t2: float = 4.0
    timer_b: float = 32.0
    allow_public_targets: bool = False
    max_sessions: int = 10000

    def __post_init__(self) -> None:
        for what, addr in (("address", self.address), ("rtp_address", self.rtp_address)):
            try:
                ipaddress.IPv4Address(addr)
            except ValueError:
                raise LabError(f"{what}: {addr!r} is not an IPv4 address") from None
        if not 0 <= self.port < 65536:
            raise LabError(f"port: {self.port} is not within 0-65535")
        if not self.transports or not set(self.transports) <= _TRANSPORTS:
            raise LabError(f"transports: {self.transports!r}; expected udp and/or tcp")
        if not 0 < self.rtp_port_min <= self.rtp_port_max < 65536:
            raise LabError(f"rtp ports: {self.rtp_port_min}-{self.rtp_port_max} is not a "
                           "range within 1-65535")
        if not _NAME.match(self.name):
            raise LabError(f"name: {self.name!r}; expected letters, digits, '.', '_' or '-'")
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.timer_b > 0):
            raise LabError("timers: need t1 > 0, t2 >= t1 and timer_b > 0")
        if self.max_sessions < 1:
            raise LabError("max_sessions: must be at least 1")

    @property
    def timers(self) -> Timers:
        """RFC 3261 timers: T1, T2 and Timer B/F from ``timer_b``."""
        return Timers(self.t1, self.t2, self.timer_b)
