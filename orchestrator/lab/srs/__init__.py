"""A reference SIPREC recording server (SRS, RFC 7866) for the lab and for testing an SRC.

::

    from orchestrator.lab.srs import Behaviour, SrsConfig, SrsServer

    with SrsServer(SrsConfig(port=0, record_dir=tmp, rtp_port_min=40000,
                             rtp_port_max=40099)) as srs:
        ...  # point the SRC at srs.uri
        srs.wait_for(lambda ss: any(s.state == "terminated" for s in ss), timeout=5)

Protocol code is sans-IO (:mod:`orchestrator.sip`, :mod:`.sip`, :mod:`.sdp`, :mod:`.checks`,
:mod:`.media`); the server (:mod:`.server`, its concerns in :mod:`.transport`,
:mod:`.transactions`, :mod:`.uas`, :mod:`.uac`, :mod:`.sessions`, :mod:`.streams`,
:mod:`.records`) runs it on UDP and TCP sockets in background threads.
"""

from __future__ import annotations

from .config import Behaviour, SrsConfig
from .media import PcapWriter, RtpPortPool, WavWriter, parse_rtp
from .server import SrsServer
from .session import SRS_RULES, SrsFinding, SrsSession, StreamStats

__all__ = [
    "SRS_RULES",
    "Behaviour",
    "PcapWriter",
    "RtpPortPool",
    "SrsConfig",
    "SrsFinding",
    "SrsServer",
    "SrsSession",
    "StreamStats",
    "WavWriter",
    "parse_rtp",
]
