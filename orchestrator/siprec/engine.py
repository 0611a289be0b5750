"""The RFC 7865 rules engine: every semantic rule once, with its rule id (sans-IO).

The validator, the builder's self-check (:func:`orchestrator.siprec.builder.check_recording`)
and the reference SRS all judge metadata here. Input is a :class:`~.document.Doc` collected
from the XML; output is ``(rule, severity, line, message)`` tuples, in document order.

Two paths give the same findings: :func:`check` returns nothing at once for a complete
snapshot that passed the schema and that :func:`~.document.collect` found clean (the fast
path), and runs every rule otherwise (:func:`run_rules`). A hypothesis property test
(``tests/unit/test_siprec_engine.py``) shows ``Doc.clean`` is set exactly when the rules find
nothing, on generated documents with and without defects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .document import (
    AOR_OK,
    LABEL_TOKEN,
    SESSION_ID,
    Assoc,
    Doc,
    before,
)
from .model import id_bytes
from .parse import parse_datetime
from .rules import Severity
from .xsd import KNOWN_ELEMENTS

__all__ = ["RULE_FUNCTIONS", "Context", "Raw", "apply", "check", "line_key", "run_rules"]

E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
Raw = tuple[str, Severity, "int | None", str]
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+")
_BARE_AOR = re.compile(r"[^\s<>\"@:]+@[^\s<>\"@]+")
_DT_ZONED = re.compile(r"-?\d{4,}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")
_ROOT_CHILDREN = frozenset({"datamode", "group", "session", "participant", "stream",
                            "sessionrecordingassoc", "participantsessionassoc",
                            "participantstreamassoc"})


@dataclass(frozen=True, slots=True)
class Context:
    """What a document is judged against: the profile's leniency, the SDP labels of the
    same request (or of the current negotiated SDP), and the accumulated recording session
    before this document (``None`` for a document on its own)."""

    lenient: bool = False
    sdp_labels: list[str] | None = None
    state: Doc | None = None


class _Out(list[Raw]):
    def add(self, rule: str, sev: Severity, line: int | None, msg: str) -> None:
        self.append((rule, sev, line, msg))


# --------------------------------------------------------------------------- per value

def _b64(out: _Out, line: int | None, what: str, value: str) -> None:
    raw = id_bytes(value)
    if raw is None:
        out.add("R15", E, line, f"{what} {value!r} is not base64Binary (length a multiple of 4, "
                "alphabet A-Z a-z 0-9 + /, '=' padding only)")
    elif len(raw) != 16:
        out.add("R15", W, line, f"{what} {value!r} decodes to {len(raw)} bytes, not the 16 of "
                "a UUID (RFC 7865 recommends base64 of a 128-bit UUID)")


def r13_datamode(doc: Doc, ctx: Context, out: _Out) -> None:
    if doc.datamode is not None:
        mode, line = doc.datamode
        out.add("R13", E, line, f"datamode is {mode!r}; it must be 'complete' or 'partial'")


def r14_r15_r16_ids(doc: Doc, ctx: Context, out: _Out) -> None:
    """R14 a missing ID attribute, R15 IDs and references are base64Binary (16 bytes
    expected), R16 IDs unique per element type (and, a warning, across types)."""
    seen: dict[tuple[str, str], int] = {}
    kind_of: dict[str, str] = {}
    for kind, attr, value, line in doc.ids:
        if value is None:
            out.add("R14", E, line, f"<{kind}> has no {attr} attribute (required)")
            continue
        _b64(out, line, f"{kind} {attr}", value)
        if (kind, value) in seen:
            out.add("R16", E, line, f"{attr} {value} is used by two <{kind}> elements")
        seen[(kind, value)] = 1
        other = kind_of.get(value)
        if other is not None and other != kind:
            out.add("R16", W, line, f"{attr} {value} is also the ID of a <{other}>")
        kind_of[value] = kind
    for kind, attr, line in doc.missing:
        out.add("R14", E, line, f"<{kind}> has no {attr} attribute (required)")
    for what, value, line in _references(doc):
        if value is not None:
            _b64(out, line, what, value)
    for kind, key, line in doc.repeated:
        if kind == "participantstreamassoc":
            out.add("R16", E, line, f"two participantstreamassoc elements for participant {key}")
        elif kind == "participantsessionassoc":
            pid, _, sid = key.partition(" ")
            out.add("R16", W, line, f"second participantsessionassoc for participant {pid} in "
                    f"session {sid}")
        else:
            out.add("R16", W, line, f"second sessionrecordingassoc for session {key}")


def _references(doc: Doc) -> Iterable[tuple[str, str | None, int | None]]:
    """Every reference value of the document, with what it is and its line."""
    for st in doc.streams.values():
        if st.session is not None:
            yield "stream session_id", st.session, st.line
    for _sid, ref, line in doc.group_refs:
        yield "group-ref", ref, line
    for sid, a in doc.sras.items():
        yield "sessionrecordingassoc session_id", sid, a.line
    for (pid, sid), a in doc.psas.items():
        yield "participantsessionassoc participant_id", pid, a.line
        yield "participantsessionassoc session_id", sid, a.line
    for pid, pst in doc.psts.items():
        yield "participantstreamassoc participant_id", pid, pst.line
        for ref, line in pst.send:
            yield "send", ref, line
        for ref, line in pst.recv:
            yield "recv", ref, line
    yield from doc.loose


def r20_times(doc: Doc, ctx: Context, out: _Out) -> None:
    """R20: every time is an xs:dateTime with a timezone."""
    for what, text, line in doc.times:
        if text is not None and _DT_ZONED.fullmatch(text):
            continue
        t = (text or "").strip()
        try:
            value = parse_datetime(t)
        except ValueError:
            hint = " (the timezone needs a colon: ±hh:mm)" if re.search(r"[+-]\d{4}$", t) else ""
            out.add("R20", E, line, f"{what} {t!r} is not an xs:dateTime{hint}")
            continue
        if value.tzinfo is None:
            out.add("R20", INFO if ctx.lenient else W, line,
                    f"{what} {t} has no timezone; add Z or ±hh:mm")


def _order(out: _Out, a: Assoc, kind: str, key: str, names: tuple[str, str]) -> None:
    if a.disassoc is not None and before(a.disassoc, a.assoc):
        out.add("R21", E, a.line, f"{kind} {key}: {names[1]} {a.disassoc.strip()} is before "
                f"{names[0]} {(a.assoc or '').strip()}")


def r21_time_order(doc: Doc, ctx: Context, out: _Out) -> None:
    """R21: associate-time ≤ disassociate-time, start-time ≤ stop-time (in the document)."""
    times = ("associate-time", "disassociate-time")
    for gid, a in doc.groups.items():
        _order(out, a, "group", gid, times)
    for sid, a in doc.sessions.items():
        _order(out, a, "session", sid, ("start-time", "stop-time"))
    for sid, a in doc.sras.items():
        _order(out, a, "sessionrecordingassoc", sid, times)
    for (pid, _sid), a in doc.psas.items():
        _order(out, a, "participantsessionassoc", pid, times)
    for pid, pst in doc.psts.items():
        _order(out, pst, "participantstreamassoc", pid, times)


def r19_aor(doc: Doc, ctx: Context, out: _Out) -> None:
    """R19: nameID aor is a sip:, sips: or tel: URI; a name says its language."""
    for aor, line, no_lang in doc.names:
        if aor is not None and not AOR_OK.fullmatch(aor):
            if _BARE_AOR.fullmatch(aor):
                out.add("R19", INFO if ctx.lenient else W, line,
                        f"aor {aor!r} has no URI scheme; write sip:{aor}")
            elif _URI.fullmatch(aor):
                out.add("R19", W, line, f"aor {aor!r} is not a sip:, sips: or tel: URI")
            else:
                out.add("R19", E, line, f"aor {aor!r} is not a URI")
        if no_lang is not None:
            out.add("R19", INFO, no_lang, "name has no xml:lang")


def r24_sip_session_id(doc: Doc, ctx: Context, out: _Out) -> None:
    """R24: sipSessionID holds an RFC 7989 Session-ID (RFC 7865 §6.3); a complete snapshot
    without one is noted (the SRS cannot tell whether the call had a Session-ID)."""
    for sid, values in doc.session_ids.items():
        for text, line in values:
            if not SESSION_ID.fullmatch(text):
                out.add("R24", W, line, f"sipSessionID {text!r} does not look like an RFC 7989 "
                        "Session-ID (32 hex digits, optional ;remote=); is it a Call-ID?")
        if not values and not doc.partial:
            out.add("R24", INFO, doc.sessions[sid].line,
                    f"session {sid} has no sipSessionID: if the recorded call carries an "
                    "RFC 7989 Session-ID header, RFC 7865 §6.3 puts its value here")


def r25_foreign(doc: Doc, ctx: Context, out: _Out) -> None:
    """R25: extensions only as elements in a foreign namespace; no attributes on
    <recording> (RFC 7865 §9 declares none, and no extension attributes)."""
    for name, value in doc.root_attributes:
        out.add("R25", E, doc.line, f"<recording> has attribute {name}={value!r}; RFC 7865 allows "
                "no attributes here (extensions are elements in a foreign namespace)")
    for name, parent, line, in_ns in doc.foreign:
        where = "" if parent == "recording" else f" in <{parent}>"
        if in_ns:
            if parent != "recording" and name in KNOWN_ELEMENTS \
                    or parent == "recording" and name in _ROOT_CHILDREN:
                continue  # a misplaced RFC 7865 element: the schema reports the order
            out.add("R25", E, line, f"<{name}>{where} is not an RFC 7865 element; extensions "
                    "must be in a foreign namespace")
        else:
            out.add("R25", E, line, f"<{name}>{where} has no namespace; extensions must be in "
                    "a foreign namespace")


# --------------------------------------------------------------------------- across objects

def references(out: _Out, doc: Doc, known: Doc, where: str) -> None:
    """R17: every reference in ``doc`` names an object in ``known``."""
    add = out.add
    for sid, ref, line in doc.group_refs:
        if ref not in known.groups:
            add("R17", E, line, f"session {sid}: group-ref {ref} names no <group> in the {where}")
    for sid, st in doc.streams.items():
        if st.session is not None and st.session not in known.sessions:
            add("R17", E, st.line, f"stream {sid}: session_id {st.session} names no <session> "
                f"in the {where}")
    for sid, sra in doc.sras.items():
        if sid not in known.sessions:
            add("R17", E, sra.line, f"sessionrecordingassoc: session_id {sid} names no "
                f"<session> in the {where}")
    for (pid, sid), psa in doc.psas.items():
        if pid not in known.participants:
            add("R17", E, psa.line, f"participantsessionassoc: participant_id {pid} names no "
                f"<participant> in the {where}")
        if sid not in known.sessions:
            add("R17", E, psa.line, f"participantsessionassoc: session_id {sid} names no "
                f"<session> in the {where}")
    for pid, pst in doc.psts.items():
        if pid not in known.participants:
            add("R17", E, pst.line, f"participantstreamassoc: participant_id {pid} names no "
                f"<participant> in the {where}")
        for ref, line in (*pst.send, *pst.recv):
            if ref not in known.streams:
                add("R17", E, line, f"participant {pid}: stream {ref} names no <stream> in the "
                    f"{where}")


def r17_references(doc: Doc, ctx: Context, out: _Out) -> None:
    """R17 in a complete snapshot (partial updates: against the state, :func:`r28_state`)."""
    if not doc.partial:
        references(out, doc, doc, "document")


def r22_r23_completeness(doc: Doc, ctx: Context, out: _Out) -> None:
    """R22 (warnings): a complete snapshot ties every object to the recording; R23: a stream
    with several senders is mixed (info), a participant sending and receiving one stream is
    odd (warning)."""
    add = out.add
    if not doc.partial:
        for sid, s in doc.sessions.items():
            if sid not in doc.sras:
                add("R22", W, s.line, f"session {sid} has no sessionrecordingassoc: the SRS is "
                    "not told it is being recorded")
        in_session = {pid for pid, _sid in doc.psas}
        for pid, line in doc.participants.items():
            if pid not in in_session:
                add("R22", W, line, f"participant {pid} has no participantsessionassoc")
        senders: dict[str, int] = {}
        for pst in doc.psts.values():
            for ref, _line in pst.send:
                senders[ref] = senders.get(ref, 0) + 1
        for sid, st in doc.streams.items():
            if st.session is None:
                add("R22", W, st.line, f"stream {sid} has no session_id: it belongs to no "
                    "communication session")
            n = senders.get(sid, 0)
            if n == 0:
                add("R22", W, st.line, f"stream {sid} (label {st.label}) has no sender "
                    "(no participant <send>s it)")
            elif n > 1:
                add("R23", INFO, st.line, f"stream {sid} (label {st.label}) has {n} senders: a "
                    "mixed stream")
    for pid, pst in doc.psts.items():
        both = {r for r, _ in pst.send} & {r for r, _ in pst.recv}
        for ref in sorted(both):
            add("R23", W, pst.line, f"participant {pid} both sends and receives stream {ref}")


def r18_labels(doc: Doc, ctx: Context, out: _Out) -> None:
    """R18: one label per stream (in a complete snapshot), an SDP token, unique, matching an
    a=label of the SDP; an SDP label without a stream is a warning."""
    add = out.add
    seen: dict[str, str] = {}
    for sid, st in doc.streams.items():
        n = len(st.labels)
        if n > 1:
            add("R18", E, st.line, f"stream {sid} has {n} <label> elements; exactly one is "
                "allowed (it names the SDP a=label of its m-line)")
            continue
        if n == 0:
            if not doc.partial:
                add("R18", E, st.line, f"stream {sid} has no <label>: a complete snapshot names "
                    "the SDP a=label of every stream's m-line (RFC 7865 §6.7)")
            continue
        label = st.labels[0]
        if not LABEL_TOKEN.fullmatch(label):
            add("R18", E, st.line, f"stream {sid}: label {label!r} is not an SDP token "
                "(RFC 4574 a=label, RFC 4566 token characters)")
        if label in seen:
            add("R18", E, st.line, f"label {label!r} is used by streams {seen[label]} and "
                f"{sid}: each stream is one m-line")
        seen[label] = sid
    sdp = ctx.sdp_labels
    if sdp is None:
        return
    sdp_set = set(sdp)
    for sid, st in doc.streams.items():
        one = st.label
        if one is not None and one not in sdp_set:
            add("R18", E, st.line, f"stream {sid} has label {one!r}, but the SDP has no "
                f"a=label:{one} (SDP labels: {', '.join(sdp) or 'none'})")
    if not doc.partial:
        meta = {st.label for st in doc.streams.values()}
        for lb in sdp:
            if lb not in meta:
                add("R18", W, None, f"SDP a=label:{lb} has no <stream> in the metadata")


def r29_partial_times(doc: Doc, ctx: Context, out: _Out) -> None:
    """R29: in a partial update every association tuple carries the time of the change
    (associate-time and/or disassociate-time), unless the SRC cannot determine it."""
    if not doc.partial:
        return
    why = "give the time of the change (RFC 7865 §6.9: every association tuple of a partial " \
          "update carries it unless the exact time cannot be determined)"
    for pid, pst in doc.psts.items():
        if pst.assoc is None and pst.disassoc is None:
            out.add("R29", W, pst.line, f"participantstreamassoc of participant {pid} has neither "
                    f"associate-time nor disassociate-time: {why}")
    for (pid, sid), psa in doc.psas.items():
        if psa.assoc is None and psa.disassoc is None:
            out.add("R29", W, psa.line, f"participantsessionassoc of participant {pid} in session "
                    f"{sid} has neither associate-time nor disassociate-time: {why}")
    for sid, sra in doc.sras.items():
        if sra.assoc is None and sra.disassoc is None:
            out.add("R29", W, sra.line, f"sessionrecordingassoc of session {sid} has neither "
                    f"associate-time nor disassociate-time: {why}")


def r28_state(doc: Doc, ctx: Context, out: _Out) -> None:
    """R28 and the stateful parts of R17/R21: a partial update applies to the accumulated
    recording session."""
    if not doc.partial:
        return
    state = ctx.state
    if state is None:
        out.add("R28", INFO, doc.line, "partial update without an earlier complete snapshot: "
                "references to earlier objects are not checked")
        return
    known = state.copy()
    known.merge(doc)
    references(out, doc, known, "recording session")
    add = out.add
    for key, a in doc.psas.items():
        old = state.psas.get(key)
        if old is None:
            continue
        if a.assoc is None and before(a.disassoc, old.assoc):
            add("R21", E, a.line, f"participant {key[0]}: disassociate-time {a.disassoc} is "
                f"before its associate-time {old.assoc}")
        if old.disassoc is not None and a.disassoc is not None and (
                a.assoc is None or not before(old.disassoc, a.assoc)):
            add("R21", W, a.line, f"participant {key[0]} is disassociated again without a "
                "re-association in between")
    for sid, s in doc.sessions.items():
        old = state.sessions.get(sid)
        if old is not None and s.assoc is None and before(s.disassoc, old.assoc):
            add("R21", E, s.line, f"session {sid}: stop-time {s.disassoc} is before its "
                f"start-time {old.assoc}")
    labels = {sid: st.label for sid, st in known.streams.items()}
    for pid, pst in doc.psts.items():
        old_pst = state.psts.get(pid)
        if old_pst is None:
            continue
        dropped = [r for r, _ in old_pst.send if r not in {x for x, _ in pst.send}]
        if dropped and pst.disassoc is None:
            names = ", ".join(str(labels.get(r, r)) for r in dropped)
            add("R28", INFO, pst.line, f"partial update replaces the send/recv set of "
                f"participant {pid}: it no longer sends stream(s) labelled {names} "
                "(hold or mute?)")


#: Every rule function, in the order it runs.
RULE_FUNCTIONS: tuple[Callable[[Doc, Context, _Out], None], ...] = (
    r13_datamode, r14_r15_r16_ids, r17_references, r18_labels, r19_aor, r20_times,
    r21_time_order, r22_r23_completeness, r24_sip_session_id, r25_foreign, r28_state,
    r29_partial_times,
)


def run_rules(doc: Doc, ctx: Context) -> list[Raw]:
    """Every rule on ``doc``; findings sorted by line (document order), stable."""
    out = _Out()
    for rule in RULE_FUNCTIONS:
        rule(doc, ctx, out)
    return sorted(out, key=line_key)


def check(doc: Doc, ctx: Context) -> list[Raw]:
    """The findings for ``doc``: none at once on the fast path (``doc.clean``), else
    :func:`run_rules`."""
    if doc.clean:
        return []
    return run_rules(doc, ctx)


def line_key(f: Raw) -> tuple[bool, int]:
    return (f[2] is None, f[2] or 0)


def apply(state: Doc | None, doc: Doc) -> Doc:
    """The recording session after ``doc``: a complete snapshot replaces, a partial merges."""
    if not doc.partial or state is None:
        return doc
    state.merge(doc)
    return state

