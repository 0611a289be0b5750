"""SIPREC end to end: real Kamailio, rtpengine, sipp and reference SRSs, with the controller
(``siprecctl serve``) as a child process. One stack per module; each test picks its SRS
behaviour through a header the site's policy rules route to an SRS group."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from orchestrator.controller.store import SessionStore
from orchestrator.daemons import Kamailio, free_port, free_ports
from orchestrator.kamailio import KamailioClient, KamcliTransport
from orchestrator.kamailio.encoding import original_bytes
from orchestrator.lab import sipp
from orchestrator.lab.events import EventReader
from orchestrator.lab.srs import Behaviour, SrsConfig, SrsServer, SrsSession
from orchestrator.lab.stack import LabStack
from orchestrator.lab.ua import CalleeServer, LabCall
from orchestrator.ng import NgClient
from orchestrator.recordings import decode_metadata, parse_pcap_metafile
from orchestrator.recordings.pcap import summarize_pcap
from orchestrator.site.loader import validate_data

pytestmark = pytest.mark.integration

SRS_BEHAVIOUR = {
    "ok": Behaviour(), "ok2": Behaviour(), "reject": Behaviour(reject=503),
    "silent": Behaviour(no_answer=True), "bye": Behaviour(bye_after=1.0),
    "snapshot": Behaviour(snapshot_after=0.5), "snaphold": Behaviour(snapshot_after=1.5),
    "refresh": Behaviour(refresh_after=0.5, move_on_refresh=True),
    "slow": Behaviour(reinvite_delay=0.8), "late": Behaviour(answer_delay=3.0),
}
# header X-Srs value -> SRS group (the rule of the same name routes it)
GROUPS = {
    "reject": ["reject", "ok2"], "silent": ["silent", "ok2"], "dead": ["reject"],
    "bye": ["bye"], "snapshot": ["snapshot"], "snaphold": ["snaphold"], "refresh": ["refresh"],
    "slow": ["slow"], "late": ["late", "ok2"],
}


def _site(work: Path, ports: dict[str, Any]) -> dict[str, Any]:
    srs_uri = {n: f"sip:srs@127.0.0.1:{ports['srs'][n]}" for n in SRS_BEHAVIOUR}
    groups = [{"name": "main", "servers": [{"uri": srs_uri["ok"]}]}]
    for g, members in GROUPS.items():
        groups.append({"name": f"g-{g}", "servers": [{"uri": srs_uri[m]} for m in members],
                       "timeout": 3.0 if g == "slow" else 1.0, "required": g == "dead"})
    rules = [{"name": "opt-out", "match": {"header": {"name": "X-Record", "pattern": "^no$"}},
              "record": False}]
    rules += [{"name": f"srs-{g}", "match": {"header": {"name": "X-Srs", "pattern": f"^{g}$"}},
               "siprec": f"g-{g}", "local": False} for g in GROUPS]
    return {
        "version": 1, "name": "siprec-test",
        "edges": [{
            "name": "edge1",
            "listen": [{"proto": "udp", "address": "127.0.0.1", "port": ports["sip"]},
                       {"proto": "tcp", "address": "127.0.0.1", "port": ports["sip"]}],
            "trunks": [{"name": "sipp", "uri": f"sip:127.0.0.1:{ports['uas']}",
                        "match_ruri": "^sip:sipp@"},
                       {"name": "phones", "uri": f"sip:127.0.0.1:{ports['callee']}"}],
            "default_trunk": "phones",
            "jsonrpc": {"address": "127.0.0.1", "port": ports["rpc"], "allow": ["127.0.0.1/32"]},
            "evapi": {"address": "127.0.0.1", "port": ports["evapi"]},
            "run_dir": str(work / "run" / "edge1"),
        }],
        "media": {
            "recording": {"method": "pcap", "dir": str(work / "recordings" / "rtp1")},
            "delete_delay": 2,
            "nodes": [{"name": "rtp1", "ng": {"address": "127.0.0.1", "port": ports["ng"]},
                       "interfaces": [{"name": "lab", "address": "127.0.0.1"}],
                       "ports": {"port_min": 32000, "port_max": 33999}}],
        },
        "recording": {"default": True, "local": True, "siprec": "main", "rules": rules,
                      "srs_groups": groups, "metadata_headers": ["X-Customer-Id"]},
        "controller": {"api": {"address": "127.0.0.1", "port": ports["api"]},
                       "store": str(work / "state.sqlite")},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("siprec")
    free = iter(free_ports(7 + len(SRS_BEHAVIOUR)))  # distinct, UDP and TCP
    ports = {k: next(free) for k in ("sip", "uas", "callee", "rpc", "evapi", "ng", "api")}
    ports["srs"] = {n: next(free) for n in SRS_BEHAVIOUR}
    site = validate_data(_site(work, ports), file="test-site")
    srs = [SrsConfig(address="127.0.0.1", port=ports["srs"][n], name=n,
                     record_dir=work / "srs" / n, rtp_port_min=34000 + i * 200,
                     rtp_port_max=34000 + i * 200 + 199, behaviour=b)
           for i, (n, b) in enumerate(SRS_BEHAVIOUR.items())]
    for cfg in srs:
        cfg.record_dir.mkdir(parents=True)
    with LabStack(site, work, srs=srs) as st:
        callee = CalleeServer("127.0.0.1", ports["callee"])
        cwd = sipp.workdir(work / "sipp")
        uas = sipp.uas(cwd, "127.0.0.1", ports["uas"])
        events = EventReader.for_edge(st.site, st.edge)
        events.start()
        st.callee, st.sipp_cwd, st.events = callee, cwd, events  # type: ignore[attr-defined]
        try:
            yield st
        finally:
            events.close()
            sipp.stop(uas)
            callee.close()


def wait(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sessions_of(stack: LabStack, call_id: str) -> list[dict[str, Any]]:
    return stack.api("GET", f"/calls/{urllib.parse.quote(call_id, safe='')}")


def srs_session(srs: SrsServer, rs_call_id: str) -> SrsSession | None:
    return next((s for s in srs.sessions() if s.call_id == rs_call_id), None)


def established(stack: LabStack, call_id: str, timeout: float = 10.0) -> dict[str, Any]:
    return wait(lambda: next((s for s in sessions_of(stack, call_id)
                              if s["state"] == "established"), None), timeout,
                f"an established recording session for {call_id}")


def errors(findings) -> list[str]:
    return [f"{f.rule} {f.message}" for f in findings if f.severity.value == "error"]


def lab_call(stack: LabStack, **headers: str) -> LabCall:
    call = LabCall(stack.sip, stack.callee, headers=headers)  # type: ignore[attr-defined]
    call.start()
    return call


# ---------------------------------------------------------------------------- tests

def test_recorded_call_reaches_the_srs(stack: LabStack) -> None:
    """sipp caller (plays G.711 from a pcap) → edge → sipp callee (echoes): the SRS gets one
    session, valid metadata, one stream per leg with ≥ 95 % of the packets rtpengine got
    from each leg, and the BYE within 1 s of the call's BYE."""
    cwd = stack.sipp_cwd  # type: ignore[attr-defined]
    argv = sipp.uac_argv(cwd, f"{stack.sip[0]}:{stack.sip[1]}", local=("127.0.0.1", free_port()),
                         duration_ms=3000, customer="CUST-1", extra=["-s", "sipp"])
    uac = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answered = stack.events.wait_for(  # type: ignore[attr-defined]
        lambda e: e["event"] == "answered" and e["headers"].get("X-Customer-Id") == "CUST-1")
    call_id = answered["call_id"]
    sess = established(stack, call_id)
    assert uac.wait(30) == 0
    ended = stack.events.wait_for(  # type: ignore[attr-defined]
        lambda e: e["event"] == "ended" and e["call_id"] == call_id)
    srs = stack.srs["ok"]
    s = wait(lambda: (x := srs_session(srs, sess["rs_call_id"])) and x.ended and x, 10,
             "the SRS session to end")
    assert [x.call_id for x in srs.sessions()].count(sess["rs_call_id"]) == 1
    assert s.bye_from == "src" and s.state == "terminated"
    assert s.ended_at - float(ended["ts"]) < 1.0, "BYE to the SRS later than 1 s after the call's"
    assert errors(s.sip_findings) == [] and errors(s.metadata_findings) == []
    assert len(s.labels) == 2
    aors = sorted(p.get("aor") or "" for st in s.labels.values() for p in st.participants)
    assert any("caller" in a for a in aors) and any("sipp" in a for a in aors), aors
    # rtpengine's own recording of the call (local recording is on) counts what each leg sent
    rec = stack.rec_dirs["rtp1"] / "pcaps"
    prefix = urllib.parse.quote(call_id, safe="")
    pcap = wait(lambda: next(iter(rec.glob(f"{prefix}-*.pcap")), None), 10, "rtpengine's pcap")
    per_leg = sorted(summarize_pcap(pcap.read_bytes()).dst_ports.values())
    at_srs = sorted(st.packets for st in s.labels.values())
    assert len(per_leg) == 2 and min(per_leg) > 50, per_leg
    for sent, got in zip(per_leg, at_srs, strict=True):
        assert got >= 0.95 * sent, f"SRS got {at_srs} of {per_leg}"
    # the call and its subscription leave rtpengine after the shipped delete-delay (the
    # controller never unsubscribes after the edge's delete: that would leak the call)
    with NgClient(("127.0.0.1", stack.site.media.nodes[0].ng.port)) as ng:
        wait(lambda: call_id not in ng.list_calls(1000), stack.site.media.delete_delay + 3,
             "rtpengine to free the call")
    # evidence: rtpengine's own counters, read by the controller before the call went
    store = SessionStore(stack.store, readonly=True)
    try:
        evidence = wait(lambda: store.media(call_id), 5, "the media counters in the store")
    finally:
        store.close()
    got = {r["role"]: r["packets"] for r in evidence if r["why"] == "call end"}
    assert set(got) >= {"caller", "callee"}, evidence
    assert sorted([got["caller"], got["callee"]]) == per_leg  # rtpengine = its own pcap
    final = sessions_of(stack, call_id)
    assert [x["state"] for x in final] == ["closed"]


