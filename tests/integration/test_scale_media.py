"""Media at carrier scale with the real daemons: Debian's redis-server 7.0 and rtpengine
10.5.3.5 nodes replicating through it, and Kamailio 5.6.3 spreading calls over a weighted
rtpengine set — all started from the rendered configs of ``examples/carrier-scale.yaml``,
changing only addresses (loopback), ports and directories.

What works here, and is asserted:

- the rendered ``redis/redis.conf`` (included by a minimal main config: foreground, a
  temporary dir) serves only with the password, with ``notify-keyspace-events`` set;
- a call is written to the Redis database of the node that handles it, and its peer
  holds it as a foreign call (NG ``query`` answers on both);
- Kamailio sends each call to the node its weighted hash picks (``NodePool`` predicts it
  call by call) and the share follows the weights; a SIGKILLed node is disabled and every
  new call goes to the other node of the set;
- when the nodes share the media address (one host here, both on 127.0.0.1: the lab's
  stand-in for a floating address), the peer carries the media of the lost node's calls
  without a gap — it already did: restoring the call binds the same ports with
  SO_REUSEADDR, and from then on the kernel delivers that call's packets to the peer;
- a SIPREC fork can be made on the peer after a re-offer of the call's two legs there.

What rtpengine 10.5 cannot do, asserted as such (a newer daemon that can would fail here):

- ``subscribe request`` on a call restored from Redis: with ``all`` it answers "No call
  participant specified" (the participants' tag types are not replicated), with
  ``from-tags`` it answers ok without any SDP (their SDP streams are not replicated;
  redis.c restores neither, up to 13.4 and HEAD by reading the source);
- carry on the media of a lost node whose media address the peer does not have: a mirror
  on another address (127.0.0.2 here) holds the call but receives nothing — callers keep
  sending to the lost address, and a proxy cannot re-INVITE them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.daemons import Daemon, Kamailio, RedisServer, Rtpengine, free_ports
from orchestrator.errors import NgError
from orchestrator.kamailio.rpc import HttpRpcTransport, KamailioClient
from orchestrator.lab.ua import CalleeServer, LabCall, RtpStream
from orchestrator.ng import NgClient, NodePool
from orchestrator.ng.codec import to_text
from orchestrator.render import ensure_secrets, render_site, write
from orchestrator.site import Site, load_text, validate_data
from orchestrator.site.secrets import edge_secrets, load_secret, rtpengine_redis_env_path
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration

LO = "127.0.0.1"
NG = {"rtp-a1": 27001, "rtp-a2": 27002, "rtp-b1": 27003}
FAR_NG, FAR_ADDRESS = 27004, "127.0.0.2"  # rtp-a2's config on another address
RTP = {"rtp-a1": (50000, 50999), "rtp-a2": (51000, 51999), "rtp-b1": (52000, 52999)}
REDIS_PORT = 26379
SPREAD_CALLS = 60


def _variant(work: Path, ports: dict[str, int]) -> Site:
    """examples/carrier-scale.yaml on loopback: addresses, ports and directories only."""
    data: dict[str, Any] = load_text((ROOT / "examples/carrier-scale.yaml").read_text()) \
        .model_dump(mode="json", exclude_none=True)
    for e in data["edges"]:
        e["listen"] = [{"proto": "udp", "address": LO, "port": ports[f"{e['name']}-sip"]}]
        e["trunks"] = [{"name": "core", "uri": f"sip:{LO}:{ports['callee']}"}]
        e["jsonrpc"] = {"address": LO, "port": ports[f"{e['name']}-rpc"], "allow": [f"{LO}/32"]}
        e["evapi"] = {"address": LO, "port": ports[f"{e['name']}-evapi"]}
        e["run_dir"] = str(work / "run" / e["name"])
    for n in data["media"]["nodes"]:
        n["ng"] = {"address": LO, "port": NG[n["name"]]}
        n["interfaces"] = [{"name": "pub", "address": LO}]
        n["ports"] = {"port_min": RTP[n["name"]][0], "port_max": RTP[n["name"]][1]}
    data["media"]["recording"]["dir"] = str(work / "recordings")
    for g in data["recording"]["srs_groups"]:
        g["servers"] = [{"uri": f"sip:rec@{LO}:{ports['srs']}"}]
    for i, c in enumerate(data["controller"]["instances"]):
        c["api"] = {"address": LO, "port": ports[f"api{i}"]}
    data["controller"]["store"] = str(work / "state.sqlite")
    data["redis"].update(address=LO, port=REDIS_PORT)
    data["security"] = {"secrets_dir": str(work / "secrets")}
    return validate_data(data, file="carrier-scale (loopback)")


@dataclass
class Scale:
    site: Site
    work: Path
    password: str
    nodes: dict[str, Rtpengine]
    far: Rtpengine
    sip: tuple[str, int]
    callee: CalleeServer
    rpc: KamailioClient

    def db(self, node: str) -> redis.Redis:
        n = self.site.node(node)
        assert n.redis is not None
        return redis.Redis(host=LO, port=REDIS_PORT, db=n.redis.db, password=self.password,
                           socket_timeout=2)

    def owner(self, call_id: str) -> str | None:
        """The node whose own database holds the call (a node writes only its own calls)."""
        found = [n for n in ("rtp-a1", "rtp-a2") if self.db(n).exists(call_id)]
        assert len(found) <= 1, f"{call_id} in the databases of {found}"
        return found[0] if found else None

    def ng(self, node: str) -> NgClient:
        return NgClient((LO, FAR_NG if node == "far" else NG[node]), timeout=2)


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as systemd's EnvironmentFile= reads the rendered one."""
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scale]:
    work = tmp_path_factory.mktemp("scale")
    free = iter(free_ports(10))
    ports = {k: next(free) for k in ("edge-a-sip", "edge-a-rpc", "edge-a-evapi", "edge-b-sip",
                                     "edge-b-rpc", "edge-b-evapi", "callee", "srs", "api0",
                                     "api1")}
    site = _variant(work, ports)
    etc = work / "etc"
    write(etc, render_site(site), site=site)
    ensure_secrets(site)
    password = load_secret(site.redis_auth_file)
    env = _env_file(rtpengine_redis_env_path(site))
    server = RedisServer(etc / "redis" / "redis.conf", work / "redis", address=LO,
                         port=REDIS_PORT, password=password)
    nodes = {n.name: Rtpengine(etc / "rtpengine" / n.name / "rtpengine.conf", work / n.name,
                               ng=(LO, NG[n.name]), env=env) for n in site.media.nodes}
    for n in site.media.nodes:
        Path(site.media.recording.dir, n.name).mkdir(parents=True)
    far_rec = work / "recordings" / "rtp-a2-far"
    far_rec.mkdir(parents=True)
    far = Rtpengine(etc / "rtpengine" / "rtp-a2" / "rtpengine.conf", work / "rtp-a2-far",
                    ng=(LO, FAR_NG), env=env,
                    overrides=[f"--interface=pub/{FAR_ADDRESS}", f"--listen-ng={LO}:{FAR_NG}",
                               f"--recording-dir={far_rec}"])
    edge = site.edges[0]
    kam = Kamailio(etc / "kamailio" / edge.name / "kamailio.cfg", work / "kamailio",
                   ready_tcp=(LO, edge.jsonrpc.port), shm_mb=edge.shm_mb, pkg_mb=edge.pkg_mb,
                   run_dir=Path(edge.runtime_dir))
    started: list[Daemon] = []
    callee = CalleeServer(LO, ports["callee"])
    rpc = KamailioClient(HttpRpcTransport(f"http://{LO}:{edge.jsonrpc.port}/RPC",
                                          secret=edge_secrets(site, edge.name).jsonrpc))
    try:
        for d in [server, *nodes.values(), far, kam]:
            d.start()
            started.append(d)
            d.wait_ready(15)
        yield Scale(site, work, password, nodes, far, (LO, edge.listen[0].port), callee, rpc)
    finally:
        rpc.close()
        callee.close()
        for d in reversed(started):
            d.stop()


