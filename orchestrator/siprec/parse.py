"""Parse RFC 7865 metadata XML into the model (sans-IO, safe lxml parser)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

from lxml import etree

from ..errors import MetadataError
from .model import (
    RECORDING_NS,
    XML_NS,
    DataMode,
    Extension,
    Group,
    NameID,
    Param,
    Participant,
    ParticipantSessionAssoc,
    ParticipantStreamAssoc,
    Reason,
    Recording,
    Session,
    SessionRecordingAssoc,
    SnapshotRequest,
    Stream,
)

__all__ = [
    "parse_datetime",
    "parse_metadata",
    "parse_snapshot_request",
    "parse_xml",
    "safe_parser",
]

_R = "{" + RECORDING_NS + "}"
_LANG = "{" + XML_NS + "}lang"


def safe_parser() -> etree.XMLParser:
    """An lxml parser for untrusted input: no entities, no DTD/network, no huge trees."""
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                           load_dtd=False, dtd_validation=False, remove_comments=False)


_PARSER = safe_parser()


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML bytes; :class:`MetadataError` (with the line) if not well-formed."""
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        line = exc.position[0] if exc.position else None
        raise MetadataError(f"line {line}: not well-formed XML: {exc.msg}") from exc
    except ValueError as exc:  # e.g. str with an encoding declaration
        raise MetadataError(f"not parseable XML: {exc}") from exc
    if root is None:
        raise MetadataError("empty XML document")
    return root


def parse_datetime(text: str) -> datetime:
    """Parse ``xs:dateTime`` (``Z`` or ``±hh:mm``); :class:`ValueError` if malformed."""
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    if "T" not in t or len(t) < 19:
        raise ValueError(f"{text!r} is not an xs:dateTime")
    tz_at = max(t.rfind("+"), t.rfind("-"))
    if tz_at > 10 and len(t) - tz_at != 6:  # "+0200" is not xs:dateTime (needs the colon)
        raise ValueError(f"{text!r}: timezone must be Z or ±hh:mm")
    return datetime.fromisoformat(t)


def _text(el: etree._Element) -> str:
    return el.text or ""


def _time(el: etree._Element) -> datetime:
    try:
        return parse_datetime(_text(el))
    except ValueError as exc:
        raise MetadataError(f"line {el.sourceline}: {exc}") from exc


def _extension(el: etree._Element) -> Extension:
    q = etree.QName(el)
    return Extension(namespace=q.namespace or "", name=q.localname, text=el.text,
                     attributes=dict(el.attrib),
                     children=tuple(_extension(c) for c in el if isinstance(c.tag, str)))


def _children(el: etree._Element) -> list[etree._Element]:
    return [c for c in el if isinstance(c.tag, str)]


def _fields(el: etree._Element, known: dict[str, Callable[[etree._Element], None]],
            exts: list[Extension]) -> None:
    for c in _children(el):
        handler = known.get(c.tag)
        if handler is not None:
            handler(c)
        elif c.tag.startswith(_R):
            raise MetadataError(f"line {c.sourceline}: unexpected element "
                                f"<{etree.QName(c).localname}> in <{etree.QName(el).localname}>")
        else:
            exts.append(_extension(c))


def _attr(el: etree._Element, name: str) -> str:
    v = el.get(name)
    if v is None:
        raise MetadataError(f"line {el.sourceline}: <{etree.QName(el).localname}> has no {name}")
    return v


def parse_metadata(data: bytes | etree._Element) -> Recording:
    """Parse an RFC 7865 document into a :class:`Recording`; :class:`MetadataError` if it is
    not one (the validator gives the detailed findings)."""
    root = parse_xml(data) if isinstance(data, bytes) else data
    if root.tag != _R + "recording":
        raise MetadataError(f"root element is {root.tag!r}, not {{{RECORDING_NS}}}recording")
    datamode = DataMode.COMPLETE
    groups, sessions, participants, streams = [], [], [], []
    sras, psas, psts, exts = [], [], [], []
    for el in _children(root):
        tag = el.tag
        if tag == _R + "datamode":
            try:
                datamode = DataMode(_text(el).strip())
            except ValueError as exc:
                raise MetadataError(f"line {el.sourceline}: datamode {_text(el)!r}") from exc
        elif tag == _R + "group":
            groups.append(_group(el))
        elif tag == _R + "session":
            sessions.append(_session(el))
        elif tag == _R + "participant":
            participants.append(_participant(el))
        elif tag == _R + "stream":
            streams.append(_stream(el))
        elif tag == _R + "sessionrecordingassoc":
            sras.append(_sra(el))
        elif tag == _R + "participantsessionassoc":
            psas.append(_psa(el))
        elif tag == _R + "participantstreamassoc":
            psts.append(_pst(el))
        elif tag.startswith(_R):
            raise MetadataError(f"line {el.sourceline}: unknown element "
                                f"<{etree.QName(el).localname}>")
        else:
            exts.append(_extension(el))
    return Recording(datamode, tuple(groups), tuple(sessions), tuple(participants),
                     tuple(streams), tuple(sras), tuple(psas), tuple(psts), tuple(exts))


