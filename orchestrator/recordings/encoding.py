"""rtpengine metadata strings written by the edge, decoded (the encoding itself is the
edge's: :mod:`orchestrator.kamailio.encoding`)."""

from __future__ import annotations

from ..kamailio.encoding import (
    decode_text,
    decode_uri,
    decode_value,
    original_bytes,
    readable,
)
from .metafile import parse_metadata_string

__all__ = ["decode_metadata", "decode_text", "decode_uri", "decode_value", "original_bytes",
           "readable"]


def decode_metadata(value: str | None) -> dict[str, str]:
    """The metadata string the edge gave rtpengine (``k:v|k:v``), values as readable text.

    A value that is not a valid encoding raises :class:`RecordingError` naming its key."""
    return {k: decode_text(v, what=f"metadata {k!r}")
            for k, v in parse_metadata_string(value).items()}
