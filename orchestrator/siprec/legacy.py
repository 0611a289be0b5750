"""The pre-RFC draft metadata format (reference/siprec.md §2.3 rule 26): detection in every
profile, lenient checks under ``--profile legacy`` (sans-IO)."""

from __future__ import annotations

from lxml import etree

from .document import AOR_OK, Doc
from .engine import _BARE_AOR as BARE_AOR
from .engine import Context, Raw, _Out, r20_times
from .model import LEGACY_NS, RECORDING_NS
from .rules import Severity

__all__ = ["legacy_findings", "legacy_markers"]

E, INFO = Severity.ERROR, Severity.INFO
_R = "{" + RECORDING_NS + "}"
_L = "{" + LEGACY_NS + "}"


def qname(el: etree._Element) -> str:
    if not isinstance(el.tag, str):
        return "<?>"
    q = etree.QName(el)
    return f"<{q.localname}> in {q.namespace!r}" if q.namespace else f"<{q.localname}> (no namespace)"


def legacy_markers(root: etree._Element) -> list[str]:
    """Markers of the pre-RFC draft format; empty for an RFC 7865 document."""
    markers: list[str] = []
    tag = root.tag if isinstance(root.tag, str) else ""
    if tag == _L + "recording":
        markers.append(f"namespace {LEGACY_NS} without :1")
    ns = _L if tag.startswith(_L) else _R
    for el in root:
        t = el.tag
        if not isinstance(t, str) or not t.startswith(ns):
            continue
        local = t[len(ns):]
        if local == "dataMode":
            markers.append("<dataMode>")
        elif local == "extensiondata":
            markers.append("<extensiondata>")
        elif local in ("session", "participant", "stream") and el.get("id") is not None:
            markers.append(f"<{local} id=…>")
        if local == "participant" and el.find(ns + "send") is not None:
            markers.append("<send> inside <participant>")
        if local == "stream" and el.find(ns + "mode") is not None:
            markers.append("<mode> inside <stream>")
    return list(dict.fromkeys(markers))


def legacy_findings(root: etree._Element, sdp_labels: list[str] | None) -> list[Raw]:
    """Lenient checks of a pre-RFC draft document: IDs unique, references resolve in a
    complete document, labels match the SDP, times parse, aor URIs."""
    out = _Out()
    if etree.QName(root).localname != "recording":
        out.add("R12", E, root.sourceline, f"root element is {qname(root)}, expected <recording>")
        return out
    ns = etree.QName(root).namespace or ""
    p = "{" + ns + "}" if ns else ""
    ids: dict[str, dict[str, int | None]] = {"session": {}, "participant": {}, "stream": {}}
    refs: list[tuple[str, str, int | None]] = []
    labels: list[tuple[str, int | None]] = []
    times = Doc()
    complete = True
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        local = etree.QName(el).localname
        line = el.sourceline
        if local in ("dataMode", "datamode") and el.tag.startswith(p):
            mode = (el.text or "").strip()
            complete = mode != "partial"
            if mode not in ("complete", "partial"):
                out.add("R13", E, line, f"{local} is {mode!r}; it must be 'complete' or 'partial'")
        elif local in ids and el.getparent() is root:
            value = el.get("id") or el.get(f"{local}_id")
            if value is None:
                out.add("R14", E, line, f"<{local}> has no id attribute")
                continue
            if value in ids[local]:
                out.add("R16", E, line, f"{local} id {value} is used twice")
            ids[local][value] = line
            session = el.get("session") or el.get("session_id")
            if local != "session" and session:
                refs.append(("session", session, line))
        elif local in ("send", "recv") and el.tag.startswith(p):
            refs.append(("stream", (el.text or "").strip(), line))
        elif local == "nameID" and el.tag.startswith(p):
            aor = el.get("aor") or ""
            if not AOR_OK.fullmatch(aor):
                out.add("R19", INFO if BARE_AOR.fullmatch(aor) else E, line,
                        f"aor {aor!r} is not a sip:, sips: or tel: URI")
        elif local == "label" and el.tag.startswith(p):
            labels.append(((el.text or "").strip(), line))
        elif local in ("associate-time", "disassociate-time", "start-time", "stop-time"):
            times.times.append((local, el.text, line))
    r20_times(times, Context(lenient=True), out)
    if complete:
        for kind, ref, line in refs:
            if ref not in ids[kind]:
                out.add("R17", E, line, f"reference to {kind} {ref!r}, which the document does "
                        "not define")
    if sdp_labels is not None:
        for label, line in labels:
            if label not in sdp_labels:
                out.add("R18", E, line, f"stream label {label!r} is not an a=label of the SDP")
    return out
