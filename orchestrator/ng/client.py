"""The NG client: typed methods for the rtpengine 10.5 commands siprecctl uses.

::

    with NgClient(("127.0.0.1", 2223)) as ng:            # UDP + bencode by default
        ng.ping()
        sdp = ng.offer("call-1", "ft", sdp_bytes, label="caller", record_call=True).sdp
        info = ng.query("call-1")

Replies: ``ok`` → the data (a ``warning`` is logged and kept on the reply), ``error`` →
:class:`NgError` with rtpengine's ``error-reason``, ``load limit`` → :class:`NgOverloaded`,
"Unrecognized command" → :class:`NgUnsupported` (remembered per client, so a command newer
than the daemon is tried once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self

from ..errors import NgError, NgOverloaded, NgProtocolError, NgTimeout, NgUnsupported
from .codec import (
    CookieJar,
    Encoding,
    NgDict,
    bencode_encode,
    decode_body,
    json_document,
    json_encode,
    ng_value,
    text,
)
from .reply import Reply
from .transports import Transport, _log

if TYPE_CHECKING:
    from .models import CallInfo, SdpReply, Subscription

__all__ = ["DEFAULT_TIMEOUT", "NgClient", "make_transport"]

DEFAULT_TIMEOUT = 3.0  # seconds for one command, retransmissions included
Params = Mapping[str, Any]
Text = str | bytes


def make_transport(kind: str, host: str, port: int, **options: Any) -> Transport:
    """A transport by name: ``udp`` (default), ``tcp`` or ``http``."""
    if kind == "udp":
        from .transports import UdpTransport

        return UdpTransport(host, port, **options)
    if kind == "tcp":
        from .transports import TcpTransport

        return TcpTransport(host, port, **options)
    if kind == "http":
        from .transports import HttpTransport

        return HttpTransport(host, port, **options)
    raise ValueError(f"unknown NG transport {kind!r} (expected udp, tcp or http)")


def _metadata(value: str | Mapping[str, str] | None) -> str | None:
    """``{"a": "1", "b": "2"}`` → ``"a:1|b:2"`` (rtpengine-recording's metakeys form)."""
    if value is None or isinstance(value, str):
        return value
    return "|".join(f"{k}:{v}" for k, v in value.items())


# Whole reply bodies that carry nothing but the result, in both encodings as rtpengine writes
# them: answered without running a parser.
_TRIVIAL = {b'{"result":"pong"}': "pong", b'{"result":"ok"}': "ok",
            b"d6:result4:ponge": "pong", b"d6:result2:oke": "ok"}


class NgClient:
    """One rtpengine, one transport; thread-safe when the transport is (UDP, TCP, HTTP).

    ``address`` with ``transport="udp"|"tcp"|"http"`` builds the transport; or pass a
    :class:`Transport` instance (e.g. :class:`~orchestrator.ng.transports.MockTransport`).
    ``encoding`` is ``"json"`` (default where the transport carries it: rtpengine 10.3+,
    and CPython parses JSON replies in C, about 4x faster than bencode in Python; a message
    holding non-UTF-8 bytes goes as bencode) or ``"bencode"`` (TCP-NG: bencode only).
    Every call has a timeout: ``timeout`` here is the default for all of them.
    """

    def __init__(self, address: tuple[str, int] | None = None, *,
                 transport: str | Transport = "udp", encoding: Encoding | None = None,
                 timeout: float = DEFAULT_TIMEOUT, name: str | None = None,
                 **transport_options: Any) -> None:
        if timeout is None or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        if isinstance(transport, Transport):
            self.transport = transport
        else:
            if address is None:
                raise ValueError("an address (host, port) is needed to build a transport")
            self.transport = make_transport(transport, address[0], address[1],
                                            **transport_options)
        if encoding is None:
            encoding = "json" if "json" in self.transport.encodings else "bencode"
        if encoding not in self.transport.encodings:
            raise ValueError(f"{self.transport.kind} transport does not carry {encoding}")
        self.encoding: Encoding = encoding
        self.timeout = timeout
        self.name = name or self.transport.label
        self._cookies = CookieJar()
        self._static: dict[str, bytes] = {}  # bodies of parameterless commands
        self._unsupported: set[str] = set()
        self._supported: set[str] = set()

    # ------------------------------------------------------------------ plumbing
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def __repr__(self) -> str:
        return f"NgClient({self.name!r}, {self.encoding})"

    def supports(self, command: str) -> bool | None:
        """True/False once a command was answered/rejected as unknown; None if never tried."""
        if command in self._unsupported:
            return False
        return True if command in self._supported else None

    def _body(self, message: dict[str, Any]) -> bytes:
        if self.encoding == "json":
            body = json_encode(message)
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                # rtpengine's JSON parser rejects non-UTF-8 ("Failed to parse JSON document"):
                # send this message as bencode, which carries any bytes (reply follows suit)
                return bencode_encode(message)
            return body
        return bencode_encode(message)

    def _message(self, command: str, params: Params | None, kw: Mapping[str, Any]) -> bytes:
        if not params and not kw:
            body = self._static.get(command)
            if body is None:
                body = self._static[command] = self._body({"command": command})
            return body
        message: dict[str, Any] = {"command": command}
        if params:
            message.update((k, v) for k, v in params.items() if v is not None)
        for k, v in kw.items():
            if v is not None:
                message[k.replace("_", "-")] = v
        return self._body(message)

    def call(self, command: str, params: Params | None = None, /, *,
             timeout: float | None = None, **kw: Any) -> Reply:
        """Send any NG command; ``params`` keys go as given (``"record call"``), keyword
        arguments have ``_`` turned into ``-`` (``call_id`` → ``call-id``). ``None`` values
        are left out. Returns the reply (``result`` ok/pong), raises on error replies."""
        if command in self._unsupported:
            raise NgUnsupported("Unrecognized command", command=command)
        cookie = self._cookies.next()
        raw = self.transport.request(cookie, cookie + b" " + self._message(command, params, kw),
                                     self.timeout if timeout is None else timeout)
        return self._reply(command, raw)

    def call_many(self, requests: Iterable[tuple[str, Params | None]], *, window: int = 64,
                  timeout: float | None = None) -> list[Reply | Exception]:
        """Many commands at once, pipelined over UDP (up to ``window`` in flight from this
        thread; other transports send them in turn). Each result is a :class:`Reply` or
        the :class:`~orchestrator.errors.SiprecctlError` that command raised."""
        commands: list[str] = []
        items = []
        for command, params in requests:
            cookie = self._cookies.next()
            items.append((cookie, cookie + b" " + self._message(command, params, {})))
            commands.append(command)

        def decode(k: int, body: bytes) -> Reply | Exception:
            # runs as each reply arrives, while rtpengine works on the next requests
            try:
                return self._reply(commands[k], body, keep=False)
            except (NgError, NgProtocolError) as exc:
                return exc

        out = self.transport.request_many(items, self.timeout if timeout is None else timeout,
                                          window, decode)
        return [NgTimeout("no reply") if r is None else r for r in out]

    def _reply(self, command: str, body: bytes, keep: bool = True) -> Reply:
        """Decode a reply body and check its result. A JSON success reply is parsed by the C
        JSON parser alone and converted to bytes lazily (:class:`Reply`); bencode, error
        results and JSON with ``\\u`` escapes (which may hold lone surrogates) are
        decoded in full at once. ``keep=False`` keeps the JSON text instead of the
        parsed document (for batches: see :class:`Reply`)."""
        trivial = _TRIVIAL.get(body)
        if trivial is not None:  # ping and most control commands: nothing to parse
            self._supported.add(command)
            return Reply.from_document({"result": trivial}, command)
        if body[:1] == b"{" and b"\\u" not in body:
            doc = json_document(body)
            result = doc.get("result")
            if result == "ok" or result == "pong":
                self._supported.add(command)
                if "warning" in doc:
                    _log().warning("rtpengine %s: %s: %s", self.name, command,
                                   text(ng_value(doc["warning"])))
                return Reply.from_document(doc, command) if keep else \
                    Reply.from_document(None, command, body)
            return self._check(command, ng_value(doc))
        return self._check(command, decode_body(body)[0])

    def _check(self, command: str, data: NgDict) -> Reply:
        result = data.get(b"result")
        if result == b"ok" or result == b"pong":
            self._supported.add(command)
            reply = Reply(data, command)
            if b"warning" in data:
                _log().warning("rtpengine %s: %s: %s", self.name, command, text(data[b"warning"]))
            return reply
        if result == b"error":
            reason = text(data.get(b"error-reason", b"(no error-reason)"))
            if reason == "Unrecognized command":
                self._unsupported.add(command)
                raise NgUnsupported(reason, command=command, reply=data)
            raise NgError(reason, command=command, reply=data)
        if result == b"load limit":
            # undocumented third result (control_ng.c): max-sessions/cpu/load/bandwidth
            raise NgOverloaded(text(data.get(b"message", b"load limit")), command=command,
                               reply=data)
        raise NgProtocolError(f"{command}: reply without a known result: {result!r}")

    # ------------------------------------------------------------------ commands
    def ping(self, *, timeout: float | None = None) -> None:
        """``ping`` → ``pong``; raises otherwise."""
        r = self.call("ping", timeout=timeout)
        if r.get("result") != b"pong":
            raise NgProtocolError(f"ping answered with {r.result!r}, not 'pong'")

    def offer(self, call_id: Text, from_tag: Text, sdp: Text, *, label: Text | None = None,
              flags: Iterable[str] = (), replace: Iterable[str] = (),
              record_call: bool | None = None, metadata: str | Mapping[str, str] | None = None,
              params: Params | None = None, timeout: float | None = None) -> SdpReply:
        """``offer``: returns rtpengine's rewritten SDP (and pcap paths when recording)."""
        from .models import SdpReply

        r = self.call("offer", self._sdp_params(sdp, label, flags, replace, record_call,
                                                metadata, params),
                      call_id=call_id, from_tag=from_tag, timeout=timeout)
        return SdpReply.from_reply(r)

    def answer(self, call_id: Text, from_tag: Text, to_tag: Text, sdp: Text, *,
               label: Text | None = None, flags: Iterable[str] = (),
               replace: Iterable[str] = (), record_call: bool | None = None,
               metadata: str | Mapping[str, str] | None = None, params: Params | None = None,
               timeout: float | None = None) -> SdpReply:
        """``answer`` (``from-tag`` is the offerer's tag, ``to-tag`` the answerer's)."""
        from .models import SdpReply

        r = self.call("answer", self._sdp_params(sdp, label, flags, replace, record_call,
                                                 metadata, params),
                      call_id=call_id, from_tag=from_tag, to_tag=to_tag, timeout=timeout)
        return SdpReply.from_reply(r)

    @staticmethod
    def _sdp_params(sdp: Text, label: Text | None, flags: Iterable[str], replace: Iterable[str],
                    record_call: bool | None, metadata: str | Mapping[str, str] | None,
                    params: Params | None) -> dict[str, Any]:
        p: dict[str, Any] = {"sdp": sdp, "label": label, "metadata": _metadata(metadata)}
        if flags:
            p["flags"] = list(flags)
        if replace:
            p["replace"] = list(replace)
        if record_call is not None:
            p["record call"] = "yes" if record_call else "no"
        p.update(params or {})
        return p

    def delete(self, call_id: Text, from_tag: Text | None = None, *, to_tag: Text | None = None,
               delete_delay: int | None = None, fatal: bool = False,
               timeout: float | None = None) -> Reply:
        """``delete``; an unknown call is a warning unless ``fatal``."""
        return self.call("delete", {"delete delay": delete_delay,
                                    "flags": ["fatal"] if fatal else None},
                         call_id=call_id, from_tag=from_tag, to_tag=to_tag, timeout=timeout)

    def query(self, call_id: Text, *, from_tag: Text | None = None, to_tag: Text | None = None,
              timeout: float | None = None) -> CallInfo:
        """``query``: participants (tags), their links, packet counters."""
        from .models import CallInfo

        r = self.call("query", call_id=call_id, from_tag=from_tag, to_tag=to_tag,
                      timeout=timeout)
        return CallInfo.from_reply(text(call_id) if isinstance(call_id, bytes) else call_id, r)

    def list_calls(self, limit: int = 32, *, timeout: float | None = None) -> list[str]:
        """``list``: call-ids (rtpengine's default limit is 32; large lists may not fit in
        one UDP datagram)."""
        r = self.call("list", limit=limit, timeout=timeout)
        return [text(c) for c in r.get("calls") or []]

    def statistics(self, *, timeout: float | None = None) -> Reply:
        """``statistics`` (the CLI's ``list jsonstats``)."""
        return self.call("statistics", timeout=timeout)

    def start_recording(self, call_id: Text, *, from_tag: Text | None = None,
                        metadata: str | Mapping[str, str] | None = None,
                        timeout: float | None = None) -> Reply:
        """``start recording`` (10.5 always records the whole call; SDPs of an
        offer/answer before this are not in the metadata file, rtpengine issue #877)."""
        return self.call("start recording", call_id=call_id, from_tag=from_tag,
                         metadata=_metadata(metadata), timeout=timeout)

    def stop_recording(self, call_id: Text, *, from_tag: Text | None = None,
                       metadata: str | Mapping[str, str] | None = None,
                       timeout: float | None = None) -> Reply:
        """``stop recording``: finalises the pcap and metadata files at once."""
        return self.call("stop recording", call_id=call_id, from_tag=from_tag,
                         metadata=_metadata(metadata), timeout=timeout)

    def pause_recording(self, call_id: Text, *, from_tag: Text | None = None,
                        fallback: bool = False, timeout: float | None = None) -> str:
        """``pause recording`` (rtpengine 11.3+). Returns ``"paused"``.

        On an older daemon it raises :class:`NgUnsupported` -- or, with ``fallback``, sends
        the documented alternative, ``stop recording`` with flag ``pause``, and returns
        ``"stopped"``: 10.5 ignores the flag, so the recording is stopped and finalised and
        a later ``start recording`` begins a new pcap/metadata pair.
        """
        if "pause recording" not in self._unsupported:
            try:
                self.call("pause recording", call_id=call_id, from_tag=from_tag,
                          timeout=timeout)
                return "paused"
            except NgUnsupported:
                if not fallback:
                    raise
        elif not fallback:
            raise NgUnsupported("Unrecognized command", command="pause recording")
        self.call("stop recording", call_id=call_id, from_tag=from_tag, flags=["pause"],
                  timeout=timeout)
        return "stopped"

    def _selector(self, command: str, call_id: Text, from_tag: Text | None, label: Text | None,
                  address: Text | None, all: bool, timeout: float | None,
                  **extra: Any) -> Reply:
        return self.call(command, call_id=call_id, from_tag=from_tag, label=label,
                         address=address, flags=["all"] if all else None, timeout=timeout,
                         **extra)

    def start_forwarding(self, call_id: Text, *, from_tag: Text | None = None,
                         label: Text | None = None, address: Text | None = None,
                         all: bool = False, metadata: str | Mapping[str, str] | None = None,
                         timeout: float | None = None) -> Reply:
        """``start forwarding`` (PCM forwarding by the recording daemon)."""
        return self._selector("start forwarding", call_id, from_tag, label, address, all,
                              timeout, metadata=_metadata(metadata))

    def stop_forwarding(self, call_id: Text, *, from_tag: Text | None = None,
                        label: Text | None = None, address: Text | None = None,
                        all: bool = False, timeout: float | None = None) -> Reply:
        """``stop forwarding``."""
        return self._selector("stop forwarding", call_id, from_tag, label, address, all, timeout)

    def block_media(self, call_id: Text, *, from_tag: Text | None = None,
                    label: Text | None = None, address: Text | None = None,
                    all: bool = False, timeout: float | None = None) -> Reply:
        """``block media`` of one participant (or the whole call)."""
        return self._selector("block media", call_id, from_tag, label, address, all, timeout)

    def unblock_media(self, call_id: Text, *, from_tag: Text | None = None,
                      label: Text | None = None, address: Text | None = None,
                      all: bool = False, timeout: float | None = None) -> Reply:
        """``unblock media``."""
        return self._selector("unblock media", call_id, from_tag, label, address, all,
                              timeout)

    def subscribe_request(self, call_id: Text, *, from_tags: Iterable[Text] | None = None,
                          from_tag: Text | None = None, all: bool = False,
                          siprec: bool = False, to_tag: Text | None = None,
                          label: Text | None = None, flags: Iterable[str] = (),
                          params: Params | None = None,
                          timeout: float | None = None) -> Subscription:
        """``subscribe request``: a sendonly offer forking the selected participants
        (``all``: every offer/answer participant). ``siprec`` adds ``a=label`` per m= line
        and the label→tag map (:attr:`Subscription.media_labels`)."""
        from .models import Subscription

        fl = list(flags)
        if all:
            fl.append("all")
        if siprec:
            fl.append("SIPREC")
        p: dict[str, Any] = dict(params or {})
        if from_tags is not None:
            p["from-tags"] = list(from_tags)
        r = self.call("subscribe request", p, call_id=call_id, from_tag=from_tag,
                      to_tag=to_tag, set_label=label, flags=fl or None, timeout=timeout)
        return Subscription.from_reply(r)

    def subscribe_answer(self, call_id: Text, to_tag: Text, sdp: Text, *,
                         flags: Iterable[str] = (), timeout: float | None = None) -> Reply:
        """``subscribe answer``: the subscriber's (SRS's) answer SDP; forwarding starts."""
        fl = list(flags)
        return self.call("subscribe answer", call_id=call_id, to_tag=to_tag, sdp=sdp,
                         flags=fl or None, timeout=timeout)

    def unsubscribe(self, call_id: Text, to_tag: Text, *, timeout: float | None = None) -> Reply:
        """``unsubscribe``: stop forking to subscriber ``to_tag``."""
        return self.call("unsubscribe", call_id=call_id, to_tag=to_tag, timeout=timeout)
