"""Validate SIPREC metadata and recording session requests (sans-IO).

A document goes through four rooms: :mod:`.xsd` (the strict profile's schema layer, which
accepts and rejects what the official RFC 7865 §9 schema does), :mod:`.document` (collect
the objects once), :mod:`.engine` (every semantic rule once, with a fast path for clean
complete snapshots) and, for pre-RFC documents, :mod:`.legacy`. Whole SIP messages first go
through :mod:`.envelope`. A :class:`RecordingSessionValidator` keeps the accumulated state of
one recording session, so partial updates (RFC 7865 §6.1 ``datamode=partial``) are checked
against what earlier documents established, and an offer repeated unchanged keeps its o=
version (RFC 3264 §8) without an R11 finding.

Profiles: ``strict`` (RFC 7865) and ``legacy`` (the pre-RFC draft format some SBCs still send:
detected in both profiles, validated leniently only under ``legacy``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

from lxml import etree

from ..errors import SipError
from . import engine
from .document import Doc, collect
from .envelope import check_envelope, split_body
from .legacy import legacy_findings, legacy_markers, qname
from .model import RECORDING_NS
from .parse import safe_parser
from .rules import Finding, Severity
from .sdp import Sdp, check_offer, parse_sdp
from .sip import looks_like_sip, parse_sip_message
from .xsd import schema, schema_findings, schema_valid

__all__ = [
    "Profile",
    "RecordingSessionValidator",
    "has_errors",
    "schema",
    "validate_input",
    "validate_message",
    "validate_metadata",
]

E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
_R = "{" + RECORDING_NS + "}"
_PARSER = safe_parser()
_LABEL_LINE = re.compile(r"^a=label:([^\r\n]*)", re.MULTILINE)


class Profile(enum.StrEnum):
    STRICT = "strict"
    LEGACY = "legacy"


def _labels_of(sdp: bytes | str) -> list[str]:
    """The SDP's ``a=label`` values (all that metadata checking needs from it)."""
    text = sdp.decode("utf-8", "replace") if isinstance(sdp, bytes) else sdp
    return [lb.strip() for lb in _LABEL_LINE.findall(text)]


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)


def _line_key(f: Finding) -> tuple[bool, int]:
    return (f.line is None, f.line or 0)