def _predicted(site: Site, call_id: str) -> str:
    """The node Kamailio's weighted hash (hash_algo 0) picks among the set's live nodes."""
    with NodePool.from_site(site) as pool:
        return pool.select(call_id, 0).name


def _call_id_for(site: Site, node: str) -> str:
    """A fresh Call-ID the hash sends to ``node``."""
    while True:
        cid = f"scale-{os.urandom(6).hex()}@{LO}"
        if _predicted(site, cid) == node:
            return cid


def _call(scale: Scale, call_id: str | None = None) -> LabCall:
    call = LabCall(scale.sip, scale.callee)
    if call_id:
        call.call_id = call_id
    call.start()
    return call


def test_redis_from_the_rendered_config(scale: Scale) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=LO, port=REDIS_PORT, socket_timeout=2).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=LO, port=REDIS_PORT, password="x" * 43, socket_timeout=2).ping()
    r = scale.db("rtp-a1")
    events = r.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert {"K", "g", "$"} <= set(events), events
    assert r.config_get("appendonly")["appendonly"] == "yes"
    assert r.config_get("appendfsync")["appendfsync"] == "always"


def test_calls_spread_by_weight_and_are_mirrored(scale: Scale) -> None:
    on: dict[str, int] = {"rtp-a1": 0, "rtp-a2": 0}
    for _ in range(SPREAD_CALLS):
        call = _call(scale)
        try:
            owner = wait_for(lambda: scale.owner(call.call_id), 3,  # noqa: B023
                             f"{call.call_id} in a node's Redis database")
            assert owner == _predicted(scale.site, call.call_id), call.call_id
            peer = "rtp-a2" if owner == "rtp-a1" else "rtp-a1"
            with scale.ng(peer) as ng:  # the mirror holds it (foreign)
                wait_for(lambda: _knows(ng, call.call_id), 3,  # noqa: B023
                         f"{peer} to mirror {call.call_id}")
            on[owner] += 1
            call.bye()
        finally:
            call.close()
    share = on["rtp-a1"] / SPREAD_CALLS
    print(f"\nweights 2:1 over {SPREAD_CALLS} calls: rtp-a1 {on['rtp-a1']}, "
          f"rtp-a2 {on['rtp-a2']} (share of rtp-a1 {share:.2f}, weight share 0.67)")
    assert on["rtp-a1"] and on["rtp-a2"]
    # each call went where the hash said; the share is the hash's over random Call-IDs
    assert 0.45 <= share <= 0.9, on


