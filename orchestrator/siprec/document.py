"""What one RFC 7865 document says, collected from its XML for the rules engine (sans-IO).

:func:`collect` walks a ``<recording>`` and keeps, per object, the raw values and the line
each came from: declared IDs, references, times, names, labels, foreign elements. It judges
nothing (the rules in :mod:`.engine` do), except that for a document whose schema check
passed it first makes a fast walk that only decides whether the document is *clean*: that
flag is the engine's fast path (a clean complete snapshot has no findings, and nothing more
is collected), and a property test shows it is set exactly when the rules find nothing.
Any other document gets the full walk. It is one function: the fast walk skips the
bookkeeping that only the rules' messages need.

A :class:`Doc` is also the accumulated state of a recording session: :meth:`Doc.merge`
applies a partial update (RFC 7865 §6.1 ``datamode=partial``) to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from lxml import etree

from .model import RECORDING_NS, XML_NS
from .parse import parse_datetime

__all__ = ["Assoc", "Doc", "NameDecl", "StreamAssoc", "StreamDecl", "before", "collect", "parse_time",
           "zoned"]

_R = "{" + RECORDING_NS + "}"
_LANG = "{" + XML_NS + "}lang"
_DATAMODE, _GROUP, _SESSION = _R + "datamode", _R + "group", _R + "session"
_PARTICIPANT, _STREAM, _SRA = _R + "participant", _R + "stream", _R + "sessionrecordingassoc"
_PSA, _PST = _R + "participantsessionassoc", _R + "participantstreamassoc"
_ASSOC_T, _DISASSOC_T = _R + "associate-time", _R + "disassociate-time"
_NAMEID, _NAME, _LABEL, _SEND, _RECV = _R + "nameID", _R + "name", _R + "label", _R + "send", \
    _R + "recv"
_SIPSESSIONID, _GROUPREF, _REASON = _R + "sipSessionID", _R + "group-ref", _R + "reason"
_START_T, _STOP_T, _PARAM = _R + "start-time", _R + "stop-time", _R + "param"

#: The canonical form of a 16-byte base64 ID (a UUID): what the fast path accepts at a glance.
B64_16 = re.compile(r"[A-Za-z0-9+/]{21}[AQgw]==")
#: An RFC 7865 aor the fast path accepts at a glance (sip:, sips:, tel: URI).
AOR_OK = re.compile(r"(?:sips?|tel):[^\s<>\"]+", re.IGNORECASE)
#: An RFC 7989 Session-ID value (32 hex digits, optional ;remote=) as RFC 7865 §6.3 expects.
SESSION_ID = re.compile(r"[0-9a-fA-F]{32}(;\s*remote=[0-9a-fA-F]{32})?(;.*)?", re.DOTALL)
#: RFC 4566 token (the a=label value, RFC 4574).
LABEL_TOKEN = re.compile(r"[!#-'*+\-.0-9A-Z^-~]+")


def _token(label: str) -> bool:
    return label.isascii() and label.isdigit() or LABEL_TOKEN.fullmatch(label) is not None


def zoned(text: str | None) -> bool:
    """True for an absent time or a schema-valid one that carries a timezone."""
    return text is None or text[-1:] == "Z" or text[-3:-2] == ":" and text[-6:-5] in ("+", "-")


@dataclass(slots=True)
class Assoc:
    """An association's (or group's, or session's start/stop) times, as written."""

    line: int | None
    assoc: str | None = None
    disassoc: str | None = None


class StreamAssoc(Assoc):
    """A participantstreamassoc: its times and the streams it sends and receives."""

    __slots__ = ("recv", "send")

    def __init__(self, line: int | None, assoc: str | None = None, disassoc: str | None = None,
                 send: list[tuple[str, int | None]] | None = None,
                 recv: list[tuple[str, int | None]] | None = None) -> None:
        self.line, self.assoc, self.disassoc = line, assoc, disassoc
        self.send: list[tuple[str, int | None]] = [] if send is None else send
        self.recv: list[tuple[str, int | None]] = [] if recv is None else recv


