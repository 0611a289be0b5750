"""RFC 7866 checks on the requests an SRS receives, and what it keeps from the metadata.

The project's validator (:class:`orchestrator.siprec.RecordingSessionValidator`, strict
profile, one per recording session) does the work; this module splits its findings into SIP
checks (R01–R11, R30–R32) and metadata findings (R12–R29), drops the envelope rules that only
apply to the INVITE that starts the recording session (R01 Require, R31 Supported/Allow), and
maps stream labels to the participants the metadata says send them.

A BYE's findings are all filed as metadata findings: a body in a BYE can only be final
metadata (R05 its disposition, R32 its placement), and the server keeps a BYE's metadata
findings only. The validator itself skips R11 for an offer repeated unchanged (RFC 3264 §8),
so this SRS and ``siprecctl metadata validate --session`` judge alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import MetadataError, SipError
from ...siprec.model import DataMode, Recording
from ...siprec.parse import parse_metadata
from ...siprec.rules import Finding
from ...siprec.sip import SipMessage
from ...siprec.validator import RecordingSessionValidator

__all__ = ["ParticipantMap", "check_request", "metadata_datamode", "require_tags"]

SIP_RULES = frozenset({*(f"R{n:02d}" for n in range(1, 12)), "R30", "R31", "R32"})
#: RFC 7866 §6.1.1 puts Require: siprec on the INVITE that starts the RS; RFC 3261 §13.2.1
#: Supported and Allow on the INVITE. Accept (R06) is checked on re-INVITEs too (§14.1).
INITIAL_ONLY = frozenset({"R01", "R31"})


def require_tags(msg: SipMessage) -> list[str]:
    """Option tags of every Require header, lower-cased."""
    return [t.strip().lower() for v in msg.header_all("require") for t in v.split(",")
            if t.strip()]


def check_request(validator: RecordingSessionValidator, raw: bytes, *, initial: bool,
                  source: str, sdp: bytes | None = None,
                  previous_sdp: bytes | None = None) -> tuple[list[Finding], list[Finding]]:
    """``(sip_findings, metadata_findings)`` for one request of the recording session.

    ``sdp``/``previous_sdp``: the SDP of this request and of the previous offer; an offer
    repeated unchanged keeps its o= version legitimately (RFC 3264 §8), so R11 is dropped
    (the validator also remembers the previous offer itself).
    """
    findings = validator.validate_message(raw, source=source)
    sip: list[Finding] = []
    meta: list[Finding] = []
    unchanged = sdp is not None and previous_sdp is not None \
        and sdp.strip() == previous_sdp.strip()
    bye = raw.lstrip()[:4].upper() == b"BYE "
    for f in findings:
        if not initial and f.rule in INITIAL_ONLY:
            continue
        if f.rule == "R11" and unchanged:
            continue
        (sip if f.rule in SIP_RULES and not bye else meta).append(f)
    return sip, meta


def metadata_datamode(data: bytes) -> tuple[str, Recording | None]:
    """``(datamode, model)`` of a metadata document; ``("invalid", None)`` if unreadable.

    RFC 7865 §6.1: datamode is optional and defaults to complete.
    """
    try:
        rec = parse_metadata(data)
    except (MetadataError, SipError, ValueError):
        return "invalid", None
    return rec.datamode.value, rec


@dataclass
class ParticipantMap:
    """The accumulated participants, streams and who sends what (RFC 7865 §6.5–6.8)."""

    participants: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    stream_labels: dict[str, str] = field(default_factory=dict)
    sends: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def apply(self, rec: Recording) -> None:
        """Fold in a document: a complete snapshot replaces, a partial update merges."""
        if rec.datamode is DataMode.COMPLETE:
            self.participants.clear()
            self.stream_labels.clear()
            self.sends.clear()
        for p in rec.participants:
            nid = p.name_ids[0] if p.name_ids else None
            self.participants[p.participant_id] = (nid.name if nid else None,
                                                   nid.aor if nid else None)
        for s in rec.streams:
            self.stream_labels[s.stream_id] = s.label
        for a in rec.participant_stream_assocs:
            if a.disassociate_time is not None and not a.send:
                self.sends.pop(a.participant_id, None)
            else:
                self.sends[a.participant_id] = a.send

    def by_label(self) -> dict[str, list[dict[str, str | None]]]:
        """label → the participants sending that stream (name, aor, participant_id)."""
        out: dict[str, list[dict[str, str | None]]] = {}
        for pid, streams in self.sends.items():
            name, aor = self.participants.get(pid, (None, None))
            for sid in streams:
                label = self.stream_labels.get(sid)
                if label is not None:
                    out.setdefault(label, []).append(
                        {"participant_id": pid, "name": name, "aor": aor})
        return out
