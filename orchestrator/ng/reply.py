"""The generic NG reply (kept apart from :mod:`.models`: no dataclasses on the ping path)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .codec import NgDict, _jbytes, json_document, ng_value, text, to_text

__all__ = ["Reply"]

_MISSING = object()


class Reply(Mapping[str, Any]):
    """A decoded reply: look keys up as ``str``; values as decoded (strings are ``bytes``).

    ``reply.text("sdp")`` gives a string, ``reply.to_json()`` a JSON-ready copy.

    A reply the client parsed from JSON is converted lazily: it keeps the parsed document
    (strings as ``str``) and turns a value into the bytes form when it is first looked up,
    and the whole document when :attr:`data` is first read. A caller that only wants the
    result, or one key of a large ``query`` reply, does not pay for the rest. Replies of
    :meth:`~orchestrator.ng.client.NgClient.call_many` keep only the JSON text until first
    used (thousands of parsed trees held at once cost more in garbage collection than
    parsing them again).
    """

    __slots__ = ("_conv", "_data", "_doc", "_raw", "command")

    def __init__(self, data: NgDict, command: str = "") -> None:
        self._data: NgDict | None = data
        self._doc: dict[str, Any] | None = None
        self._raw: bytes | None = None
        self._conv: dict[str, Any] = {}
        self.command = command

    @classmethod
    def from_document(cls, doc: dict[str, Any] | None, command: str = "",
                      raw: bytes | None = None) -> Reply:
        """A reply over a document from :func:`~orchestrator.ng.codec.json_document`, or
        over the JSON text ``raw`` it was parsed from (parsed again when first used). Either
        must hold no unencodable surrogates (no ``\\u`` escapes)."""
        if doc is None and raw is None:
            raise ValueError("a document or its JSON text is needed")
        r = cls.__new__(cls)
        r._data = None
        r._doc = doc
        r._raw = raw if doc is None else None
        r._conv = {}
        r.command = command
        return r

    def plain(self) -> dict[str, Any]:
        """The reply with ``str`` strings, as cheaply as it can be had: the parsed JSON
        document itself (no conversion) for a JSON reply, a converted copy otherwise. Do not
        modify it."""
        if self._data is None:
            return self._document()
        out = to_text(self._data)
        assert isinstance(out, dict)
        return out

    def _document(self) -> dict[str, Any]:
        doc = self._doc
        if doc is None:
            assert self._raw is not None
            doc = self._doc = json_document(self._raw)
            self._raw = None
        return doc

    @property
    def data(self) -> NgDict:
        """The whole reply in the decoded representation (``dict[bytes, ...]``)."""
        d = self._data
        if d is None:
            conv = self._conv
            d = {_jbytes(k): conv[k] if k in conv else ng_value(v)
                 for k, v in self._document().items()}
            self._data, self._doc, self._conv = d, None, {}
        return d

    @data.setter
    def data(self, value: NgDict) -> None:
        self._data, self._doc, self._raw, self._conv = value, None, None, {}

    def __getitem__(self, key: str) -> Any:
        d = self._data
        if d is not None:
            return d[key.encode("utf-8", "surrogateescape")]
        conv = self._conv
        v = conv.get(key, _MISSING)
        if v is _MISSING:
            v = conv[key] = ng_value(self._document()[key])  # KeyError for a missing key
        return v

    def __iter__(self) -> Iterator[str]:
        d = self._data
        if d is not None:
            return (text(k) for k in d)
        return iter(self._document())

    def __len__(self) -> int:
        d = self._data
        return len(d) if d is not None else len(self._document())

    def __contains__(self, key: object) -> bool:
        if self._data is None:
            return key in self._document()
        return super().__contains__(key)

    def text(self, key: str, default: str | None = None) -> str | None:
        v = self.get(key)
        return default if v is None else text(v)

    @property
    def result(self) -> str:
        return self.text("result", "") or ""

    @property
    def warning(self) -> str | None:
        return self.text("warning")

    def to_json(self) -> Any:
        """Plain JSON types, undecodable bytes replaced (for ``--json`` output)."""
        return to_text(self.data, "replace")

    def __repr__(self) -> str:
        return f"Reply({self.command!r}, {to_text(self.data)!r})"