def _knows(ng: NgClient, call_id: str) -> bool:
    try:
        ng.query(call_id)
    except NgError:
        return False
    return True


def _tags(ng: NgClient, call_id: str) -> dict[str, Any]:
    """``query``'s participants as plain text (tag → its medias and streams)."""
    return dict(to_text(ng.call("query", call_id=call_id)["tags"]))


def _relayed(ng: NgClient, call_id: str) -> int:
    """RTP packets this node received for the call's two legs."""
    return sum(p for p, _ in ng.query(call_id).counters().values())


def _leg_sdp(leg: dict[str, Any]) -> str:
    """A leg's SDP as the node still knows it from ``query``: the address and port it sends
    from (its endpoint) and its codec (static payload types only: PCMA/PCMU here)."""
    stream = leg["medias"][0]["streams"][0]
    ep = stream["endpoint"]
    codec = str(leg["medias"][0].get("codec", "PCMA/8000"))
    pt = {"PCMU/8000": 0, "PCMA/8000": 8, "G722/8000": 9}[codec]
    return (f"v=0\r\no=- 1 2 IN IP4 {ep['address']}\r\ns=-\r\nc=IN IP4 {ep['address']}\r\n"
            f"t=0 0\r\nm=audio {ep['port']} {leg['medias'][0]['protocol']} {pt}\r\n"
            f"a=rtpmap:{pt} {codec}\r\na=sendrecv\r\n")


