"""Sans-IO codec for rtpengine's NG control protocol (no sockets here).

Wire format (rtpengine README "The ng Control Protocol", ``daemon/control_ng.c``)::

    <cookie> SP <bencode dictionary>      e.g. b"5323_1 d7:command4:pinge"
    <cookie> SP <JSON object>             (10.3+; the reply uses the request's encoding)

Decoded values use one representation whatever the encoding: strings are ``bytes``
(SDP, tags and metadata may hold any bytes), integers ``int``, lists ``list`` and
dictionaries ``dict[bytes, ...]``. :func:`text` and :func:`to_text` turn them into ``str``
losslessly (UTF-8 with ``surrogateescape``). Every decoding problem raises
:class:`~orchestrator.errors.NgProtocolError` carrying the offending offset.
"""

from __future__ import annotations

import json
import json.scanner
import os
from collections.abc import Iterator
from itertools import count
from typing import Any, Literal, cast

from ..errors import NgProtocolError

Encoding = Literal["bencode", "json"]
NgValue = Any  # bytes | int | list[NgValue] | dict[bytes, NgValue]
NgDict = dict[bytes, Any]

MAX_DEPTH = 64  # rtpengine replies nest ~8 deep; anything far deeper is garbage

__all__ = ["CookieJar", "Encoding", "NgDict", "StreamDecoder", "bencode_decode",
           "bencode_encode", "bencode_end", "decode_body", "decode_message", "encode_body",
           "encode_message", "json_decode", "json_document", "json_encode", "ng_value", "split_cookie", "text", "to_bytes",
           "to_text"]


# ----------------------------------------------------------------------------- helpers
def to_bytes(value: str | bytes) -> bytes:
    """``str`` → UTF-8 bytes (lossless for strings made by :func:`text`)."""
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogateescape")