class StreamDecl(tuple[list[str], str | None, int | None]):
    """A ``<stream>``: its labels, its session_id and its line. A tuple built with the C
    constructor (``StreamDecl((labels, session, line))``): the fast path makes one per
    stream."""

    __slots__ = ()
    labels = property(itemgetter(0), doc="the <label> values (one in a valid snapshot)")
    session = property(itemgetter(1), doc="session_id, if given")
    line = property(itemgetter(2), doc="line of the <stream> element")

    @property
    def label(self) -> str | None:
        labels = self[0]
        return labels[0] if len(labels) == 1 else None


#: One ``<nameID>``: its aor, its line, and the line of a ``<name>`` without ``xml:lang``.
NameDecl = tuple[str | None, int | None, int | None]


class Doc:
    """One document's objects (or the accumulated recording session), keyed by ID."""

    __slots__ = ("clean", "datamode", "foreign", "group_refs", "groups", "ids", "line", "loose",
                 "missing", "names", "partial", "participants", "psas", "psts", "repeated",
                 "root_attributes", "session_ids", "sessions", "sras", "streams", "times")

    def __init__(self, line: int | None = None) -> None:
        self.line = line  # of the <recording> element
        self.partial = False
        self.clean = False  # set by collect() on the fast path; see the module docstring
        self.datamode: tuple[str, int | None] | None = None  # a datamode that is neither value
        # (kind, attribute, value or None, line): declared IDs, for R14/R15/R16
        self.ids: list[tuple[str, str, str | None, int | None]] = []
        # (kind, attribute, line): a missing required reference attribute (R14)
        self.missing: list[tuple[str, str, int | None]] = []
        # (what, value, line): references of elements not kept by their key (still R15)
        self.loose: list[tuple[str, str | None, int | None]] = []
        self.times: list[tuple[str, str | None, int | None]] = []
        self.groups: dict[str, Assoc] = {}
        self.sessions: dict[str, Assoc] = {}  # assoc=start, disassoc=stop
        self.session_ids: dict[str, list[tuple[str, int | None]]] = {}
        self.group_refs: list[tuple[str, str, int | None]] = []
        self.participants: dict[str, int | None] = {}
        self.names: list[NameDecl] = []
        self.streams: dict[str, StreamDecl] = {}
        self.sras: dict[str, Assoc] = {}
        self.psas: dict[tuple[str, str], Assoc] = {}
        self.psts: dict[str, StreamAssoc] = {}
        # (kind, key, line) of a second association for the same key
        self.repeated: list[tuple[str, str, int | None]] = []
        # (element, parent, line, in the recording namespace?) of elements RFC 7865 lacks
        self.foreign: list[tuple[str, str, int | None, bool]] = []
        self.root_attributes: list[tuple[str, str]] = []

    def merge(self, doc: Doc) -> None:
        """Apply a partial update (RFC 7865 §6.1): given fields override, objects accumulate;
        a partial participantstreamassoc replaces the participant's send/recv set (R28)."""
        _merge_assocs(self.groups, doc.groups)
        _merge_assocs(self.sessions, doc.sessions)
        _merge_assocs(self.sras, doc.sras)
        _merge_assocs(self.psas, doc.psas)
        self.group_refs.extend(doc.group_refs)
        self.participants.update(doc.participants)
        for sid, st in doc.streams.items():
            old = self.streams.get(sid)
            self.streams[sid] = StreamDecl((st.labels or (old.labels if old else []),
                                            st.session or (old.session if old else None),
                                            st.line))
        for pid, pst in doc.psts.items():
            old_pst = self.psts.get(pid)
            self.psts[pid] = StreamAssoc(
                pst.line, pst.assoc or (old_pst.assoc if old_pst else None),
                pst.disassoc or (old_pst.disassoc if old_pst else None),
                list(pst.send), list(pst.recv))

    def copy(self) -> Doc:
        new = Doc()
        new.merge(self)
        return new


def _merge_assocs(mine: dict[Any, Assoc], theirs: dict[Any, Assoc]) -> None:
    for key, new in theirs.items():
        old = mine.get(key)
        if old is None:
            mine[key] = Assoc(new.line, new.assoc, new.disassoc)
        else:
            old.assoc = new.assoc or old.assoc
            old.disassoc = new.disassoc or old.disassoc


