"""Bearer tokens of the controller API: who may do what, and who did it.

Each token of ``controller.api.tokens`` lives in ``<secrets_dir>/api-<name>.token`` (owner
only; see :mod:`orchestrator.site.secrets`). A ``readonly`` token may read (GET), an
``operator`` token may also act (POST). Tokens are compared in constant time, as SHA-256
digests, against every configured token (no early exit).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from ..site.secrets import api_token_path, ensure_secret, load_secret

__all__ = ["Principal", "TokenAuth"]


@dataclass(frozen=True)
class Principal:
    """An authenticated API client: the token's name and role."""

    name: str
    role: str  # operator | readonly

    def may(self, method: str) -> bool:
        return method in ("GET", "HEAD") or self.role == "operator"

    def actor(self, client_address: str) -> str:
        """What the audit trail records for an action: ``operator@127.0.0.1``."""
        return f"{self.name}@{client_address}"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class TokenAuth:
    """The API's tokens; :meth:`authenticate` maps an ``Authorization`` header to a
    :class:`Principal` (or None)."""

    def __init__(self, tokens: list[tuple[str, str, str]]) -> None:
        """``tokens``: (name, role, token value)."""
        self._tokens = [(Principal(name, role), _digest(value)) for name, role, value in tokens]

    @classmethod
    def from_site(cls, site: Any, *, create: bool = False) -> TokenAuth:
        """The site's tokens, read from their files (created when missing with ``create``)."""
        out = []
        for tok in site.controller.api.tokens:
            path = api_token_path(site, tok.name)
            value = ensure_secret(path)[0] if create else load_secret(path)
            out.append((tok.name, tok.role, value))
        return cls(out)

    def authenticate(self, header: str | None) -> Principal | None:
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        presented = _digest(value.strip())
        found: Principal | None = None
        for principal, digest in self._tokens:
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        return found
