"""Parse rtpengine recording metadata files (sans-IO: bytes in, dataclasses out).

Two formats (reference/rtpengine.md §4.2, §4.3):

* pcap method, ``metadata/rtpengine-meta-<call>-<rand>.txt``: the pcap path, then per
  offer/answer a header block (``Label:``, ``Timestamp started ms:``, ``SDP mode:``, ``SDP
  before RTP packet:``) and the SDP as rtpengine sent it (CRLF lines), then ``Timestamp
  terminated ms(first monologue):``, ``call start time:``/``call end time:`` (local time, no
  zone) and the last ``metadata`` string;
* proc method, ``<call>-<rand>.meta``: chunks ``<SECTION>\\n<length>:\\n<content>\\n\\n``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from ..errors import RecordingError

__all__ = ["PcapMetadata", "ProcMetadata", "SdpBlock", "call_id_from_filename",
           "parse_metadata_string", "parse_pcap_metafile", "parse_proc_metafile"]

_META_NAME = re.compile(r"^(?:rtpengine-meta-)?(?P<prefix>.+)-(?P<rand>[0-9a-f]{16})"
                        r"(?:\.txt|\.tmp|\.meta|\.pcap)?$")


def call_id_from_filename(name: str) -> str | None:
    """The Call-ID in a recording file name (``<uri-escaped call-id>-<16 hex>``)."""
    m = _META_NAME.match(name)
    return unquote(m.group("prefix")) if m else None


def parse_metadata_string(value: str | None) -> dict[str, str]:
    """``k1:v1|k2:v2`` as a dict (the form rtpengine-recording splits into metakeys)."""
    out: dict[str, str] = {}
    for item in (value or "").split("|"):
        key, sep, val = item.partition(":")
        if sep and key.strip():
            out[key.strip()] = val.strip()
    return out


@dataclass(frozen=True, slots=True)
class SdpBlock:
    """One offer/answer SDP as rtpengine sent it, with the packet number it precedes."""

    mode: str | None
    sdp: str
    label: str | None = None
    started_ms: float | None = None
    before_packet: int | None = None

    @property
    def media_ports(self) -> list[tuple[str, int]]:
        """``(media, port)`` of every m-line (rtpengine's local ports: where RTP arrives)."""
        return [(m.group(1), int(m.group(2)))
                for m in re.finditer(r"^m=(\S+) (\d+)", self.sdp, re.MULTILINE)]


@dataclass(frozen=True, slots=True)
class PcapMetadata:
    """A pcap-method metadata file."""

    pcap_path: str
    blocks: tuple[SdpBlock, ...] = ()
    terminated_ms: float | None = None
    call_start: str | None = None
    call_end: str | None = None
    metadata: str | None = None
    trailing: str = ""  # anything after the metadata (issue #1142: proc-style chunks)

    @property
    def metadata_pairs(self) -> dict[str, str]:
        return parse_metadata_string(self.metadata)


def _float(value: str, what: str, line: int) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise RecordingError(f"line {line}: {what} {value!r} is not a number") from exc


def parse_pcap_metafile(data: bytes) -> PcapMetadata:
    """Parse a pcap-method ``rtpengine-meta-*.txt``; :class:`RecordingError` if it is not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordingError(f"metadata file is not UTF-8 (byte {exc.start})") from exc
    lines = text.split("\n")
    pcap_path = lines[0].strip()
    if not pcap_path.startswith("/") or not pcap_path.endswith(".pcap"):
        raise RecordingError(f"line 1: expected the absolute path of the pcap, got "
                             f"{pcap_path[:80]!r}")
    blocks: list[SdpBlock] = []
    header: dict[str, str] = {}
    terminated: float | None = None
    start = end = None
    metadata: str | None = None
    trailing: list[str] = []
    i = 1
    n = len(lines)
    while i < n:
        line = lines[i]
        no = i + 1
        if end is not None:  # after "call end time": the metadata string, then leftovers
            if metadata is None and line.strip():
                metadata = line.rstrip("\r")
            elif metadata is not None:
                trailing.append(line)
            i += 1
            continue
        key, sep, value = line.partition(": ")
        key = key.strip()
        if not line.strip():
            i += 1
            continue
        if sep and key in ("Label", "Timestamp started ms", "SDP mode", "SDP before RTP packet"):
            header[key] = value.strip()
            i += 1
            continue
        if sep and key.startswith("Timestamp terminated ms"):
            terminated = _float(value.strip(), "terminated timestamp", no)
        elif sep and key == "call start time":
            start = value.strip()
        elif sep and key == "call end time":
            end = value.strip()
        elif line.startswith("v=") and line.endswith("\r"):
            sdp_lines = []
            while i < n and lines[i].endswith("\r"):  # SDP lines keep their CRLF
                sdp_lines.append(lines[i][:-1])
                i += 1
            before = header.get("SDP before RTP packet")
            started = header.get("Timestamp started ms")
            if before is not None and not before.isdigit():
                raise RecordingError(f"line {no}: SDP before RTP packet {before!r} is not a number")
            blocks.append(SdpBlock(header.get("SDP mode"), "\r\n".join(sdp_lines) + "\r\n",
                                   header.get("Label"),
                                   _float(started, "started timestamp", no) if started else None,
                                   int(before) if before is not None else None))
            header = {}
            continue
        else:
            raise RecordingError(f"line {no}: unexpected line {line[:80]!r}")
        i += 1
    return PcapMetadata(pcap_path, tuple(blocks), terminated, start, end, metadata,
                        "\n".join(trailing).strip())


@dataclass(frozen=True, slots=True)
class ProcMetadata:
    """A proc-method ``.meta`` file: its chunks in order, and the common ones by name."""

    sections: tuple[tuple[str, str], ...]
    call_id: str | None = None
    parent: str | None = None
    metadata: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # monologue id → label
    tags: dict[str, str] = field(default_factory=dict)  # monologue id → SIP tag
    sdps: tuple[tuple[str, str], ...] = ()  # (section header, SDP)
    recording: bool | None = None

    @property
    def metadata_pairs(self) -> dict[str, str]:
        return parse_metadata_string(self.metadata)


def parse_proc_metafile(data: bytes) -> ProcMetadata:
    """Parse ``<SECTION>\\n<len>:\\n<content>\\n\\n`` chunks (recording-daemon/metafile.c)."""
    sections: list[tuple[str, str]] = []
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos:pos + 1] in (b"\n", b"\r"):
            pos += 1
            continue
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise RecordingError(f"offset {pos}: section header without a newline")
        name = data[pos:nl].decode("utf-8", "replace")
        colon = data.find(b":\n", nl + 1)
        length_text = data[nl + 1:colon] if colon >= 0 else b""
        if colon < 0 or not length_text.isdigit():
            raise RecordingError(f"offset {nl + 1}: section {name!r} has no '<length>:' line")
        length = int(length_text)
        body_start = colon + 2
        body_end = body_start + length
        if body_end > n:
            raise RecordingError(f"section {name!r} is truncated: {length} bytes announced, "
                                 f"{n - body_start} present")
        sections.append((name, data[body_start:body_end].decode("utf-8", "replace")))
        pos = body_end
    meta: dict[str, str] = {}
    labels: dict[str, str] = {}
    tags: dict[str, str] = {}
    sdps: list[tuple[str, str]] = []
    recording: bool | None = None
    for name, content in sections:
        word, _, rest = name.partition(" ")
        if name in ("CALL-ID", "PARENT", "METADATA"):
            meta[name] = content  # later chunks override earlier ones
        elif word == "LABEL":
            labels[rest] = content
        elif word == "TAG":
            tags[rest] = content
        elif word == "SDP":
            sdps.append((name, content))
        elif word == "RECORDING":
            recording = rest.strip() == "1"
    return ProcMetadata(tuple(sections), meta.get("CALL-ID"), meta.get("PARENT"),
                        meta.get("METADATA"), labels, tags, tuple(sdps), recording)
