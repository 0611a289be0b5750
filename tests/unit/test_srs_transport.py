"""The reference SRS's SIP socket: a receive buffer that holds a burst (no daemon)."""

from __future__ import annotations

import os
import socket

from orchestrator.lab.srs.transport import SIP_RCVBUF, _large_receive_buffer


def test_sip_socket_gets_a_large_receive_buffer() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        _large_receive_buffer(sock)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # as root beyond net.core.rmem_max; otherwise as far as it allows (Linux reports
        # twice the size asked for: its bookkeeping share)
        assert got >= (SIP_RCVBUF if os.geteuid() == 0 else default)
        assert got > default or os.geteuid() != 0
    finally:
        sock.close()