class RecordingSessionValidator:
    """Validate the metadata documents and requests of one recording session, in order."""

    def __init__(self, profile: Profile | str = Profile.STRICT) -> None:
        self.profile = Profile(profile)
        self.state: Doc | None = None
        self.sdp_labels: list[str] | None = None
        self.sdp_version: int | None = None
        self._offer: bytes | None = None  # the last SDP offer, to spot an unchanged repeat
        self._sdp_text: bytes | str | None = None
        self._sdp_text_labels: list[str] = []

    # -- metadata documents

    def validate(self, data: bytes, *, sdp: bytes | str | Sdp | None = None,
                 source: str | None = None, line_offset: int = 0) -> list[Finding]:
        """Findings for one metadata document (with the RS SDP of the same request, if any)."""
        if isinstance(sdp, Sdp):
            self.sdp_labels = sdp.labels
        elif sdp is not None:
            if sdp != self._sdp_text:  # re-INVITEs often repeat the SDP unchanged
                self._sdp_text = sdp
                self._sdp_text_labels = _labels_of(sdp)
            self.sdp_labels = self._sdp_text_labels
        return self._document(data, line_offset, source)

    @staticmethod
    def _findings(raw: Iterable[engine.Raw], offset: int, source: str | None) -> list[Finding]:
        return [Finding(r, sev, None if line is None else line + offset, msg, source)
                for r, sev, line, msg in raw]

    def _document(self, data: bytes, offset: int, source: str | None) -> list[Finding]:
        def found(raw: Iterable[engine.Raw]) -> list[Finding]:
            return self._findings(raw, offset, source)

        try:
            root = etree.fromstring(data, _PARSER)
        except etree.XMLSyntaxError as exc:
            line = exc.position[0] if exc.position else None
            return found([("R12", E, line, f"not well-formed XML: {exc.msg}")])
        except ValueError as exc:
            return found([("R12", E, 1, f"not parseable XML: {exc}")])
        if root is None:
            return found([("R12", E, 1, "empty document")])
        head: list[engine.Raw] = []
        if root.getroottree().docinfo.doctype:
            head.append(("R12", E, 1, "the document has a DOCTYPE; metadata must not use DTDs "
                         "(entities are never expanded here)"))
        tag = root.tag if isinstance(root.tag, str) else ""
        if tag == _R + "requestsnapshot":
            return self._snapshot_request(root, found(head), offset, source)
        ok = tag == _R + "recording" and schema_valid(root)
        legacy = [] if ok else legacy_markers(root)
        if legacy:
            head.append(("R26", INFO, root.sourceline, "pre-RFC draft metadata format detected ("
                         + ", ".join(legacy) + ")"))
            if self.profile is Profile.LEGACY:
                return found(sorted(head + legacy_findings(root, self.sdp_labels),
                                    key=engine.line_key))
            if tag != _R + "recording":
                head.append(("R12", E, root.sourceline, f"root element {qname(root)} is in the "
                             f"pre-RFC draft namespace; RFC 7865 requires {RECORDING_NS} (use "
                             "--profile legacy to validate it leniently)"))
                return found(head)
        elif tag != _R + "recording":
            head.append(("R12", E, root.sourceline, f"root element is {qname(root)}; expected "
                         f"<recording> in {RECORDING_NS}"))
            return found(head)
        doc = collect(root, ok, self.sdp_labels)
        if doc.clean:  # the fast path: a clean complete snapshot becomes the state
            self.state = doc
            return found(head) if head else []
        ctx = engine.Context(self.profile is Profile.LEGACY, self.sdp_labels, self.state)
        out = found(head + engine.run_rules(doc, ctx))
        self.state = engine.apply(self.state, doc)
        if ok:
            return out
        out += schema_findings(offset, source, {(f.rule, f.line) for f in out})
        return sorted(out, key=_line_key)

    def _snapshot_request(self, root: etree._Element, head: list[Finding], offset: int,
                          source: str | None) -> list[Finding]:
        """R27: RFC 7865 §7 ``requestsnapshot`` with a ``requestreason``."""
        out = list(head)
        if not schema_valid(root):
            out += schema_findings(offset, source, (), rule="R27")
        line = root.sourceline + offset if root.sourceline else None
        if root.find(_R + "requestreason") is None:
            out.append(Finding("R27", W, line, "requestsnapshot has no <requestreason>", source))
        out.append(Finding("R27", INFO, line, "snapshot request: the SRC's next metadata must "
                           "be datamode=complete", source))
        return out

    # -- whole SIP messages

    def validate_message(self, data: bytes, *, source: str | None = None) -> list[Finding]:
        """Findings for a whole SIP message (a recording session INVITE/re-INVITE/UPDATE/BYE)."""
        try:
            msg = parse_sip_message(data)
        except SipError as exc:
            return [Finding("R07", E, None, f"not a parseable SIP message: {exc}", source)]
        out = check_envelope(msg, source)
        body = split_body(msg, source)
        out += body.findings
        if body.snapshot_request is not None:
            data, line = body.snapshot_request
            return out + self.validate(data, source=source, line_offset=line - 1)
        sdp: Sdp | None = None
        if body.sdp is not None:
            raw_sdp, sdp_line = body.sdp
            try:
                sdp = parse_sdp(raw_sdp)
            except SipError as exc:
                out.append(Finding("R08", E, sdp_line, f"SDP part: {exc}", source))
            if sdp is not None and msg.method is not None:
                out.extend(check_offer(sdp, line_offset=sdp_line - 1, source=source))
                out.extend(self._version(sdp, raw_sdp, sdp_line, source))
        if body.metadata is not None:
            meta, line, _mime = body.metadata
            out.extend(self.validate(meta, sdp=sdp, source=source, line_offset=line - 1))
        elif sdp is not None:
            self.sdp_labels = sdp.labels
        return out

    def _version(self, sdp: Sdp, raw: bytes, line: int, source: str | None) -> list[Finding]:
        """R11: the o= version increases on each new offer; an offer repeated unchanged keeps
        it (RFC 3264 §8), as a sender's own metadata-only re-INVITEs do."""
        out: list[Finding] = []
        unchanged = self._offer is not None and raw.strip() == self._offer.strip()
        self._offer = raw
        if sdp.session_version is None:
            return out
        if self.sdp_version is not None and sdp.session_version <= self.sdp_version \
                and not unchanged:
            out.append(Finding("R11", E, line, f"o= session-version {sdp.session_version} does "
                               f"not increase (previous offer had {self.sdp_version})", source))
        self.sdp_version = sdp.session_version
        return out


# --------------------------------------------------------------------------- one-shot helpers

def validate_metadata(data: bytes, *, profile: Profile | str = Profile.STRICT,
                      sdp: bytes | str | Sdp | None = None,
                      source: str | None = None) -> list[Finding]:
    """Findings for one metadata document on its own (no earlier state)."""
    return RecordingSessionValidator(profile).validate(data, sdp=sdp, source=source)


def validate_message(data: bytes, *, profile: Profile | str = Profile.STRICT,
                     source: str | None = None) -> list[Finding]:
    """Findings for one whole SIP message carrying SDP and/or metadata."""
    return RecordingSessionValidator(profile).validate_message(data, source=source)


def validate_input(data: bytes, validator: RecordingSessionValidator,
                   source: str | None = None) -> list[Finding]:
    """Validate XML or a whole SIP message, whichever ``data`` is."""
    if looks_like_sip(data):
        return validator.validate_message(data, source=source)
    return validator.validate(data, source=source)