def _assoc_times(v: dict[str, datetime | None]) -> dict[str, Callable[[etree._Element], None]]:
    return {_R + "associate-time": lambda c: v.__setitem__("associate_time", _time(c)),
            _R + "disassociate-time": lambda c: v.__setitem__("disassociate_time", _time(c))}


def _group(el: etree._Element) -> Group:
    v: dict[str, datetime | None] = {"associate_time": None, "disassociate_time": None}
    exts: list[Extension] = []
    _fields(el, _assoc_times(v), exts)
    return Group(_attr(el, "group_id"), v["associate_time"], v["disassociate_time"], tuple(exts))


def _session(el: etree._Element) -> Session:
    sids: list[str] = []
    reasons: list[Reason] = []
    v: dict[str, object] = {"group_ref": None, "start": None, "stop": None}
    exts: list[Extension] = []

    def reason(c: etree._Element) -> None:
        cause = _attr(c, "cause").strip()
        if not re.fullmatch(r"[+-]?\d+", cause) or not -32768 <= int(cause) <= 32767:
            raise MetadataError(f"line {c.sourceline}: reason cause {cause!r} is not an xs:short")
        reasons.append(Reason(int(cause), _text(c), c.get("protocol", "SIP")))

    _fields(el, {
        _R + "sipSessionID": lambda c: sids.append(_text(c)),
        _R + "reason": reason,
        _R + "group-ref": lambda c: v.__setitem__("group_ref", _text(c).strip()),
        _R + "start-time": lambda c: v.__setitem__("start", _time(c)),
        _R + "stop-time": lambda c: v.__setitem__("stop", _time(c)),
    }, exts)
    return Session(_attr(el, "session_id"), tuple(sids), tuple(reasons),
                   v["group_ref"],  # type: ignore[arg-type]
                   v["start"], v["stop"], tuple(exts))  # type: ignore[arg-type]


def _participant(el: etree._Element) -> Participant:
    nids: list[NameID] = []
    exts: list[Extension] = []

    def name_id(c: etree._Element) -> None:
        name = c.find(_R + "name")
        nids.append(NameID(_attr(c, "aor"), name.text or "" if name is not None else None,
                           name.get(_LANG) if name is not None else None))

    _fields(el, {_R + "nameID": name_id}, exts)
    return Participant(_attr(el, "participant_id"), tuple(nids), tuple(exts))


def _stream(el: etree._Element) -> Stream:
    labels: list[str] = []
    exts: list[Extension] = []
    _fields(el, {_R + "label": lambda c: labels.append(_text(c))}, exts)
    if len(labels) != 1:
        raise MetadataError(f"line {el.sourceline}: stream has {len(labels)} labels")
    return Stream(_attr(el, "stream_id"), _attr(el, "session_id"), labels[0], tuple(exts))


def _sra(el: etree._Element) -> SessionRecordingAssoc:
    v: dict[str, datetime | None] = {"associate_time": None, "disassociate_time": None}
    exts: list[Extension] = []
    _fields(el, _assoc_times(v), exts)
    return SessionRecordingAssoc(_attr(el, "session_id"), v["associate_time"],
                                 v["disassociate_time"], tuple(exts))


def _psa(el: etree._Element) -> ParticipantSessionAssoc:
    v: dict[str, datetime | None] = {"associate_time": None, "disassociate_time": None}
    params: list[Param] = []
    exts: list[Extension] = []
    known = _assoc_times(v)
    known[_R + "param"] = lambda c: params.append(Param(_attr(c, "pname"), _attr(c, "pval")))
    _fields(el, known, exts)
    return ParticipantSessionAssoc(_attr(el, "participant_id"), _attr(el, "session_id"),
                                   v["associate_time"], v["disassociate_time"], tuple(params),
                                   tuple(exts))


def _pst(el: etree._Element) -> ParticipantStreamAssoc:
    v: dict[str, datetime | None] = {"associate_time": None, "disassociate_time": None}
    send: list[str] = []
    recv: list[str] = []
    exts: list[Extension] = []
    known = _assoc_times(v)
    known[_R + "send"] = lambda c: send.append(_text(c).strip())
    known[_R + "recv"] = lambda c: recv.append(_text(c).strip())
    _fields(el, known, exts)
    return ParticipantStreamAssoc(_attr(el, "participant_id"), tuple(send), tuple(recv),
                                  v["associate_time"], v["disassociate_time"], tuple(exts))


def parse_snapshot_request(data: bytes) -> SnapshotRequest:
    """Parse an RFC 7865 §7 ``requestsnapshot`` body."""
    root = parse_xml(data)
    if root.tag != _R + "requestsnapshot":
        raise MetadataError(f"root element is {root.tag!r}, not requestsnapshot")
    reason = root.find(_R + "requestreason")
    if reason is None:
        return SnapshotRequest()
    return SnapshotRequest(reason.text or "", reason.get(_LANG))
