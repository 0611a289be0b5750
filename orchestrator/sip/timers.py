"""RFC 3261 timers and retransmission schedules over unreliable transports (sans-IO: the
caller passes the clock).

========================  ==========================  =====================  ===========
message                   retransmitted by            interval               gives up at
========================  ==========================  =====================  ===========
INVITE request            Timer A (§17.1.1.2)         T1, doubling           Timer B
non-INVITE request        Timer E (§17.1.2.2)         T1, doubling to T2     Timer F
non-2xx INVITE response   Timer G (§17.2.1)           T1, doubling to T2     Timer H
2xx INVITE response       the UAS core (§13.3.1.4)    T1, doubling to T2     64*T1
========================  ==========================  =====================  ===========

Over a reliable transport (TCP) nothing is retransmitted; the give-up timer still runs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["T1", "T2", "T4", "Retransmitter", "Timers"]

T1 = 0.5  # RFC 3261 §17.1.1.1: RTT estimate
T2 = 4.0  # maximum retransmission interval for non-INVITE requests and INVITE responses
T4 = 5.0  # maximum time a message stays in the network


class Retransmitter:
    """When to resend a message over an unreliable transport (sans-IO: pass ``now``).

    Intervals start at T1 and double, capped at ``t2`` (``None``: no cap, Timer A). After
    ``timeout`` (64*T1 by default) :meth:`poll` reports ``"expired"``. ``reliable``: never
    ``"send"``, only wait for the timeout.
    """

    def __init__(self, now: float, *, t1: float = T1, t2: float | None = T2,
                 timeout: float | None = None, reliable: bool = False) -> None:
        self.t1 = t1
        self.t2 = t2
        self.start = now
        self.interval = t1
        self.next_at = now + t1
        self.deadline = now + (64 * t1 if timeout is None else timeout)
        self.sent = 1  # the original transmission
        if reliable:
            self.stop_retransmitting()

    def poll(self, now: float) -> str:
        """``"send"`` (retransmit now), ``"wait"`` or ``"expired"``."""
        if now >= self.deadline:
            return "expired"
        if now < self.next_at:
            return "wait"
        self.interval = self.interval * 2 if self.t2 is None else min(self.interval * 2, self.t2)
        self.next_at += self.interval
        self.sent += 1
        return "send"

    def stop_retransmitting(self) -> None:
        """No more ``"send"``: only the timeout remains (a reliable transport, or an INVITE
        client transaction that got a provisional response, §17.1.1.2)."""
        self.next_at = self.deadline

    def wake_at(self) -> float:
        """When :meth:`poll` has something new to say."""
        return min(self.next_at, self.deadline)

    def schedule(self) -> list[float]:
        """Offsets from the start of every retransmission until expiry (for tests, logs)."""
        out: list[float] = []
        copy = Retransmitter(0.0, t1=self.t1, t2=self.t2, timeout=self.deadline - self.start)
        now = copy.wake_at()
        while (state := copy.poll(now)) != "expired":
            if state == "send":
                out.append(round(now, 9))
            now = copy.wake_at()
        return out


@dataclass(frozen=True, slots=True)
class Timers:
    """One endpoint's T1/T2 and the retransmitters of the table above. ``transaction``
    overrides 64*T1 for Timer B/F (how long a request waits for a final response)."""

    t1: float = T1
    t2: float = T2
    transaction: float | None = None

    @property
    def timer_b(self) -> float:
        """Timer B/F: a client transaction gives up (§17.1.1.2, §17.1.2.2)."""
        return 64 * self.t1 if self.transaction is None else self.transaction

    @property
    def timer_h(self) -> float:
        """Timer H (and the 2xx's wait for its ACK, §13.3.1.4); also how long a server
        transaction absorbs retransmissions (Timer J, §17.2.2)."""
        return 64 * self.t1

    def invite_request(self, now: float, *, reliable: bool = False) -> Retransmitter:
        """Timer A (doubling without cap) until Timer B."""
        return Retransmitter(now, t1=self.t1, t2=None, timeout=self.timer_b, reliable=reliable)

    def non_invite_request(self, now: float, *, reliable: bool = False) -> Retransmitter:
        """Timer E (capped at T2) until Timer F."""
        return Retransmitter(now, t1=self.t1, t2=self.t2, timeout=self.timer_b,
                             reliable=reliable)

    def request(self, method: str, now: float, *, reliable: bool = False) -> Retransmitter:
        """:meth:`invite_request` or :meth:`non_invite_request` by ``method``."""
        if method == "INVITE":
            return self.invite_request(now, reliable=reliable)
        return self.non_invite_request(now, reliable=reliable)

    def invite_response(self, now: float, *, reliable: bool = False) -> Retransmitter:
        """A final response to an INVITE until its ACK: Timer G until Timer H for a non-2xx,
        the same schedule for a 2xx (§13.3.1.4)."""
        return Retransmitter(now, t1=self.t1, t2=self.t2, timeout=self.timer_h,
                             reliable=reliable)