def test_node_loss_peer_carries_the_call_and_a_new_fork(scale: Scale) -> None:
    call = _call(scale, _call_id_for(scale.site, "rtp-a1"))
    cid = call.call_id
    a1, a2, far = scale.ng("rtp-a1"), scale.ng("rtp-a2"), scale.ng("far")
    try:
        wait_for(lambda: scale.owner(cid) == "rtp-a1", 3, "the call in rtp-a1's database")
        wait_for(lambda: _knows(a2, cid) and _knows(far, cid), 3, "both mirrors to hold it")
        wait_for(lambda: call.rtp.received > 20 and call.callee_rtp.received > 20, 5,
                 "media both ways")
        # sharing the media address, the mirror already relays: the kernel hands each
        # packet to the socket bound last (rtpengine binds with SO_REUSEADDR)
        before = _relayed(a1, cid)
        wait_for(lambda: _relayed(a2, cid) > 20, 3, "rtp-a2 to relay the call")
        time.sleep(0.2)
        assert _relayed(a1, cid) == before, "rtp-a1 still receives the media"
        assert _relayed(far, cid) == 0  # its sockets are on 127.0.0.2: nobody sends there
        far_local = {s["local address"] for t in _tags(far, cid).values()
                     for m in t.get("medias", []) for s in m.get("streams", [])}
        assert far_local == {FAR_ADDRESS}

        killed_at = time.monotonic()
        scale.nodes["rtp-a1"].stop(kill=True)
        got = (call.rtp.received, call.callee_rtp.received)
        wait_for(lambda: call.rtp.received >= got[0] + 25
                 and call.callee_rtp.received >= got[1] + 25, 3,
                 "media both ways after rtp-a1's SIGKILL")
        print(f"\n25 packets each way through rtp-a2 {time.monotonic() - killed_at:.2f} s "
              "after rtp-a1's SIGKILL (no gap: rtp-a2 was relaying already)")
        assert _knows(a2, cid) and _knows(far, cid)

        # the first new call the hash sends to the lost node goes to rtp-a2 at once: on
        # loopback the dead port answers with ICMP port unreachable, so Kamailio disables
        # the node without waiting (a host gone silent costs its NG timeout: 1 s x 2 tries)
        t = time.monotonic()
        first = _call(scale, _call_id_for(scale.site, "rtp-a1"))
        first_setup = time.monotonic() - t
        try:
            assert wait_for(lambda: scale.owner(first.call_id), 3, "the first call after "
                            "the loss in Redis") == "rtp-a2"
            first.bye()
        finally:
            first.close()
        print(f"first call after the loss: on rtp-a2, set up in {first_setup:.2f} s")
        assert first_setup < 1.0

        # SIPREC on the restored call: 10.5 cannot fork it as it is
        with pytest.raises(NgError, match="No call participant specified"):
            a2.subscribe_request(cid, all=True, siprec=True, to_tag="srs-try")
        empty = a2.subscribe_request(cid, from_tags=[call.from_tag, call.to_tag or ""],
                                     siprec=True, to_tag="srs-try2")
        assert not empty.sdp and not empty.media_labels
        # ... but after the two legs are offered and answered there again, it can
        tags = _tags(a2, cid)
        a2.offer(cid, call.from_tag, _leg_sdp(tags[call.from_tag]), label="caller")
        a2.answer(cid, call.from_tag, call.to_tag or "", _leg_sdp(tags[call.to_tag]),
                  label="callee")
        sub = a2.subscribe_request(cid, all=True, siprec=True, to_tag="srs1")
        assert sorted(sub.media_labels) == ["0", "1"]
        srs = {label: RtpStream() for label in sub.media_labels}
        try:
            answer = f"v=0\r\no=srs 1 1 IN IP4 {LO}\r\ns=-\r\nc=IN IP4 {LO}\r\nt=0 0\r\n"
            for label in _labels_in_order(sub.sdp):
                answer += (f"m=audio {srs[label].port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
                           f"a=label:{label}\r\na=recvonly\r\n")
            got = (call.rtp.received, call.callee_rtp.received)
            a2.subscribe_answer(cid, "srs1", answer)
            wait_for(lambda: all(s.received >= 25 for s in srs.values()), 3,
                     "the new fork's media at the SRS (both labels)")
            assert call.rtp.received > got[0] and call.callee_rtp.received > got[1]
        finally:
            for s in srs.values():
                s.close()
        # the caller hangs up: Kamailio 5.6 sends the call's delete to the node it chose
        # (gone: "no available proxies") and to no other, so rtp-a2 keeps the foreign
        # call (no media timeout for foreign calls) until someone deletes it there
        call.bye()
        time.sleep(0.5)
        assert _knows(a2, cid), "rtp-a2 forgot the call by itself"
        a2.unsubscribe(cid, "srs1")  # unsubscribe first, then delete (FIELD-NOTES)
        # a delete with the rendered delete-delay does not free a call restored from Redis
        # (rtpengine 10.5: measured > 40 s with delete-delay 10), watched past that delay
        a2.delete(cid)
        until = time.monotonic() + scale.site.media.delete_delay + 3
        while time.monotonic() < until:
            assert _knows(a2, cid), "rtp-a2 freed the foreign call at its delete-delay"
            time.sleep(0.5)
        # so after a node loss the controller deletes with delete-delay 0 (README "After a
        # node loss", step 5), and that one frees it
        a2.delete(cid, delete_delay=0)
        wait_for(lambda: not _knows(a2, cid), 3, "rtp-a2 to forget the deleted call")
    finally:
        call.close()
        for c in (a1, a2, far):
            c.close()


def _labels_in_order(sdp: bytes | str | None) -> list[str]:
    text = sdp.decode() if isinstance(sdp, bytes) else (sdp or "")
    return [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("a=label:")]


def test_killed_node_is_disabled_and_new_calls_go_to_its_peer(scale: Scale) -> None:
    assert not scale.nodes["rtp-a1"].alive()  # killed by the previous test
    ids = [_call_id_for(scale.site, "rtp-a1") for _ in range(5)] + \
        [_call_id_for(scale.site, "rtp-a2") for _ in range(5)]
    took = []
    for cid in ids:
        t = time.monotonic()
        call = _call(scale, cid)
        took.append(time.monotonic() - t)
        try:
            assert wait_for(lambda: scale.owner(cid), 3, f"{cid} in Redis") == "rtp-a2"  # noqa: B023
            call.bye()
        finally:
            call.close()
    show = {n.url: n for n in scale.rpc.rtpengine_show()}
    assert show[f"udp:{LO}:{NG['rtp-a1']}"].disabled
    assert not show[f"udp:{LO}:{NG['rtp-a2']}"].disabled
    print(f"\nafter the loss: 10 of 10 calls on rtp-a2; set-up {max(took):.2f} s at most, "
          f"{sorted(took)[len(took) // 2]:.3f} s median")
    assert max(took) < 3.0
