"""Read the call events a Kamailio edge relays over evapi (netstring-framed JSON)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..kamailio.evapi import NetstringDecoder, decode_event

Event = dict[str, Any]


class EventReader(threading.Thread):
    """Collects events in the background; ``wait_for`` blocks until one matches."""

    def __init__(self, addr: tuple[str, int], timeout: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.settimeout(None)
        self.events: list[Event] = []
        self.cond = threading.Condition()

    def run(self) -> None:
        decoder = NetstringDecoder()
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