def text(value: Any) -> str:
    """A decoded string (bytes) as ``str``; non-UTF-8 bytes survive as surrogate escapes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def to_text(value: Any, errors: str = "surrogateescape") -> Any:
    """Deep-convert a decoded value: bytes → str (keys too); for JSON output or display."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors)
    if isinstance(value, dict):
        return {to_text(k, errors): to_text(v, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [to_text(v, errors) for v in value]
    return value


# ----------------------------------------------------------------------------- bencode
def bencode_encode(value: Any) -> bytes:
    """Encode str/bytes/int/list/tuple/dict; dict keys are sorted (bencode spec)."""
    out: list[bytes] = []
    _benc(value, out)
    return b"".join(out)


def _benc(v: Any, out: list[bytes]) -> None:
    if isinstance(v, bytes):
        out.append(b"%d:" % len(v))
        out.append(v)
    elif isinstance(v, str):
        b = v.encode("utf-8", "surrogateescape")
        out.append(b"%d:" % len(b))
        out.append(b)
    elif isinstance(v, bool):
        raise TypeError("bencode has no booleans; NG uses 'yes'/'no' strings or flags")
    elif isinstance(v, int):
        out.append(b"i%de" % v)
    elif isinstance(v, (list, tuple)):
        out.append(b"l")
        for item in v:
            _benc(item, out)
        out.append(b"e")
    elif isinstance(v, dict):
        out.append(b"d")
        items = sorted(((to_bytes(k), item) for k, item in v.items()), key=_first)
        for n in range(1, len(items)):
            if items[n][0] == items[n - 1][0]:
                raise ValueError(f"duplicate dictionary key {items[n][0]!r}")
        for k, item in items:
            out.append(b"%d:" % len(k))
            out.append(k)
            _benc(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(v).__name__}")


def _first(kv: tuple[bytes, Any]) -> bytes:
    return kv[0]


_DIGITS = frozenset(b"0123456789")


class _Truncated(NgProtocolError):
    """The data ends inside a value (more bytes could complete it); ``need`` is the
    total length the data must reach, when a length prefix says so."""

    def __init__(self, message: str, *, offset: int, need: int | None = None) -> None:
        super().__init__(message, offset=offset)
        self.need = need


def _int_at(data: bytes, start: int, end: int, what: str) -> int:
    """Parse ``data[start:end]`` as a bencode integer: -?[0-9]+ and nothing else."""
    raw = data[start:end]
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits or not _DIGITS.issuperset(digits):
        raise NgProtocolError(f"bencode: invalid {what} {raw[:20]!r}", offset=start)
    return int(raw)


def _bdec(data: bytes, i: int, depth: int) -> tuple[Any, int]:
    try:
        c = data[i]
    except IndexError:
        raise _Truncated("bencode: truncated value", offset=i) from None
    if 0x30 <= c <= 0x39:  # string: <len>:<bytes>
        colon = data.find(b":", i, i + 21)
        if colon < 0:
            if len(data) - i < 21 and _DIGITS.issuperset(data[i:]):
                raise _Truncated("bencode: truncated string length", offset=i)
            raise NgProtocolError("bencode: string length without ':'", offset=i)
        n = _int_at(data, i, colon, "string length")
        end = colon + 1 + n
        if end > len(data):
            raise _Truncated(f"bencode: string of {n} bytes exceeds the message "
                             f"({len(data) - colon - 1} left)", offset=i, need=end)
        return data[colon + 1:end], end
    if depth >= MAX_DEPTH:
        raise NgProtocolError("bencode: nested too deeply", offset=i)
    if c == 0x64:  # 'd'
        d: dict[bytes, Any] = {}
        i += 1
        while True:
            if i >= len(data):
                raise _Truncated("bencode: unterminated dictionary", offset=i)
            if data[i] == 0x65:  # 'e'
                return d, i + 1
            if not 0x30 <= data[i] <= 0x39:
                raise NgProtocolError("bencode: dictionary key is not a string", offset=i)
            k, i = _bdec(data, i, depth + 1)
            d[k], i = _bdec(data, i, depth + 1)
    if c == 0x6C:  # 'l'
        lst: list[Any] = []
        i += 1
        while True:
            if i >= len(data):
                raise _Truncated("bencode: unterminated list", offset=i)
            if data[i] == 0x65:
                return lst, i + 1
            v, i = _bdec(data, i, depth + 1)
            lst.append(v)
    if c == 0x69:  # 'i'
        end = data.find(b"e", i + 1, i + 42)  # up to 40 digits
        if end < 0:
            if len(data) - i < 42:
                raise _Truncated("bencode: unterminated integer", offset=i)
            raise NgProtocolError("bencode: integer too long", offset=i)
        return _int_at(data, i + 1, end, "integer"), end + 1
    raise NgProtocolError(f"bencode: unexpected byte {bytes([c])!r}", offset=i)


def bencode_decode(data: bytes, start: int = 0) -> Any:
    """Decode exactly one bencode value filling ``data[start:]``."""
    value, end = _bdec(data, start, 0)
    if end != len(data):
        raise NgProtocolError("bencode: trailing data after the value", offset=end)
    return value


def bencode_end(data: bytes, start: int = 0) -> int | None:
    """Where the bencode value starting at ``start`` ends, or None if it is incomplete.

    Used to delimit messages on a TCP stream (like rtpengine's ``bencode_valid``).
    """
    try:
        return _bdec(data, start, 0)[1]
    except _Truncated:
        return None


# ----------------------------------------------------------------------------- JSON
_json_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def json_encode(value: Any) -> bytes:
    """JSON with bytes carried verbatim (raw bytes inside JSON strings, bytes-safe)."""
    return _json_encoder.encode(to_text(value)).encode("utf-8", "surrogateescape")


_intern: dict[str, bytes] = {}  # short strings recur in every reply (keys, "IPv4", ...)


def _jbytes(v: str) -> bytes:
    b = _intern.get(v)
    if b is None:
        b = v.encode("utf-8", "surrogateescape")
        if len(v) <= 32 and len(_intern) < 4096:
            _intern[v] = b
    return b


def _jvalue(v: Any) -> Any:
    t = type(v)
    if t is str:
        return _jbytes(v)
    if t is list:
        return [_jvalue(x) for x in v]
    return v  # int, float, bool, None; dicts were converted by the hook


def _jobject(pairs: list[tuple[str, Any]]) -> dict[bytes, Any]:
    # object_pairs_hook: runs inside the C scanner, so conversion costs one pass per object
    out: dict[bytes, Any] = {}
    for k, v in pairs:
        t = type(v)
        if t is str:
            v = _jbytes(v)
        elif t is list:
            v = _jvalue(v)
        out[_jbytes(k)] = v
    return out


_json_decoder = json.JSONDecoder(object_pairs_hook=_jobject)
_json_plain = json.JSONDecoder()  # all in C: strings stay str until asked for
_json_scan = json.scanner.make_scanner(cast(Any, _json_plain))  # the C scanner


def _json_error(exc: Exception, doc: str, start: int) -> NgProtocolError:
    if isinstance(exc, json.JSONDecodeError):
        # exc.pos counts characters; map back to a byte offset
        off = start + len(doc[:exc.pos].encode("utf-8", "surrogateescape"))
        return NgProtocolError(f"JSON: {exc.msg}", offset=off)
    return NgProtocolError(f"JSON: {exc}", offset=start)


def json_decode(data: bytes, start: int = 0) -> Any:
    """Decode a JSON document into the bencode representation (strings → bytes)."""
    doc = data[start:].decode("utf-8", "surrogateescape")
    try:
        return _jvalue(_json_decoder.decode(doc))
    except (RecursionError, ValueError, UnicodeError) as exc:  # JSONDecodeError is a ValueError
        raise _json_error(exc, doc, start) from None


def json_document(data: bytes, start: int = 0) -> dict[str, Any]:
    """Decode a JSON NG body as plain JSON types, strings left as ``str`` (undecodable
    bytes as surrogate escapes): the C parser alone, about 3x faster than
    :func:`json_decode`. :func:`ng_value` converts (parts of) it to the bytes form."""
    doc = data[start:].decode("utf-8", "surrogateescape")
    try:
        # the C scanner directly (json's decode() adds two regex matches for whitespace)
        value, end = _json_scan(doc, 0)
        if end != len(doc):
            raise ValueError
    except (StopIteration, RecursionError, ValueError):
        try:  # the slow path finds the error and its position (or allows whitespace)
            value = _json_plain.decode(doc)
        except (RecursionError, ValueError) as exc:
            raise _json_error(exc, doc, start) from None
    if not isinstance(value, dict):
        raise NgProtocolError("NG body is not a dictionary", offset=start)
    return value


def ng_value(value: Any) -> Any:
    """A value from :func:`json_document` in the decoded representation (str → bytes)."""
    t = type(value)
    if t is str:
        return _jbytes(value)
    if t is dict:
        return {_jbytes(k): ng_value(v) for k, v in value.items()}
    if t is list:
        return [ng_value(v) for v in value]
    return value


# ----------------------------------------------------------------------------- messages
def encode_body(message: dict[Any, Any], encoding: Encoding = "bencode") -> bytes:
    """The dictionary part of an NG message."""
    return json_encode(message) if encoding == "json" else bencode_encode(message)


def encode_message(cookie: bytes, message: dict[Any, Any],
                   encoding: Encoding = "bencode") -> bytes:
    """``cookie SP body`` (the body's first byte tells rtpengine the encoding)."""
    return cookie + b" " + encode_body(message, encoding)


def split_cookie(data: bytes) -> tuple[bytes, int]:
    """The cookie and the offset of the body (control_ng.c splits at the first space)."""
    sp = data.find(b" ")
    if sp <= 0:
        raise NgProtocolError("NG message without a cookie", offset=0)
    return data[:sp], sp + 1


def decode_body(data: bytes, start: int = 0) -> tuple[NgDict, Encoding]:
    """Decode a body (bencode if it starts with ``d``, JSON if ``{``); must be a dict."""
    if start >= len(data):
        raise NgProtocolError("NG message with an empty body", offset=start)
    first = data[start]
    if first == 0x64:
        value: Any = bencode_decode(data, start)
        enc: Encoding = "bencode"
    elif first == 0x7B:
        value = json_decode(data, start)
        enc = "json"
    else:
        raise NgProtocolError(f"NG body is neither bencode nor JSON: starts with "
                              f"{bytes([first])!r}", offset=start)
    if not isinstance(value, dict):
        raise NgProtocolError("NG body is not a dictionary", offset=start)
    return value, enc


def decode_message(data: bytes) -> tuple[bytes, NgDict, Encoding]:
    """``cookie SP body`` → (cookie, dictionary, encoding)."""
    cookie, off = split_cookie(data)
    body, enc = decode_body(data, off)
    return cookie, body, enc


class StreamDecoder:
    """Splits a TCP-NG byte stream into messages (bencode only; rtpengine cannot delimit
    JSON on a stream). Feed bytes, iterate complete ``(cookie, body bytes)`` pairs; each
    body is one complete bencode dictionary (decode it with :func:`decode_body`)."""

    def __init__(self, max_message: int = 1 << 20) -> None:
        self._buf = b""
        self.max_message = max_message

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        self._buf += data
        while self._buf:
            sp = self._buf.find(b" ", 0, 256)
            if sp < 0:
                if len(self._buf) >= 256:
                    raise NgProtocolError("NG stream: no cookie in 256 bytes", offset=0)
                return
            if sp == 0:
                raise NgProtocolError("NG stream: message without a cookie", offset=0)
            if self._buf[sp + 1:sp + 2] not in (b"d", b""):
                raise NgProtocolError("NG stream: body is not a bencode dictionary",
                                      offset=sp + 1)
            try:
                end = _bdec(self._buf, sp + 1, 0)[1]
            except _Truncated as exc:
                if max(exc.need or 0, len(self._buf)) > self.max_message:
                    raise NgProtocolError(f"NG stream: message larger than "
                                          f"{self.max_message} bytes", offset=exc.offset) from None
                return
            msg, self._buf = self._buf[:end], self._buf[end:]
            yield msg[:sp], msg[sp + 1:]

    @property
    def pending(self) -> int:
        """Bytes buffered of an incomplete message."""
        return len(self._buf)


class CookieJar:
    """Cookies unique per command: a random per-instance prefix and a counter.

    rtpengine's reply cache is keyed by the cookie alone (``cookie_cache.c``), so a reused
    cookie would return an older reply; the random prefix keeps processes apart.
    """

    def __init__(self, prefix: bytes | None = None) -> None:
        self.prefix = prefix if prefix is not None else os.urandom(6).hex().encode()
        self._counter = count(1)

    def next(self) -> bytes:
        return b"%s_%d" % (self.prefix, next(self._counter))  # count() is atomic in CPython
