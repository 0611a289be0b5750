"""rtpengine NG protocol: sans-IO codec, transports, client, node pool.

::

    from orchestrator.ng import NgClient
    with NgClient(("127.0.0.1", 2223), encoding="json") as ng:
        ng.ping()

Typed reply models (:mod:`.models`) and :class:`NodePool` (:mod:`.pool`) are imported on
first use, so the ``ping`` path stays light.
"""

from __future__ import annotations

from typing import Any

from .client import DEFAULT_TIMEOUT, NgClient, make_transport
from .codec import CookieJar, StreamDecoder, decode_message, encode_message, text, to_text
from .reply import Reply
from .transports import HttpTransport, MockTransport, TcpTransport, Transport, UdpTransport

__all__ = ["DEFAULT_TIMEOUT", "CallInfo", "CookieJar", "HttpTransport", "MediaLabel",
           "MockTransport", "NgClient", "NodePool", "NodeState", "Reply", "SdpReply",
           "StreamDecoder", "Subscription", "TagInfo", "TagMedias", "TcpTransport",
           "Transport", "UdpTransport", "decode_message", "encode_message", "make_transport",
           "text", "to_text"]

_LAZY = {"CallInfo": "models", "MediaLabel": "models", "SdpReply": "models",
         "Subscription": "models", "TagInfo": "models", "TagMedias": "models",
         "NodePool": "pool", "NodeState": "pool"}


def __getattr__(name: str) -> Any:  # PEP 562
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
