"""rtpengine recordings: metadata-file parsers, a pcap reader, checks and an index.

Recordings are never modified, moved or deleted: files are opened read-only and the index is
a separate SQLite file.
"""

from __future__ import annotations

from .collect import RecordingCheck, check_metafile, collect, finished_metafiles, follow
from .encoding import (
    decode_metadata,
    decode_text,
    decode_uri,
    decode_value,
    original_bytes,
    readable,
)
from .index import RecordingIndex, default_index_path
from .metafile import (
    PcapMetadata,
    ProcMetadata,
    SdpBlock,
    call_id_from_filename,
    parse_metadata_string,
    parse_pcap_metafile,
    parse_proc_metafile,
)
from .pcap import PcapReader, PcapSummary, summarize_pcap

__all__ = [
    "PcapMetadata",
    "PcapReader",
    "PcapSummary",
    "ProcMetadata",
    "RecordingCheck",
    "RecordingIndex",
    "SdpBlock",
    "call_id_from_filename",
    "check_metafile",
    "collect",
    "decode_metadata",
    "decode_text",
    "decode_uri",
    "decode_value",
    "default_index_path",
    "finished_metafiles",
    "follow",
    "original_bytes",
    "parse_metadata_string",
    "parse_pcap_metafile",
    "parse_proc_metafile",
    "readable",
    "summarize_pcap",
]
