"""Fixtures of the integration tests: the real daemons, started as an operator would."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.daemons import Rtpengine, free_port
from orchestrator.ng import NgClient
from tests.conftest import ROOT

LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="session", autouse=True)
def _daemons_installed() -> None:
    # A missing daemon is a set-up bug: fail loudly, never skip. (Integration tests only:
    # unit tests run on a machine without the daemons.)
    missing = [b for b in ("kamailio", "rtpengine", "sipp", "kamcli") if not shutil.which(b)
               and not Path("/usr/sbin", b).exists()]
    assert not missing, f"run ./scripts/setup: missing {missing}"


def free_port_range(size: int = 100, start: int = 42000) -> tuple[int, int]:
    """A block of ``size`` UDP ports on loopback that are all free right now."""
    for base in range(start, 60000, size):
        socks = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((LOOPBACK, port))
            return base, base + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of UDP ports on loopback")


@dataclass
class RtpengineUnderTest:
    """A userspace rtpengine on loopback: NG over UDP, TCP and HTTP, pcap recording."""

    daemon: Rtpengine
    udp: int
    tcp: int
    http: int
    rec: Path
    port_min: int
    port_max: int

    def client(self, transport: str = "udp", encoding: Any = None, **kw: Any) -> NgClient:
        port = {"udp": self.udp, "tcp": self.tcp, "http": self.http}[transport]
        return NgClient((LOOPBACK, port), transport=transport, encoding=encoding, **kw)


@pytest.fixture(scope="module")
def rtpengine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtpengineUnderTest]:
    """One rtpengine per test module, started from the lab's rendered config as an operator
    would (delete-delay included); only its addresses, ports and recording spool differ."""
    tmp = tmp_path_factory.mktemp("rtpengine")
    rec = tmp / "rec"
    rec.mkdir()
    udp, tcp, http = free_port(), free_port("tcp"), free_port("tcp")
    pmin, pmax = free_port_range()
    rtp = Rtpengine(ROOT / "rtpengine/rtp1/rtpengine.conf", tmp, ng=(LOOPBACK, udp),
                    overrides=[f"--listen-ng={LOOPBACK}:{udp}",
                               f"--listen-tcp-ng={LOOPBACK}:{tcp}",
                               f"--listen-http={LOOPBACK}:{http}", f"--port-min={pmin}",
                               f"--port-max={pmax}", f"--recording-dir={rec}"])
    with rtp.started():
        yield RtpengineUnderTest(rtp, udp, tcp, http, rec, pmin, pmax)
