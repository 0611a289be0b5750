"""SIPREC message bodies: multipart/mixed SDP + metadata, and the snapshot request (sans-IO)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from ..errors import SipError

__all__ = [
    "LEGACY_METADATA_TYPE",
    "METADATA_TYPE",
    "SNAPSHOT_REQUEST_TYPE",
    "BodyPart",
    "SiprecBody",
    "build_multipart",
    "build_siprec_body",
    "parse_content_type",
    "parse_multipart",
    "parse_siprec_body",
    "snapshot_request_headers",
]

METADATA_TYPE = "application/rs-metadata+xml"
#: RFC 7866 before RFC 9806 (still sent by AudioCodes legacy, jambonz SMART_TAP): accepted only.
LEGACY_METADATA_TYPE = "application/rs-metadata"
SNAPSHOT_REQUEST_TYPE = "application/rs-metadata-request"
METADATA_TYPES = frozenset({METADATA_TYPE, LEGACY_METADATA_TYPE})


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` lower-cased and its parameters (quoted values unquoted)."""
    mime, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for m in re.finditer(r';?\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', ";" + rest):
        v = m.group(2).strip()
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = v[1:-1]
        params[m.group(1).lower()] = v
    return mime.strip().lower(), params


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One MIME part; ``line`` is the 1-based line of its body within the multipart body."""

    headers: tuple[tuple[str, str], ...]
    body: bytes
    line: int

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)

    @property
    def content_type(self) -> str:
        ct = self.header("content-type")
        return parse_content_type(ct)[0] if ct else "text/plain"

    @property
    def disposition(self) -> str | None:
        cd = self.header("content-disposition")
        return cd.split(";")[0].strip().lower() if cd else None


def parse_multipart(content_type: str, body: bytes) -> tuple[list[BodyPart], list[str]]:
    """Split a ``multipart/*`` body into parts; also returns framing problems (RFC 2046 §5.1).

    Raises :class:`SipError` when the body cannot be split at all (no boundary parameter,
    no delimiter line).
    """
    mime, params = parse_content_type(content_type)
    if not mime.startswith("multipart/"):
        raise SipError(f"Content-Type {mime!r} is not multipart")
    boundary = params.get("boundary")
    if not boundary:
        raise SipError("multipart Content-Type has no boundary parameter")
    delim = b"--" + boundary.encode("utf-8", "replace")
    problems: list[str] = []
    # A delimiter is CRLF + "--boundary" at the start of a line; the CRLF belongs to it.
    pattern = re.compile(rb"(?:^|\r?\n)" + re.escape(delim) + rb"(--)?[ \t]*(?:\r?\n|$)")
    matches = list(pattern.finditer(body))
    if not matches:
        raise SipError(f"multipart body has no delimiter line --{boundary}")
    if not matches[-1].group(1):
        problems.append(f"multipart body has no closing delimiter --{boundary}--")
    parts: list[BodyPart] = []
    for cur, nxt in zip(matches, [*matches[1:], None], strict=True):
        if cur.group(1):  # the close delimiter
            if nxt is not None:
                problems.append("content after the closing delimiter")
            break
        start = cur.end()
        end = nxt.start() if nxt is not None else len(body)
        raw = body[start:end]
        start_line = body.count(b"\n", 0, start) + 1
        parts.append(_parse_part(raw, start_line))
    if b"\r\n" not in body and b"\n" in body:
        problems.append("multipart body uses bare LF line endings instead of CRLF")
    return parts, problems


def _parse_part(raw: bytes, start_line: int) -> BodyPart:
    sep = re.search(rb"\r?\n\r?\n", raw)
    if raw.startswith((b"\r\n", b"\n")):  # no part headers at all (defaults to text/plain)
        head, body = b"", raw.split(b"\n", 1)[1]
        body_line = start_line + 1
    elif sep is None:
        head, body = raw, b""
        body_line = start_line + raw.count(b"\n") + 1
    else:
        head, body = raw[:sep.start()], raw[sep.end():]
        body_line = start_line + raw.count(b"\n", 0, sep.end())
    headers: list[tuple[str, str]] = []
    for line in re.split(r"\r?\n", head.decode("utf-8", "replace")):
        if not line:
            continue
        if line[:1] in (" ", "\t") and headers:
            headers[-1] = (headers[-1][0], headers[-1][1] + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipError(f"line {start_line}: malformed MIME part header {line[:80]!r}")
        headers.append((name.strip().lower(), value.strip()))
    return BodyPart(tuple(headers), body, body_line)


def build_multipart(parts: list[tuple[list[tuple[str, str]], bytes]],
                    boundary: str | None = None) -> tuple[str, bytes]:
    """Build a multipart/mixed body; returns ``(content_type, body)``."""
    boundary = boundary or "siprecctl-" + uuid.uuid4().hex
    out = bytearray()
    for headers, body in parts:
        if (b"--" + boundary.encode()) in body:
            raise SipError("a body part contains the multipart boundary")
        out += b"--" + boundary.encode() + b"\r\n"
        for name, value in headers:
            if "\r" in value or "\n" in value:
                raise SipError(f"MIME header {name} contains CR/LF")
            out += f"{name}: {value}\r\n".encode()
        out += b"\r\n" + body + b"\r\n"
    out += b"--" + boundary.encode() + b"--\r\n"
    return f"multipart/mixed;boundary={boundary}", bytes(out)


@dataclass(frozen=True, slots=True)
class SiprecBody:
    """The SDP and metadata of a recording session request."""

    sdp: bytes
    metadata: bytes | None
    metadata_type: str | None = None
    sdp_line: int = 1
    metadata_line: int = 1


def build_siprec_body(sdp: bytes, metadata: bytes | None,
                      boundary: str | None = None) -> tuple[str, bytes]:
    """SDP plus ``application/rs-metadata+xml`` (RFC 7866 §9, RFC 9806 media type).

    Without metadata the body is the bare SDP (``application/sdp``): RFC 7866 §9.1 allows
    the metadata to follow in a later request.
    """
    if metadata is None:
        return "application/sdp", sdp
    return build_multipart([
        ([("Content-Type", "application/sdp")], sdp),
        ([("Content-Type", METADATA_TYPE), ("Content-Disposition", "recording-session")],
         metadata),
    ], boundary)


def parse_siprec_body(content_type: str, body: bytes) -> SiprecBody:
    """Find the SDP and metadata parts; accepts the legacy ``application/rs-metadata``."""
    mime, _ = parse_content_type(content_type)
    if mime == "application/sdp":
        return SiprecBody(body, None)
    if mime in METADATA_TYPES:
        return SiprecBody(b"", body, mime)
    parts, _problems = parse_multipart(content_type, body)
    sdps = [p for p in parts if p.content_type == "application/sdp"]
    metas = [p for p in parts if p.content_type in METADATA_TYPES]
    if len(sdps) != 1:
        raise SipError(f"expected one application/sdp part, found {len(sdps)}")
    if len(metas) > 1:
        raise SipError(f"expected at most one metadata part, found {len(metas)}")
    meta = metas[0] if metas else None
    return SiprecBody(sdps[0].body, meta.body if meta else None,
                      meta.content_type if meta else None, sdps[0].line,
                      meta.line if meta else 1)


def snapshot_request_headers() -> list[tuple[str, str]]:
    """Headers for a snapshot request body (RFC 7866 §9.2): type and disposition."""
    return [("Content-Type", SNAPSHOT_REQUEST_TYPE), ("Content-Disposition", "recording-session")]
