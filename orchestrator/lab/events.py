"""Read the call events a Kamailio edge relays over evapi (netstring-framed JSON)."""

from __future__ import annotations

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
    commands, beside the controller) and returns once the edge confirmed it."""

    def __init__(self, addr: tuple[str, int], secret: str, timeout: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.sendall(encode_netstring(json.dumps(
            {"cmd": "auth", "secret": secret, "role": "observer"}).encode()))
        self._decoder = NetstringDecoder()
        # events may come before the edge's answer (it answers from a timer route): keep them
        early: list[Event] = []
        answer: Event | None = None
        deadline = time.monotonic() + timeout
        while answer is None:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                data = b""
            if not data:
                self.sock.close()
                raise LabError(f"evapi {addr[0]}:{addr[1]}: no auth answer (wrong secret?)")
            for ev in (decode_event(f) for f in self._decoder.feed(data)):
                if answer is not None:
                    early.append(ev)
                elif ev.get("event") == "auth":
                    answer = ev
                else:
                    early.append(ev)
        if answer.get("result") != "ok":
            self.sock.close()
            raise LabError(f"evapi {addr[0]}:{addr[1]}: observer refused: {answer}")
        self.sock.settimeout(None)
        self.events: list[Event] = early
        self.cond = threading.Condition()

    @classmethod
    def for_edge(cls, site: Any, edge: Any, timeout: float = 5.0) -> EventReader:
        from ..site.secrets import edge_secrets

        return cls((edge.evapi.address, edge.evapi.port),
                   edge_secrets(site, edge.name).evapi, timeout)

    def run(self) -> None:
        decoder = self._decoder
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            events = [decode_event(frame) for frame in decoder.feed(data)]
            with self.cond:
                self.events.extend(events)
                self.cond.notify_all()

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
        self.sock.close()