def _foreign(doc: Doc, c: etree._Element, parent: str) -> None:
    tag = c.tag
    if not isinstance(tag, str):
        return  # comment or processing instruction
    if tag.startswith(_R):
        doc.foreign.append((tag[len(_R):], parent, c.sourceline, True))
    elif not tag.startswith("{"):
        doc.foreign.append((tag, parent, c.sourceline, False))


# what R20 calls each time, per element (constants: the hot path builds no strings)
_TIME_NAMES = {
    kind: (f"{kind} associate-time", f"{kind} disassociate-time")
    for kind in ("group", "sessionrecordingassoc", "participantsessionassoc",
                 "participantstreamassoc")}


def _times(doc: Doc, el: etree._Element, kind: str, a: Assoc, full: bool,
           extra: str | None = None) -> None:
    """Collect associate-time/disassociate-time children (and report others as foreign,
    except ``extra``, an element the schema allows here)."""
    for c in el:
        tag = c.tag
        if tag == _ASSOC_T:
            a.assoc = text = c.text
            if full:
                doc.times.append((_TIME_NAMES[kind][0], text, c.sourceline))
        elif tag == _DISASSOC_T:
            a.disassoc = text = c.text
            if full:
                doc.times.append((_TIME_NAMES[kind][1], text, c.sourceline))
        elif tag != extra:
            _foreign(doc, c, kind)


def collect(root: etree._Element, schema_ok: bool, sdp_labels: list[str] | None, *,
            fast: bool = True) -> Doc:
    """The objects of a ``<recording>``. For a schema-valid document the fast path goes
    first: it collects only what deciding :attr:`Doc.clean` needs (complete snapshots only;
    a partial update is never clean) and, if the document is not clean, the walk is made
    again keeping everything the rules report from (IDs, times, names with their lines).
    ``fast=False`` always makes the full walk (the property test compares the two)."""
    if schema_ok and fast:
        doc = _collect(root, True, sdp_labels, full=False)
        if doc.clean:
            return doc
    return _collect(root, False, sdp_labels, full=True)


