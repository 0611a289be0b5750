"""Read the call events a Kamailio edge relays over evapi (newline-framed JSON)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

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
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    with self.cond:
                        self.events.append(json.loads(line))
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
