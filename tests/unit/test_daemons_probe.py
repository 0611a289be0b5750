"""Readiness probes of orchestrator.daemons that need no daemon."""

from __future__ import annotations

import socket

from orchestrator.daemons import udp_bound


def test_udp_bound_sees_a_bound_port_and_not_a_closed_one() -> None:
    for addr in ("127.0.0.1", "0.0.0.0"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((addr, 0))
        port = sock.getsockname()[1]
        try:
            assert udp_bound("127.0.0.1", port)  # 0.0.0.0 serves 127.0.0.1 too
        finally:
            sock.close()
        assert not udp_bound("127.0.0.1", port)
