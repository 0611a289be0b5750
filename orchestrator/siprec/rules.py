"""The validator's rules and findings.

Rule ids follow the numbering of the project's SIPREC notes (reference/siprec.md §2.3):
R01–R07 the recording session's SIP envelope, R08–R11 its SDP, R12–R28 the RFC 7865 metadata;
then the rules added for RFC 7865/7866 to the letter: R29 (metadata), R30–R32 (envelope).
One rule can report at different severities (R15: invalid base64 is an error, a valid ID
that is not 16 bytes a warning), so severity belongs to the finding.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    slug: str
    summary: str


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: the rule, its severity, the line (1-based, ``None`` if unknown), a message."""

    rule: str
    severity: Severity
    line: int | None
    message: str
    source: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"rule": self.rule, "slug": RULES[self.rule].slug, "severity": self.severity.value,
                "line": self.line, "message": self.message, "source": self.source}

    def __str__(self) -> str:
        where = f"{self.source or '-'}:{self.line if self.line is not None else '-'}"
        return f"{where}: {self.severity.value} {self.rule}: {self.message}"


_RULES = [
    Rule("R01", "require-siprec", "SRC-initiated RS INVITE carries Require: siprec (RFC 7866 §6.1.1)"),
    Rule("R02", "contact-src", "Contact carries the +sip.src feature tag (RFC 7866 §6.1.1)"),
    Rule("R03", "multipart", "multipart/mixed with a boundary, one application/sdp part, "
                             "at most one metadata part"),
    Rule("R04", "metadata-content-type", "metadata part is application/rs-metadata+xml "
                                         "(legacy application/rs-metadata: warning, RFC 9806)"),
    Rule("R05", "content-disposition", "a metadata body or part has Content-Disposition: "
                                       "recording-session (RFC 7866)"),
    Rule("R06", "accept-snapshot", "INVITE and re-INVITE: Accept lists "
                                   "application/rs-metadata-request"),
    Rule("R07", "mime-framing", "Content-Length and MIME framing are correct"),
    Rule("R08", "sdp-label", "every m-line has exactly one a=label, labels unique (RFC 4574)"),
    Rule("R09", "sdp-direction", "SRC offer streams are sendonly or inactive (RFC 7866 §7.1.1)"),
    Rule("R10", "sdp-answer", "SRS answer mirrors the offer's m-lines, recvonly/inactive/port 0"),
    Rule("R11", "sdp-version", "o= session-version increases on each re-offer (RFC 3264)"),
    Rule("R12", "xml-namespace", "well-formed XML, root recording in "
                                 "urn:ietf:params:xml:ns:recording:1"),
    Rule("R13", "datamode", "datamode is complete or partial"),
    Rule("R14", "schema", "elements in schema order with their required attributes (RFC 7865 §9)"),
    Rule("R15", "id-base64", "IDs and references are xs:base64Binary; 16 bytes (UUID) expected"),
    Rule("R16", "unique-id", "IDs unique per element type"),
    Rule("R17", "reference", "references resolve (in the document, or the accumulated state)"),
    Rule("R18", "stream-label", "each stream has one label, an SDP token, unique, matching an "
                                "SDP a=label"),
    Rule("R19", "aor", "nameID aor is a sip:, sips: or tel: URI"),
    Rule("R20", "datetime", "times are xs:dateTime with a timezone (Z or ±hh:mm)"),
    Rule("R21", "time-order", "associate-time ≤ disassociate-time, start-time ≤ stop-time"),
    Rule("R22", "completeness", "complete snapshots associate every session, participant, stream"),
    Rule("R23", "send-recv", "participant send/recv sets are plausible"),
    Rule("R24", "sip-session-id", "sipSessionID is an RFC 7989 Session-ID (RFC 7865 §6.3); noted "
                                  "when a complete snapshot has none"),
    Rule("R25", "extension-namespace", "extensions only in a foreign namespace"),
    Rule("R26", "legacy-format", "pre-RFC draft metadata format detected"),
    Rule("R27", "snapshot-request", "snapshot request body is a valid requestsnapshot"),
    Rule("R28", "partial-update", "partial updates apply to the accumulated recording session"),
    Rule("R29", "partial-update-time", "every association tuple of a partial update carries "
                                       "associate-time or disassociate-time (RFC 7865 §6.9)"),
    Rule("R30", "session-id-header", "requests carry an RFC 7989 Session-ID header"),
    Rule("R31", "supported-allow", "the INVITE carries Supported and Allow (RFC 3261 §13.2.1)"),
    Rule("R32", "bye-metadata", "no metadata in BYE: the final update goes in a re-INVITE or "
                                "UPDATE before it (RFC 7866 §9.1)"),
]
RULES: dict[str, Rule] = {r.id: r for r in _RULES}
