"""A selector event loop in its own thread: readers, timers, calls from other threads.

The reference SRS runs two: the SIP loop (sockets of :mod:`.transport`, every timer) and the
media loop (the RTP sockets).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["EventLoop", "Timer"]

log = logging.getLogger(__name__)


class Timer:
    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when, self.fn, self.args = when, fn, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """A selector loop in its own thread: readers, timers and calls from other threads.

    With ``lock``, every callback runs holding it and notifies it afterwards. A callback
    that raises is logged, never fatal.
    """

    def __init__(self, name: str, lock: threading.Condition | None = None) -> None:
        self.name = name
        self._lock = lock
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._timers: list[tuple[float, int, Timer]] = []
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._tlock = threading.Lock()
        self._seq = itertools.count()
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._tlock:
            self._calls.append((fn, args))
        self._wake()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        return self.call_at(time.monotonic() + max(delay, 0.0), fn, *args)

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        t = Timer(when, fn, args)
        with self._tlock:
            heapq.heappush(self._timers, (when, next(self._seq), t))
        if not self.in_loop():
            self._wake()
        return t

    def add_reader(self, sock: socket.socket, fn: Callable[[], None]) -> None:
        if not self.in_loop():
            self.call_soon(self.add_reader, sock, fn)
            return
        if sock.fileno() >= 0 and not self._closed:
            self._sel.register(sock, selectors.EVENT_READ, fn)

    def remove(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` and close it."""
        if not self.in_loop() and self._thread.is_alive():
            self.call_soon(self.remove, sock)
            return
        if not self._closed:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # buffer full: a wake-up is already pending; or closed at stop
            pass

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._cleanup()

    def _loop(self) -> None:
        while not self._stopping:
            with self._tlock:
                if self._calls:
                    timeout: float | None = 0.0
                elif self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                else:
                    timeout = None
            for key, _events in self._sel.select(timeout):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                else:
                    self._guard(key.data)
            now = time.monotonic()
            due: list[Timer] = []
            with self._tlock:
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[2])
                calls = list(self._calls)
                self._calls.clear()
            for t in due:
                if not t.cancelled:
                    self._guard(t.fn, *t.args)
            for fn, args in calls:
                self._guard(fn, *args)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            if self._lock is None:
                fn(*args)
            else:
                with self._lock:
                    fn(*args)
                    self._lock.notify_all()
        except Exception:  # never let one message or packet kill the thread
            log.exception("%s: error in %s", self.name, getattr(fn, "__name__", fn))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop; from another thread this waits for it and closes its sockets."""
        self._stopping = True
        if self.in_loop():
            return  # _run cleans up when the current callback returns
        if self._thread.is_alive():
            self._wake()
            self._thread.join(timeout)
        else:
            self._cleanup()

    def _cleanup(self) -> None:
        with self._tlock:
            if self._closed:
                return
            self._closed = True
        for key in list(self._sel.get_map().values()):
            fileobj = key.fileobj
            if isinstance(fileobj, socket.socket):
                fileobj.close()
        self._sel.close()
        self._wake_w.close()