def _collect(root: etree._Element, clean: bool, sdp_labels: list[str] | None,
             full: bool) -> Doc:
    doc = Doc(root.sourceline)
    known: set[str | None] = set()  # every declared ID, for uniqueness on the fast path
    ids, times, loose, names = doc.ids, doc.times, doc.loose, doc.names
    streams, psts, psas, sras = doc.streams, doc.psts, doc.psas, doc.sras
    participants, sessions, groups = doc.participants, doc.sessions, doc.groups
    b64 = B64_16.fullmatch
    for el in root:
        tag = el.tag
        if tag == _STREAM:
            line = el.sourceline
            sid = el.get("stream_id")
            session = el.get("session_id")
            if full:
                ids.append(("stream", "stream_id", sid, line))
            elif sid in known:
                clean = False
            known.add(sid)
            labels: list[str] = []
            for c in el:
                if c.tag == _LABEL:
                    labels.append((c.text or "").strip())
                else:
                    _foreign(doc, c, "stream")
            if sid is not None:
                streams[sid] = StreamDecl((labels, session, line))
            elif session is not None:
                loose.append(("stream session_id", session, line))
            # the schema puts sessions before streams, so a known session is a checked ID
            if clean and (sid is None or not b64(sid) or session not in sessions
                          or len(labels) != 1 or not (labels[0].isdigit() and labels[0].isascii()
                                                      or _token(labels[0]))):
                clean = False
        elif tag == _PST:
            line = el.sourceline
            pid = el.get("participant_id")
            sa = StreamAssoc(line)
            send, recv = sa.send, sa.recv
            for c in el:
                ctag = c.tag
                # the fast walk keeps the text as it is: one with spaces names no stream, so
                # the document is not clean and the full walk (which strips) runs
                if ctag == _SEND:
                    send.append(((c.text or "").strip() if full else c.text, c.sourceline))
                elif ctag == _RECV:
                    recv.append(((c.text or "").strip() if full else c.text, c.sourceline))
                elif ctag == _ASSOC_T:
                    sa.assoc = text = c.text
                    if full:
                        times.append(("participantstreamassoc associate-time", text,
                                      c.sourceline))
                elif ctag == _DISASSOC_T:
                    sa.disassoc = text = c.text
                    if full:
                        times.append(("participantstreamassoc disassociate-time", text,
                                      c.sourceline))
                else:
                    _foreign(doc, c, "participantstreamassoc")
            if pid is None:
                doc.missing.append(("participantstreamassoc", "participant_id", line))
                _loosen(loose, sa)
            else:
                old = psts.get(pid)
                if old is not None:
                    doc.repeated.append(("participantstreamassoc", pid, line))
                    _loosen(loose, old)
                psts[pid] = sa
            if clean and (pid not in participants or not zoned(sa.assoc)
                          or sa.disassoc is not None and not zoned(sa.disassoc)):
                clean = False
        elif tag == _PARTICIPANT:
            line = el.sourceline
            pid = el.get("participant_id")
            if full:
                ids.append(("participant", "participant_id", pid, line))
            elif pid in known:
                clean = False
            known.add(pid)
            if pid is not None and pid not in participants:
                participants[pid] = line
            for c in el:
                if c.tag == _NAMEID:
                    aor = c.get("aor")
                    no_lang = None
                    for name in c:
                        if name.tag == _NAME and name.get(_LANG) is None:
                            no_lang = name.sourceline
                    if full:
                        names.append((aor, c.sourceline, no_lang))
                    if clean and (no_lang is not None or aor is None
                                  or not AOR_OK.fullmatch(aor)):
                        clean = False
                else:
                    _foreign(doc, c, "participant")
            if clean and (pid is None or not b64(pid)):
                clean = False
        elif tag == _PSA:
            line = el.sourceline
            a = Assoc(line)
            _times(doc, el, "participantsessionassoc", a, full, _PARAM)
            pid = el.get("participant_id")
            sid = el.get("session_id")
            if pid is None or sid is None:
                for attr, value in (("participant_id", pid), ("session_id", sid)):
                    if value is None:
                        doc.missing.append(("participantsessionassoc", attr, line))
                    else:
                        loose.append((f"participantsessionassoc {attr}", value, line))
                clean = False
            else:
                if (pid, sid) in psas:
                    doc.repeated.append(("participantsessionassoc", f"{pid} {sid}", line))
                psas[(pid, sid)] = a
                if clean and (pid not in participants or sid not in sessions
                              or not zoned(a.assoc)
                              or a.disassoc is not None and not zoned(a.disassoc)):
                    clean = False
        elif tag == _SRA:
            line = el.sourceline
            a = Assoc(line)
            _times(doc, el, "sessionrecordingassoc", a, full)
            sid = el.get("session_id")
            if sid is None:
                doc.missing.append(("sessionrecordingassoc", "session_id", line))
                clean = False
            else:
                if sid in sras:
                    doc.repeated.append(("sessionrecordingassoc", sid, line))
                sras[sid] = a
                if clean and (sid not in sessions or not zoned(a.assoc)
                              or a.disassoc is not None and not zoned(a.disassoc)):
                    clean = False
        elif tag == _SESSION:
            line = el.sourceline
            sid = el.get("session_id")
            if full:
                ids.append(("session", "session_id", sid, line))
            elif sid in known:
                clean = False
            known.add(sid)
            a = Assoc(line)
            sip_ids: list[tuple[str, int | None]] = []
            has_sip_id = False
            for c in el:
                ctag = c.tag
                if ctag == _SIPSESSIONID:
                    text = (c.text or "").strip()
                    if full:
                        sip_ids.append((text, c.sourceline))
                    elif not SESSION_ID.fullmatch(text):
                        clean = False
                    has_sip_id = True
                elif ctag == _GROUPREF:
                    ref = (c.text or "").strip()
                    if sid is None:
                        loose.append(("group-ref", ref, c.sourceline))
                    else:
                        doc.group_refs.append((sid, ref, c.sourceline))
                elif ctag == _START_T:
                    a.assoc = text = c.text
                    if full:
                        times.append(("session start-time", text, c.sourceline))
                elif ctag == _STOP_T:
                    a.disassoc = text = c.text
                    if full:
                        times.append(("session stop-time", text, c.sourceline))
                elif ctag != _REASON:
                    _foreign(doc, c, "session")
            if sid is not None and sid not in sessions:
                sessions[sid] = a
                if full:
                    doc.session_ids.setdefault(sid, []).extend(sip_ids)
            if clean and (sid is None or not b64(sid) or not has_sip_id or not zoned(a.assoc)
                          or a.disassoc is not None and not zoned(a.disassoc)):
                clean = False
        elif tag == _GROUP:
            line = el.sourceline
            gid = el.get("group_id")
            if full:
                ids.append(("group", "group_id", gid, line))
            elif gid in known:
                clean = False
            known.add(gid)
            a = Assoc(line)
            _times(doc, el, "group", a, full)
            if gid is not None and gid not in groups:
                groups[gid] = a
            if clean and (gid is None or not b64(gid) or not zoned(a.assoc)
                          or a.disassoc is not None and not zoned(a.disassoc)):
                clean = False
        elif tag == _DATAMODE:
            mode = (el.text or "").strip()
            if mode == "partial":
                doc.partial = True
            elif mode != "complete":
                doc.datamode = (mode, el.sourceline)
        else:
            _foreign(doc, el, "recording")
    for name in root.attrib:
        doc.root_attributes.append((name, root.get(name) or ""))
    doc.clean = clean and not doc.partial and _clean_complete(doc, sdp_labels)
    return doc


