"""The edge's encoding of SIP-derived values, and its decoders (sans-IO).

The generated Kamailio config percent-encodes every value it takes from a SIP message
before putting it into an evapi event or into rtpengine's ``metadata=`` string (RFC 3986
percent-encoding: every byte except ALPHA / DIGIT / ``-`` ``.`` ``_`` ``~`` becomes ``%xx``,
lowercase hex; a space is ``%20``). Any byte survives that way: jansson refuses a string
that is not UTF-8, rtpengine splits its flag string on spaces, and ``|``/``:`` separate the
metadata pairs. Display names arrive already unquoted, their quoted-pairs undone (RFC 3261
§25.1).

* :func:`decode_value` gives the original bytes back;
* :func:`readable` turns bytes into text that is safe anywhere (XML 1.0, JSON, logs) and
  still loses nothing: printable UTF-8 is kept, everything else — bytes that are not UTF-8,
  control characters, and ``%`` itself — is written ``%xx``, so
  :func:`original_bytes` (``readable`` inverted) recovers the bytes exactly;
* :func:`decode_text` is ``readable(decode_value(v))``
  (``orchestrator.recordings.decode_metadata`` decodes a whole ``k:v|k:v`` metadata string
  that way);
* :func:`decode_uri` is for values that are URIs (From/To/P-Asserted-Identity, R-URI):
  printable ASCII as is (a URI's own ``%xx`` escapes included), every other byte ``%xx``
  (RFC 3986 §2.1, RFC 3261 §19.1.2) — a URI again, e.g. for an RFC 7865 ``<aor>``.

Which to use: text for people and XML (display names, header values) → :func:`decode_text`;
a URI → :func:`decode_uri`; a value that goes back into SIP or to rtpengine as it came (a
body, a Contact or Record-Route value) → :func:`decode_value` (the bytes).

Values written by older configs (``{s.escape.param}``: ``[]/:&+$!*'()`` left as they were)
decode the same way: any printable ASCII character but ``%`` stands for itself.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from ..errors import RecordingError, SiprecctlError

__all__ = ["decode_text", "decode_uri", "decode_value", "original_bytes", "readable"]

# printable ASCII except '%', or a '%' with two hex digits
_ENCODED = re.compile(r"(?:[!-$&-~]|%[0-9A-Fa-f]{2})*")


def decode_value(value: str, *, what: str = "value",
                 error: type[SiprecctlError] = RecordingError) -> bytes:
    """The original bytes of a value the edge percent-encoded.

    Raises ``error`` (default :class:`RecordingError`; the controller may pass
    ``EvapiProtocolError``) naming ``what`` and the offset when ``value`` is not such an
    encoding (a stray ``%``, a space, a control or non-ASCII character)."""
    if _ENCODED.fullmatch(value) is None:
        at = _ENCODED.match(value).end()  # type: ignore[union-attr]  # * matches always
        raise error(f"{what}: not percent-encoded at offset {at}: {value[at:at + 12]!r}")
    return unquote_to_bytes(value)


def _escape(ch: str) -> str:
    return "".join(f"%{b:02x}" for b in ch.encode("utf-8"))


def _keep(ch: str) -> bool:
    cp = ord(ch)
    # C0 and C1 controls, DEL, and what XML 1.0 cannot carry (U+FFFE, U+FFFF)
    return not (cp < 0x20 or 0x7F <= cp <= 0x9F or cp in (0xFFFE, 0xFFFF) or ch == "%")


_PLAIN_TEXT = re.compile(rb"[ -$&-~]*")  # printable ASCII but '%': readable as it is
_PLAIN_URI = re.compile(rb"[!-~]*")  # printable ASCII, no space: a URI as it is


def readable(data: bytes) -> str:
    """``data`` as text: printable UTF-8 as is; invalid bytes, controls and ``%`` as ``%xx``."""
    if _PLAIN_TEXT.fullmatch(data):  # the common case, without a loop in Python
        return data.decode("ascii")
    out = []
    for ch in data.decode("utf-8", errors="surrogateescape"):
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            out.append(f"%{cp - 0xDC00:02x}")
        elif _keep(ch):
            out.append(ch)
        else:
            out.append(_escape(ch))
    return "".join(out)


def original_bytes(text: str) -> bytes:
    """Invert :func:`readable`: the exact bytes it was made from."""
    return unquote_to_bytes(text)


def decode_text(value: str, *, what: str = "value",
                error: type[SiprecctlError] = RecordingError) -> str:
    """An edge-encoded value as readable text (see :func:`readable`)."""
    return readable(decode_value(value, what=what, error=error))


def decode_uri(value: str, *, what: str = "value",
               error: type[SiprecctlError] = RecordingError) -> str:
    """An edge-encoded URI as a URI: bytes outside printable ASCII percent-encoded, the rest
    (``%`` included: the URI's own escapes) as is."""
    data = decode_value(value, what=what, error=error)
    if _PLAIN_URI.fullmatch(data):
        return data.decode("ascii")
    return "".join(chr(b) if 0x21 <= b <= 0x7E else f"%{b:02x}" for b in data)
