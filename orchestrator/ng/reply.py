"""The generic NG reply (kept apart from :mod:`.models`: no dataclasses on the ping path)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .codec import NgDict, text, to_text

__all__ = ["Reply"]


class Reply(Mapping[str, Any]):
    """A decoded reply: look keys up as ``str``; values as decoded (strings are ``bytes``).

    ``reply.text("sdp")`` gives a string, ``reply.to_json()`` a JSON-ready copy.
    """

    __slots__ = ("command", "data")

    def __init__(self, data: NgDict, command: str = "") -> None:
        self.data = data
        self.command = command

    def __getitem__(self, key: str) -> Any:
        return self.data[key.encode("utf-8", "surrogateescape")]

    def __iter__(self) -> Iterator[str]:
        return (text(k) for k in self.data)

    def __len__(self) -> int:
        return len(self.data)

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