def test_fifty_calls_half_recorded_each_once(stack: LabStack) -> None:
    """50 calls at 10 calls/s (two sipp callers at 5/s each), half opted out."""
    cwd = stack.sipp_cwd  # type: ignore[attr-defined]
    target = f"{stack.sip[0]}:{stack.sip[1]}"
    before = {s.call_id for s in stack.srs["ok"].sessions()}
    procs = [subprocess.Popen(sipp.uac_argv(cwd, target, local=("127.0.0.1", free_port()),
                                            calls=25, rate=5, duration_ms=1000, record=rec,
                                            customer=cust, extra=["-s", "sipp"]),
                              cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for rec, cust in (("yes", "LOAD-REC"), ("no", "LOAD-NOREC"))]
    assert [p.wait(60) for p in procs] == [0, 0], \
        [f.read_text()[-1500:] for f in Path(cwd).glob("uac_*_errors.log")]

    def done() -> list[dict[str, Any]] | None:
        ss = [s for s in stack.api("GET", "/sessions")
              if (s["call"].get("headers") or {}).get("X-Customer-Id", "").startswith("LOAD-")]
        return ss if len(ss) >= 25 and all(s["state"] == "closed" for s in ss) else None

    ss = wait(done, 30, "25 closed sessions")
    assert len(ss) == 25
    assert {s["call"]["headers"]["X-Customer-Id"] for s in ss} == {"LOAD-REC"}
    assert len({s["call_id"] for s in ss}) == 25  # each recorded call once
    new = [s for s in stack.srs["ok"].sessions() if s.call_id not in before]
    assert sorted(s.call_id for s in new) == sorted(s["rs_call_id"] for s in ss)
    assert all(s.bye_from == "src" and not errors(s.metadata_findings) for s in new)
    # teardown frees everything with the shipped delete-delay (2 s here): a SIPREC call
    # that was unsubscribed after the edge's delete would stay in rtpengine for good
    calls = {s["call_id"] for s in ss}
    with NgClient(("127.0.0.1", stack.site.media.nodes[0].ng.port)) as ng:
        wait(lambda: not calls & set(ng.list_calls(1000)), stack.site.media.delete_delay + 3,
             "rtpengine to free every recorded call")


def test_hold_and_resume_send_partial_metadata(stack: LabStack) -> None:
    call = lab_call(stack, **{"X-Customer-Id": "HOLD-1"})
    try:
        sess = established(stack, call.call_id)
        srs = stack.srs["ok"]
        call.hold()
        wait(lambda: len(srs_session(srs, sess["rs_call_id"]).reinvites) >= 1, 5,
             "the hold update at the SRS")
        call.resume()
        s = wait(lambda: (x := srs_session(srs, sess["rs_call_id"])) and
                 len(x.reinvites) >= 2 and x, 5, "the resume update at the SRS")
        assert [r["datamode"] for r in s.reinvites[:2]] == ["partial", "partial"]
        assert all(r["had_metadata"] for r in s.reinvites[:2])
        assert errors(s.metadata_findings) == []
    finally:
        call.bye()
        call.close()


def test_identity_survives_any_characters(stack: LabStack) -> None:
    """A display name with quotes, a backslash, non-ASCII and a control character, a PAI
    with non-ASCII, a metadata header with the metadata separators and a stray %: the SRS's
    RFC 7865 metadata names the caller (never sip:unknown@invalid) and rtpengine's metadata
    file keeps every value, recoverable byte for byte."""
    display = 'Zoë "Z" \\ O\x01K'
    customer = "a|b:c %41 ü"
    call = LabCall(stack.sip, stack.callee, display=display,  # type: ignore[attr-defined]
                   headers={"X-Customer-Id": customer,
                            "P-Asserted-Identity": '"Zoë PAI" <sip:+4930123@pai.example>'})
    call.start()
    try:
        sess = established(stack, call.call_id)
        s = wait(lambda: (x := srs_session(stack.srs["ok"], sess["rs_call_id"])) and
                 x.labels and all(st.participants for st in x.labels.values()) and x, 5,
                 "the SRS's view of the participants")
        people = {(p["name"], p["aor"]) for st in s.labels.values() for p in st.participants}
        assert ("Zoë PAI", "sip:+4930123@pai.example") in people, people  # PAI wins for caller
        assert not any("unknown@invalid" in (a or "") for _, a in people)
        assert errors(s.metadata_findings) == []
        assert sess["call"]["headers"]["X-Customer-Id"] == "a|b:c %2541 ü"  # % itself is %25
        assert original_bytes(sess["call"]["headers"]["X-Customer-Id"]) == customer.encode()
        assert original_bytes(sess["call"]["from_display"]) == display.encode()
    finally:
        call.bye()
        call.close()
    meta_dir = stack.rec_dirs["rtp1"] / "metadata"
    prefix = urllib.parse.quote(call.call_id, safe="")
    meta = wait(lambda: next(iter(meta_dir.glob(f"*{prefix}*")), None), 10,
                "rtpengine's metadata file")
    values = decode_metadata(parse_pcap_metafile(meta.read_bytes()).metadata)
    assert original_bytes(values["x-customer-id"]) == customer.encode()
    assert values["from"].startswith("sip:caller@127.0.0.1")
    assert original_bytes(values["from-name"]) == display.encode()


def test_one_invite_transaction_at_a_time_with_a_slow_srs(stack: LabStack) -> None:
    """The SRS answers re-INVITEs 0.8 s late: hold, resume, hold, resume within 0.3 s must
    not overlap INVITE transactions (RFC 3261 §14.1 — the SRS would answer 500, finding
    S07); the three changes made while the first re-INVITE is pending are coalesced into
    one update with the latest state (not held)."""
    call = lab_call(stack, **{"X-Srs": "slow"})
    try:
        sess = established(stack, call.call_id)
        srs = stack.srs["slow"]
        for step in (call.hold, call.resume, call.hold, call.resume):
            step()
            time.sleep(0.05)
        s = wait(lambda: (x := srs_session(srs, sess["rs_call_id"])) and
                 len(x.reinvites) >= 2 and x, 6, "the updates at the slow SRS")
        time.sleep(1.0)  # a third re-INVITE, had there been one, would have arrived
        s = srs_session(srs, sess["rs_call_id"])
        assert [f.rule for f in s.sip_findings if f.rule == "S07"] == []
        assert len(s.reinvites) == 2, s.reinvites  # the hold, then the coalesced state
        assert s.reinvites[1]["at"] - s.reinvites[0]["at"] >= 0.7  # strictly one after the other
        # the latest state: nobody held (both streams have their sender again)
        assert sorted(len(st.participants) for st in s.labels.values()) == [1, 1]
        assert errors(s.metadata_findings) == []
    finally:
        call.bye()
        call.close()


def test_pause_and_resume(stack: LabStack) -> None:
    call = lab_call(stack, **{"X-Customer-Id": "PAUSE-1"})
    try:
        sess = established(stack, call.call_id)
        srs = stack.srs["ok"]
        time.sleep(0.5)
        paused = stack.api("POST", f"/calls/{call.call_id}/pause")
        assert paused.get("state") == "paused", paused
        assert stack.api("POST", f"/calls/{call.call_id}/pause")["status"] == 409
        s = srs_session(srs, sess["rs_call_id"])
        assert {st.direction for st in s.labels.values()} == {"inactive"}
        count = {k: st.packets for k, st in s.labels.items()}
        heard = call.callee_rtp.received
        time.sleep(1.0)  # the phones keep sending, and keep hearing each other
        assert call.callee_rtp.received > heard + 20, "the pause blocked the call's own media"
        s = srs_session(srs, sess["rs_call_id"])
        assert {k: st.packets for k, st in s.labels.items()} == count, "RTP leaked during pause"
        assert all(st.packets_while_inactive == 0 for st in s.labels.values()), \
            [(st.packets_while_inactive, st.packets) for st in s.labels.values()]
        resumed = stack.api("POST", f"/calls/{call.call_id}/resume")
        assert resumed.get("state") == "established", resumed
        time.sleep(1.0)
        s = srs_session(srs, sess["rs_call_id"])
        assert {st.direction for st in s.labels.values()} == {"recvonly"}
        assert all(st.packets > count[k] + 20 for k, st in s.labels.items()), "no RTP after resume"
    finally:
        call.bye()
        call.close()


def test_srs_503_fails_over_to_the_next(stack: LabStack) -> None:
    call = lab_call(stack, **{"X-Srs": "reject"})
    try:
        sess = established(stack, call.call_id)
        assert sess["srs"].endswith(f":{stack.srs['ok2'].port}")
        assert any("503" in (h["detail"] or "") for h in sess["history"]), [h["detail"] for h in sess["history"]]
        assert any(s.final_status == 503 for s in stack.srs["reject"].sessions())
        assert stack.metrics()['siprecctl_srs_failovers_total{group="g-reject"}'] >= 1
    finally:
        call.bye()
        call.close()


def test_silent_srs_fails_over_after_the_timeout(stack: LabStack) -> None:
    t0 = time.monotonic()
    call = lab_call(stack, **{"X-Srs": "silent"})
    try:
        sess = established(stack, call.call_id)
        assert time.monotonic() - t0 >= 1.0  # the group's timeout
        assert sess["srs"].endswith(f":{stack.srs['ok2'].port}")
        assert any("no answer" in (h["detail"] or "") for h in sess["history"])
        assert any(s.ignored for s in stack.srs["silent"].sessions())
    finally:
        call.bye()
        call.close()


def test_late_srs_is_cancelled_and_its_487_acked(stack: LabStack) -> None:
    """An SRS that rings past the group's 1-s timeout: the controller CANCELs its INVITE
    (the edge's evapi ``cancel``) and fails over. The SRS's 487 is ACKed by the edge's tm:
    the INVITE's transaction lived on. (Kamailio 5.6's ``tm.cancel`` RPC, used before,
    leaves the xhttp worker holding it, which then releases it — "script writer didn't
    release transaction" — and no ACK follows; kamailio#4011, fixed in 6.0.)"""
    call = lab_call(stack, **{"X-Srs": "late"})
    try:
        sess = established(stack, call.call_id)
        assert sess["srs"].endswith(f":{stack.srs['ok2'].port}")
        assert any("no answer" in (h["detail"] or "") for h in sess["history"])
        def cancelled() -> list[SrsSession]:  # fresh copies at each poll
            return [s for s in stack.srs["late"].sessions() if s.final_status == 487]

        wait(cancelled, 5, "the late SRS's 487")
        wait(lambda: all(s.acked_at for s in cancelled()), 5, "the edge's ACK of the 487")
        ini = stack.workdir / "configs" / "kamailio" / "edge1" / "kamcli.ini"
        with KamailioClient(KamcliTransport(ini)) as rpc:
            created = int(rpc.call("tm.stats")["created"])  # the cancelled INVITE's included
    finally:
        call.bye()
        call.close()
    kam = next(d for d in stack.daemons if isinstance(d, Kamailio))
    log = kam.log_path.read_text(errors="replace")
    assert "didn't release transaction" not in log
    assert "still linked in hash table" not in log
    # ... and the cancelled INVITE's transaction is freed after tm's wait timer (5 s), not
    # kept referenced by the cancel (a cell freed late counts in tm's delayed_free)
    with KamailioClient(KamcliTransport(ini)) as rpc:
        st = wait(lambda: (x := rpc.call("tm.stats"))["freed"] + x["delayed_free"] >= created
                  and x, 15, "the transactions of the cancel's time freed")
    print(f"\nedge tm.stats: {st}")
    assert st["delayed_free"] == 0


def test_required_recording_without_srs_ends_the_call(stack: LabStack) -> None:
    call = LabCall(stack.sip, stack.callee, headers={"X-Srs": "dead"})  # type: ignore[attr-defined]
    call.start()
    try:
        ss = wait(lambda: [s for s in sessions_of(stack, call.call_id) if s["state"] == "failed"],
                  10, "the failed session")
        assert "no SRS took the session" in ss[0]["reason"]
        leg = stack.callee.legs[call.call_id]  # type: ignore[attr-defined]
        wait(lambda: not leg.rtp.sending, 5, "the callee to get a BYE from the edge")
        log = stack.controller_log.read_text()
        assert f"call {call.call_id}: ending the call: recording is required" in log
    finally:
        call.close()


def test_srs_bye_mid_call_closes_and_unsubscribes(stack: LabStack) -> None:
    call = lab_call(stack, **{"X-Srs": "bye"})
    try:
        established(stack, call.call_id)
        ss = wait(lambda: [s for s in sessions_of(stack, call.call_id) if s["state"] == "closed"],
                  5, "the session to close after the SRS's BYE")
        assert ss[0]["reason"] == "the SRS ended the session"
        with NgClient(("127.0.0.1", stack.site.media.nodes[0].ng.port)) as ng:
            info = ng.query(call.call_id)  # the call goes on ...
        assert info.subscribers == []  # ... without the fork
        assert {call.from_tag, call.to_tag} <= set(info.tags)
        assert any(s.bye_from == "srs" and s.bye_status == 200
                   for s in stack.srs["bye"].sessions())
    finally:
        call.bye()
        call.close()


def test_srs_refresh_is_answered_and_recording_continues(stack: LabStack) -> None:
    call = lab_call(stack, **{"X-Srs": "refresh"})
    try:
        sess = established(stack, call.call_id)
        srs = stack.srs["refresh"]
        wait(lambda: any("refresh" in (h["detail"] or "") for h in
                         sessions_of(stack, call.call_id)[0]["history"]), 5,
             "the controller to hear of the refresh")
        # the refresh offered new RTP ports and closed the old ones: the controller must
        # have re-targeted rtpengine's fork, or no packet would arrive any more
        moved = wait(lambda: [h["detail"] for h in sessions_of(stack, call.call_id)[0]["history"]
                              if "SRS media moved" in (h["detail"] or "")], 5,
                     "the controller to follow the SRS's new ports")
        s = srs_session(srs, sess["rs_call_id"])
        assert s.state == "confirmed" and not s.ended
        ports = {st.port for st in s.labels.values()}
        assert len(moved) == 1 and all(f":{p}" in moved[0] for p in ports)
        before = {k: st.packets for k, st in s.labels.items()}
        time.sleep(0.6)
        after = {k: st.packets for k, st in srs_session(srs, sess["rs_call_id"]).labels.items()}
        assert all(after[k] > before[k] + 20 for k in before), (before, after)
    finally:
        call.bye()
        call.close()


def test_snapshot_request_gets_a_complete_snapshot(stack: LabStack) -> None:
    call = lab_call(stack, **{"X-Srs": "snapshot"})
    try:
        sess = established(stack, call.call_id)
        srs = stack.srs["snapshot"]
        s = wait(lambda: (x := srs_session(srs, sess["rs_call_id"])) and
                 x.snapshot_received_after_request and x, 5, "the complete snapshot")
        assert s.snapshot_requests_sent == 1
        assert [m for m, _ in s.metadata_docs].count("complete") == 2
        assert errors(s.metadata_findings) == []
    finally:
        call.bye()
        call.close()


def test_snapshot_during_a_hold_describes_the_hold(stack: LabStack) -> None:
    call = lab_call(stack, **{"X-Srs": "snaphold"})
    try:
        sess = established(stack, call.call_id)
        srs = stack.srs["snaphold"]
        call.hold()  # the caller holds the callee, whose stream then has no sender
        wait(lambda: len(srs_session(srs, sess["rs_call_id"]).reinvites) >= 1, 5,
             "the hold update at the SRS")
        s = wait(lambda: (x := srs_session(srs, sess["rs_call_id"])) and
                 x.snapshot_received_after_request and x, 5, "the complete snapshot")
        # the SRS folds a complete snapshot in by replacing what it knew: had the initial
        # document been sent again, both streams would have a sender again
        assert sorted(len(st.participants) for st in s.labels.values()) == [0, 1]
        assert errors(s.metadata_findings) == []
        history = sessions_of(stack, call.call_id)[0]["history"]
        assert [h["detail"] for h in history if "snapshot" in (h["detail"] or "")] == [
            "complete snapshot requested by the SRS"]
    finally:
        call.bye()
        call.close()


def test_controller_killed_and_restarted_reconciles(stack: LabStack) -> None:
    keep = lab_call(stack, **{"X-Customer-Id": "KILL-KEEP"})
    gone = lab_call(stack, **{"X-Customer-Id": "KILL-GONE"})
    srs = stack.srs["ok"]
    try:
        keep_s = established(stack, keep.call_id)
        gone_s = established(stack, gone.call_id)
        stack.stop_controller(kill=True)
        gone.bye()  # ends while no controller is watching
        stack.start_controller()
        # the ended call's SRS session gets its BYE; no subscription is left behind
        g = wait(lambda: (x := srs_session(srs, gone_s["rs_call_id"])) and x.ended and x, 10,
                 "the orphan SRS session to be closed")
        assert g.bye_from == "src"
        wait(lambda: [s["state"] for s in sessions_of(stack, gone.call_id)] == ["closed"], 5,
             "the orphan session closed in the store once the SRS answered the BYE")
        # the live call: still recorded, by exactly one open session
        keep_all = sessions_of(stack, keep.call_id)
        open_ = [s for s in keep_all if s["state"] == "established"]
        assert len(open_) == 1 and len(keep_all) <= 2
        rs_ids = {s["rs_call_id"] for s in keep_all}
        live = [s for s in srs.sessions() if s.call_id in rs_ids and not s.ended]
        assert len(live) == 1 and live[0].call_id == open_[0]["rs_call_id"]
        before = sum(st.packets for st in live[0].labels.values())
        time.sleep(0.5)
        assert sum(st.packets for st in srs_session(srs, live[0].call_id).labels.values()) > \
            before + 10
        with NgClient(("127.0.0.1", stack.site.media.nodes[0].ng.port)) as ng:
            assert [t.tag for t in ng.query(keep.call_id).subscribers] == \
                [open_[0]["subscription"]]
        assert keep_s["rs_call_id"] in rs_ids
    finally:
        keep.bye()
        keep.close()
        gone.close()


def test_record_cli_uses_the_controller(stack: LabStack) -> None:
    import sys

    call = lab_call(stack, **{"X-Customer-Id": "CLI-1"})
    try:
        established(stack, call.call_id)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "orchestrator.cli", "record", *args,
                                   call.call_id, "--api", stack.api_url, "--site",
                                   str(stack.site_file), "--json"],
                                  capture_output=True, text=True, timeout=60)

        p = cli("pause")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["state"] == "paused"
        p = cli("pause")
        assert p.returncode == 1 and "not allowed in state 'paused'" in p.stderr
        p = cli("resume")
        assert p.returncode == 0 and json.loads(p.stdout)["state"] == "established"
        p = cli("stop")
        assert p.returncode == 0 and json.loads(p.stdout)["session"]["state"] == "closed"
        p = cli("stop")
        assert p.returncode == 1 and "no open recording session" in p.stderr
        p = cli("start")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["session"]["state"] == "established"
        assert [s["state"] for s in sessions_of(stack, call.call_id)] == ["closed", "established"]
    finally:
        call.bye()
        call.close()


