"""Kamailio control: JSON-RPC over HTTP or through kamcli (see :mod:`.rpc`)."""

from __future__ import annotations

from .rpc import (
    DEFAULT_TIMEOUT,
    HttpRpcTransport,
    KamailioClient,
    KamcliTransport,
    RpcTransport,
    RtpengineNode,
)

__all__ = ["DEFAULT_TIMEOUT", "HttpRpcTransport", "KamailioClient", "KamcliTransport",
           "RpcTransport", "RtpengineNode"]
