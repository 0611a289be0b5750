"""Just enough SDP for SIPREC: m-lines, their ``a=label`` (RFC 4574), direction, connection
address, o= version."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SipError
from .rules import Finding, Severity

__all__ = ["MediaSection", "Sdp", "check_offer", "parse_sdp", "sdp_labels"]

_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})


@dataclass(frozen=True, slots=True)
class MediaSection:
    """One ``m=`` section; ``line`` is its 1-based line number in the SDP; ``address`` is
    where it receives (its own ``c=`` line, else the session's; without ``/ttl``)."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    labels: tuple[str, ...]
    direction: str | None
    line: int
    address: str | None = None

    @property
    def label(self) -> str | None:
        return self.labels[0] if len(self.labels) == 1 else None


@dataclass(frozen=True, slots=True)
class Sdp:
    session_version: int | None
    direction: str | None
    media: tuple[MediaSection, ...]

    @property
    def labels(self) -> list[str]:
        return [lb for m in self.media for lb in m.labels]

    def effective_direction(self, m: MediaSection) -> str:
        """The media-level direction, else the session-level one, else sendrecv (RFC 3264)."""
        return m.direction or self.direction or "sendrecv"


def parse_sdp(data: bytes | str) -> Sdp:
    """Parse an SDP body; :class:`SipError` if it is not SDP at all or an m-line is malformed."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    lines = text.replace("\r\n", "\n").split("\n")
    if not any(line.startswith("v=") for line in lines[:3]):
        raise SipError("SDP does not start with a v= line")
    version: int | None = None
    session_dir: str | None = None
    session_addr: str | None = None
    media: list[MediaSection] = []
    cur: dict | None = None

    def flush() -> None:
        if cur is not None:
            media.append(MediaSection(cur["media"], cur["port"], cur["proto"], cur["formats"],
                                      tuple(cur["labels"]), cur["direction"], cur["line"],
                                      cur["address"] or session_addr))

    for no, line in enumerate(lines, 1):
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:].strip()
        if kind == "o" and cur is None:
            parts = value.split()
            if len(parts) >= 3 and parts[2].isdigit():
                version = int(parts[2])
        elif kind == "m":
            flush()
            parts = value.split()
            if len(parts) < 3 or not parts[1].split("/")[0].isdigit():
                raise SipError(f"SDP line {no}: malformed m-line {line!r}")
            cur = {"media": parts[0], "port": int(parts[1].split("/")[0]), "proto": parts[2],
                   "formats": tuple(parts[3:]), "labels": [], "direction": None, "line": no,
                   "address": None}
        elif kind == "c":
            parts = value.split()  # c=IN IP4 <address>[/ttl[/n]]
            address = parts[2].split("/")[0] if len(parts) >= 3 else None
            if cur is None:
                session_addr = address
            else:
                cur["address"] = address
        elif kind == "a":
            name, _, attr_value = value.partition(":")
            if name in _DIRECTIONS:
                if cur is None:
                    session_dir = name
                else:
                    cur["direction"] = name
            elif name == "label" and cur is not None:
                cur["labels"].append(attr_value.strip())
    flush()
    return Sdp(version, session_dir, tuple(media))


def sdp_labels(data: bytes | str) -> list[str]:
    """The ``a=label`` values of every m-line, in m-line order."""
    return parse_sdp(data).labels


def check_offer(sdp: Sdp, *, line_offset: int = 0, source: str | None = None) -> list[Finding]:
    """Rules R08 (labels) and R09 (directions) on an SRC's RS offer."""
    out: list[Finding] = []
    seen: dict[str, int] = {}
    for i, m in enumerate(sdp.media, 1):
        line = m.line + line_offset
        if not m.labels:
            out.append(Finding("R08", Severity.ERROR, line,
                               f"m-line {i} ({m.media} port {m.port}) has no a=label, so no "
                               "metadata stream can refer to it", source))
        elif len(m.labels) > 1:
            out.append(Finding("R08", Severity.ERROR, line,
                               f"m-line {i} has {len(m.labels)} a=label attributes "
                               f"({', '.join(m.labels)}); exactly one is allowed", source))
        for lb in m.labels:
            if lb in seen:
                out.append(Finding("R08", Severity.ERROR, line,
                                   f"label {lb!r} of m-line {i} is also used by m-line {seen[lb]}",
                                   source))
            else:
                seen[lb] = i
        direction = sdp.effective_direction(m)
        if m.port != 0 and direction not in ("sendonly", "inactive"):
            out.append(Finding("R09", Severity.ERROR, line,
                               f"m-line {i} is {direction}; an SRC offers recorded streams "
                               "sendonly (or inactive while paused)", source))
    return out
