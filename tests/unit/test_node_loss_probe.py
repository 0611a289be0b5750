"""Node-loss detection and the NG helper it needs (no daemon): the node prober's bound
(2 missed or refused pings), recovery, and a leg's SDP rebuilt from a ``query`` reply."""

from __future__ import annotations

import pytest

from orchestrator.controller.selection import NodeProber, SrsProber
from orchestrator.errors import NgProtocolError
from orchestrator.ng.models import CallInfo
from orchestrator.ng.reply import Reply


def test_node_lost_after_two_refused_pings_and_back_on_a_pong() -> None:
    p = NodeProber(["rtp1", "rtp2"], 1.0, 2)  # the site defaults (media.ping_*)
    sent = {n: tok for n, _, tok in p.to_send(0.0)}
    assert set(sent) == {"rtp1", "rtp2"} and all(NodeProber.owns(t) for t in sent.values())
    assert not SrsProber.owns(sent["rtp1"])  # the two probers' ids never mix
    assert p.reply(sent["rtp1"], 200, 0.01) == [("rtp1", True, 0.01)]  # first pong: known up
    assert p.reply(sent["rtp2"], 200, 0.01) == [("rtp2", True, 0.01)]
    sent = {n: tok for n, _, tok in p.to_send(1.0)}
    assert p.reply(sent["rtp1"], 503, 1.01) == []  # one refused ping: not yet
    p.reply(sent["rtp2"], 200, 1.01)
    sent = {n: tok for n, _, tok in p.to_send(2.0)}
    assert p.reply(sent["rtp1"], 503, 2.01) == [("rtp1", False, 0.01)]  # since the last pong
    assert not p.is_up("rtp1") and p.is_up("rtp2")
    sent = {n: tok for n, _, tok in p.to_send(3.0)}
    assert p.reply(sent["rtp1"], 200, 3.01) == [("rtp1", True, 3.01)]  # recovered


@pytest.mark.parametrize(("interval", "silent_from", "lost_by"), [
    (1.0, 0.5, 3.0),  # a silent host: noticed 2–3 s after its last pong
    (0.5, 0.2, 1.5),
])
def test_silent_node_is_lost_within_the_bound(interval: float, silent_from: float,
                                              lost_by: float) -> None:
    p = NodeProber(["n"], interval, 2)
    t, lost_at = 0.0, None
    while t < 10 and lost_at is None:
        for _, _, tok in p.to_send(t):
            if t < silent_from:
                p.reply(tok, 200, t)
        if p.due(t):
            lost_at = t
        t = round(t + 0.05, 2)
    assert lost_at is not None and lost_at - silent_from <= lost_by


QUERY = {"result": "ok", "tags": {
    "ft": {"tag": "ft", "medias": [{"type": "audio", "protocol": "RTP/AVP",
                                    "codec": "PCMA/8000",
                                    "streams": [{"endpoint": {"family": "IPv4",
                                                              "address": "127.0.0.1",
                                                              "port": 40002}}]}]},
    "tt": {"tag": "tt", "medias": [{"type": "audio", "protocol": "RTP/AVP",
                                    "codec": "opus/48000/2",
                                    "streams": [{"endpoint": {"address": "127.0.0.5",
                                                              "port": 40100}}]}]},
    "bad": {"tag": "bad", "medias": []}}}


def test_leg_sdp_from_query() -> None:
    info = CallInfo("c", Reply(QUERY, "query"))
    sdp = info.leg_sdp("ft")
    assert sdp == ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
                   "m=audio 40002 RTP/AVP 8\r\nc=IN IP4 127.0.0.1\r\na=rtpmap:8 PCMA/8000\r\n"
                   "a=sendrecv\r\n")
    assert "m=audio 40100 RTP/AVP 96\r\n" in info.leg_sdp("tt")  # dynamic codec
    assert "a=rtpmap:96 opus/48000/2" in info.leg_sdp("tt")
    with pytest.raises(NgProtocolError, match="tags.bad.medias"):
        info.leg_sdp("bad")
    with pytest.raises(NgProtocolError):
        info.leg_sdp("missing")