def _loosen(loose: list[tuple[str, str | None, int | None]], sa: StreamAssoc) -> None:
    """Keep the references of a participantstreamassoc that is not kept, for R15."""
    loose.extend(("send", ref, line) for ref, line in sa.send)
    loose.extend(("recv", ref, line) for ref, line in sa.recv)


def _clean_complete(doc: Doc, sdp: list[str] | None) -> bool:
    """The whole-document half of the fast path: every check of the rules that needs more
    than one element (uniqueness, references, labels, completeness, time order) passes."""
    if doc.repeated or doc.foreign or doc.root_attributes or doc.datamode is not None \
            or doc.loose or doc.missing:
        return False
    groups, sessions, participants, streams = doc.groups, doc.sessions, doc.participants, \
        doc.streams
    for _sid, ref, _line in doc.group_refs:
        if ref not in groups:
            return False
    labels = set()
    for st in streams.values():
        label = st.labels[0]
        if st.session not in sessions or label in labels:
            return False
        labels.add(label)
    if sdp is not None and (len(sdp) != len(labels) or not labels.issuperset(sdp)):
        return False
    if len(doc.sras) != len(sessions):
        return False
    for sid, a in doc.sras.items():
        if sid not in sessions or a.disassoc is not None and _before(a.disassoc, a.assoc):
            return False
    in_session = set()
    for (pid, sid), a in doc.psas.items():
        if pid not in participants or sid not in sessions or a.disassoc is not None \
                and _before(a.disassoc, a.assoc):
            return False
        in_session.add(pid)
    if len(in_session) != len(participants):
        return False
    for a in (*groups.values(), *sessions.values()):
        if a.disassoc is not None and _before(a.disassoc, a.assoc):
            return False
    senders: set[str] = set()
    for pid, pst in doc.psts.items():
        if pid not in participants or pst.disassoc is not None \
                and _before(pst.disassoc, pst.assoc):
            return False
        own = set()
        for ref, _line in pst.send:
            if ref not in streams or ref in senders:
                return False
            own.add(ref)
        for ref, _line in pst.recv:
            if ref not in streams or ref in own:
                return False
        senders |= own
    return len(senders) == len(streams)


def parse_time(text: str | None) -> datetime | None:
    """An xs:dateTime text as a datetime (None if absent or unparseable)."""
    if text is None:
        return None
    try:
        return parse_datetime(text)
    except ValueError:
        return None


def before(a: str | None, b: str | None) -> bool:
    """True if time ``a`` is strictly before time ``b`` (both given and comparable)."""
    da, db = parse_time(a), parse_time(b)
    if da is None or db is None:
        return False
    try:
        return da < db
    except TypeError:  # one zoned, one not: R20 reports the unzoned one
        return False


_before = before
