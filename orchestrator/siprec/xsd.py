"""The strict profile's schema layer: the project's RFC 7865 XSD, checked with lxml.

``schema/recording.xsd`` accepts and rejects what the official schema of RFC 7865 §9 does
(README, "Schema decisions"). Its error messages are mapped to rule ids here, so a schema
violation is reported like every other finding.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from importlib import resources

from lxml import etree

from .model import RECORDING_NS
from .rules import Finding, Severity

__all__ = ["KNOWN_ELEMENTS", "clean_message", "schema", "schema_findings", "schema_valid"]

#: Every element name RFC 7865 defines in its namespace (§6 objects, §7 snapshot request).
KNOWN_ELEMENTS = frozenset({
    "recording", "datamode", "group", "session", "participant", "stream",
    "sessionrecordingassoc", "participantsessionassoc", "participantstreamassoc",
    "associate-time", "disassociate-time", "sipSessionID", "reason", "group-ref", "start-time",
    "stop-time", "nameID", "name", "param", "label", "send", "recv", "requestsnapshot",
    "requestreason"})
_ELEMENT = re.compile(r"Element '(\{([^}]*)\})?([^']+)'")


@functools.cache
def schema() -> etree.XMLSchema:
    """The project's RFC 7865 schema (package data, loaded once, never from the network)."""
    base = resources.files("orchestrator.siprec") / "schema"
    xml_xsd = (base / "xml.xsd").read_bytes()
    rec_xsd = (base / "recording.xsd").read_bytes()

    class _Local(etree.Resolver):
        def resolve(self, url, pubid, context):  # type: ignore[no-untyped-def]
            if url.endswith("xml.xsd"):
                return self.resolve_string(xml_xsd, context)
            return None

    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    parser.resolvers.add(_Local())
    return etree.XMLSchema(etree.fromstring(rec_xsd, parser, base_url="recording.xsd"))


def schema_valid(root: etree._Element) -> bool:
    try:
        return bool(schema().validate(root))
    except etree.Error:  # e.g. unexpanded entity references: libxml2 gives up
        return False


def clean_message(message: str) -> str:
    message = message.replace("{" + RECORDING_NS + "}", "")
    message = re.sub(r"Element '([^']+)'", r"<\1>", message)
    return message.rstrip(".")


def _rule_of(message: str) -> str:
    """The rule a libxml2 schema error belongs to."""
    if "xs:base64Binary" in message:
        return "R15"
    if "xs:dateTime" in message:
        return "R20"
    if "datamode" in message and "enumeration" in message:
        return "R13"
    if "is not allowed" in message and "attribute" in message:
        return "R25"  # RFC 7865 §9 allows no extension attributes anywhere
    if "This element is not expected" in message:
        m = _ELEMENT.match(message)
        if m and (m.group(2) != RECORDING_NS or m.group(3) not in KNOWN_ELEMENTS):
            return "R25"
    return "R14"


def schema_findings(offset: int, source: str | None, seen: Iterable[tuple[str, int | None]],
                    rule: str | None = None) -> list[Finding]:
    """Findings for the errors of the last :func:`schema_valid` call, skipping a (rule, line)
    the semantic rules already reported in plainer words. ``rule`` forces one rule id."""
    said = set(seen)
    out: list[Finding] = []
    for entry in schema().error_log:
        line = entry.line + offset if entry.line else None
        r = rule or _rule_of(entry.message)
        if (r, line) in said:
            continue
        said.add((r, line))
        out.append(Finding(r, Severity.ERROR, line, clean_message(entry.message), source))
    return out
