"""Read the call events a Kamailio edge relays over evapi (netstring-framed JSON)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import LabError
from ..kamailio.evapi import NetstringDecoder, decode_event, encode_netstring

Event = dict[str, Any]


class EventReader(threading.Thread):
    """Collects events in the background; ``wait_for`` blocks until one matches.

    It authenticates as an evapi *observer* with the edge's ``secret`` (events only, no
    commands, beside the controller) and returns once the edge confirmed it. When the edge
    goes away (a restart) it reconnects, every 0.2 s, until :meth:`close`; ``reconnects``
    counts how often it did."""

    def __init__(self, addr: tuple[str, int], secret: str, timeout: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.addr, self._secret, self._timeout = addr, secret, timeout
        self.events: list[Event] = []
        self.cond = threading.Condition()
        self.reconnects = 0
        self._closed = False
        self.sock, first = self._connect()
        self.events.extend(first)

    def _connect(self) -> tuple[socket.socket, list[Event]]:
        addr, timeout = self.addr, self._timeout
        sock = socket.create_connection(addr, timeout=timeout)
        sock.sendall(encode_netstring(json.dumps(
            {"cmd": "auth", "secret": self._secret, "role": "observer"}).encode()))
        self._decoder = NetstringDecoder()
        events: list[Event] = []
        auth: Event | None = None
        deadline = time.monotonic() + timeout
        # the edge queues its auth answer: an event multicast meanwhile may come first
        while auth is None:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                data = b""
            if not data:
                sock.close()
                raise LabError(f"evapi {addr[0]}:{addr[1]}: no auth answer (wrong secret?)")
            for frame in self._decoder.feed(data):
                ev = decode_event(frame)
                if auth is None and ev.get("event") == "auth":
                    auth = ev
                else:
                    events.append(ev)
        if auth.get("result") != "ok":
            sock.close()
            raise LabError(f"evapi {addr[0]}:{addr[1]}: observer refused: {auth}")
        sock.settimeout(None)
        return sock, events

    @classmethod
    def for_edge(cls, site: Any, edge: Any, timeout: float = 5.0) -> EventReader:
        from ..site.secrets import edge_secrets

        return cls((edge.evapi.address, edge.evapi.port),
                   edge_secrets(site, edge.name).evapi, timeout)

    def run(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                if not self._reconnect():
                    return
                continue
            events = [decode_event(frame) for frame in self._decoder.feed(data)]
            with self.cond:
                self.events.extend(events)
                self.cond.notify_all()

    def _reconnect(self) -> bool:
        with contextlib.suppress(OSError):
            self.sock.close()
        while not self._closed:
            try:
                sock, first = self._connect()
            except (OSError, LabError):
                time.sleep(0.2)
                continue
            if self._closed:
                sock.close()
                return False
            self.sock = sock
            self.reconnects += 1
            with self.cond:
                self.events.extend(first)
                self.cond.notify_all()
            return True
        return False

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """The first collected event matching ``pred``; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching event among {len(self.events)}")
                self.cond.wait(left)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