def test_edge_restart_reconnects_evapi(stack: LabStack) -> None:
    """Kamailio restarted under the controller: the lost evapi connection shows in the
    metrics, comes back by itself, and calls are recorded again."""
    kam = stack.daemons[-1]
    before = stack.metrics().get('siprecctl_evapi_reconnects_total{edge="edge1"}', 0.0)
    kam.stop()
    wait(lambda: stack.metrics()['siprecctl_evapi_connected{edge="edge1"}'] == 0.0, 5,
         "the controller to notice the lost connection")
    kam.start()
    kam.wait_ready(15)
    wait(lambda: stack.metrics()['siprecctl_evapi_connected{edge="edge1"}'] == 1.0, 15,
         "the evapi connection to come back")
    assert stack.metrics()['siprecctl_evapi_reconnects_total{edge="edge1"}'] >= before + 1
    assert "evapi edge1: connection to" in stack.controller_log.read_text()
    stack.events.close()  # type: ignore[attr-defined]
    events = EventReader.for_edge(stack.site, stack.edge)
    events.start()
    stack.events = events  # type: ignore[attr-defined]
    call = lab_call(stack, **{"X-Customer-Id": "AFTER-RESTART"})
    try:
        established(stack, call.call_id)
    finally:
        call.bye()
        call.close()
