"""The controller's Redis store and lease against a real redis-server (Debian's 7.0): the same
behaviour as the SQLite store (one contract, both stores), fenced writes, and a lease that
passes to the standby when the leader stops renewing — and never to two at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.controller.dialog import RsDialog
from orchestrator.controller.leader import Leadership
from orchestrator.controller.messages import CallRecord, Loss
from orchestrator.controller.redis_store import Fence, FencedOut, RedisStore
from orchestrator.controller.session import Ev, RecordingSession
from orchestrator.controller.store import DuplicateSession, SessionStore
from orchestrator.daemons import RedisServer, free_port
from orchestrator.render import ensure_secrets, render_site, write
from orchestrator.site import load
from orchestrator.site.loader import validate_data
from orchestrator.site.secrets import load_secret
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
PASSWORD = ""  # set by the redis_server fixture (rendered, random)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """redis-server from the config ``siprecctl render`` writes for a site with a ``redis``
    section (the lab site plus one), with the password ``render`` generated."""
    global PASSWORD
    work = tmp_path_factory.mktemp("redis")
    port = free_port("tcp")
    data = load().model_dump(mode="json", exclude_none=True)
    data["security"] = {"secrets_dir": str(work / "secrets")}
    data["redis"] = {"address": "127.0.0.1", "port": port}
    site = validate_data(data, file="<redis site>")
    write(work / "etc", render_site(site), site=site)
    ensure_secrets(site)
    PASSWORD = load_secret(site.redis_auth_file)
    server = RedisServer(work / "etc" / "redis" / "redis.conf", work / "redis",
                         address="127.0.0.1", port=port, password=PASSWORD)
    with server.started(10):
        yield port


def client(port: int) -> redis.Redis:
    return redis.Redis(port=port, password=PASSWORD, socket_timeout=1.0)


def leading_store(port: int, site: str, instance: str = "a") -> tuple[RedisStore, Leadership]:
    c = client(port)
    fence = Fence(instance)
    lead = Leadership(c, f"siprecctl:{site}:", instance, ttl=1.0, margin=0.3)
    assert lead.tick() == (True, True)
    fence.epoch = lead.epoch
    return RedisStore(c, site, fence), lead


def _session(sid: str = "s1", slot: int = 0) -> RecordingSession:
    return RecordingSession(session_id=sid, call_id="c1", edge="e", node="n", group="g",
                            slot=slot, sub_to_tag="srs-1", created=time.time())


def make(kind: str, port: int, tmp: Path, site: str) -> Any:
    if kind == "sqlite":
        return SessionStore(tmp / "s.sqlite")
    return leading_store(port, site)[0]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_one_contract_for_both_stores(kind: str, redis_server: int, tmp_path: Path) -> None:
    store = make(kind, redis_server, tmp_path, f"contract-{kind}-{time.time_ns()}")
    s = _session()
    s.handle(Ev.SUBSCRIBE, "on n", 1.0)
    s.dialog = RsDialog(call_id="siprec-1", local_uri="sip:siprec-src@127.0.0.1",
                        remote_uri="sip:srs@127.0.0.1:5090",
                        contact="sip:siprec-src@127.0.0.1:5060")
    s.metadata, s.call = b"<recording/>", {"from": "sip:a@x"}
    call = CallRecord("c1", "e", "n", 10.0, "g", 1, "yes", "default", True, received_at=10.1)
    store.write(sessions=[s], calls=[call], losses=[Loss("c1", "s1", 0, "no_srs", 1.5, "x", 11.0)],
                media=[("c1", "s1", 12.0, "call end", "caller", "ft", 100, 17200)])
    s.note("hello", 2.0)
    store.save(s)  # only the new history entry goes out
    again = store.get("s1")
    assert again is not None and again.dialog == s.dialog and again.metadata == s.metadata
    assert [h[3] for h in again.history] == ["subscribe", "note"]
    assert store.by_rs_call_id("siprec-1").session_id == "s1"
    assert [x.session_id for x in store.open_sessions()] == ["s1"]
    assert [x.session_id for x in store.for_call("c1")] == ["s1"]
    assert store.call("c1")["required"] == "yes" and len(store.calls(0, None)) == 1
    assert [(x["reason"], x["seconds"]) for x in store.losses(call_id="c1")] == [("no_srs", 1.5)]
    assert store.loss_counts() == {"no_srs": 1}
    assert [m["packets"] for m in store.media("c1")] == [100]
    dup = _session("s2")
    with pytest.raises(DuplicateSession):
        store.save(dup)  # one open session per call and slot
    store.save(_session("s3", slot=1))  # another slot may have its own
    s.handle(Ev.ERROR, "broke", 3.0)
    store.save(s)
    store.save(dup)  # the first is over: a new one may open in its slot
    assert sorted(x.session_id for x in store.open_sessions()) == ["s2", "s3"]
    assert store.count_by_state() == {"failed": 1, "new": 2}
    # one batch that ends a slot's session and opens its successor (an adopted set-up torn
    # down and redone after a takeover), whatever the order in the batch
    for first_new in (True, False):
        old = dup if first_new else store.get("s4")
        assert old is not None
        new = _session("s4" if first_new else "s5")
        old.handle(Ev.STOP, "set-up interrupted by a controller restart", 4.0)
        store.write(sessions=[new, old] if first_new else [old, new])
        assert sorted(x.session_id for x in store.open_sessions()) == sorted(
            ["s3", new.session_id])
    store.close()


def test_writes_are_fenced_by_the_lease(redis_server: int) -> None:
    site = f"fence-{time.time_ns()}"
    store_a, lead_a = leading_store(redis_server, site, "a")
    store_a.save(_session("s1"))
    # b cannot take the lease while a renews it
    c = client(redis_server)
    fence_b = Fence("b")
    lead_b = Leadership(c, f"siprecctl:{site}:", "b", ttl=1.0, margin=0.3)
    store_b = RedisStore(c, site, fence_b)
    assert lead_b.tick() == (False, False)
    with pytest.raises(FencedOut):
        store_b.save(_session("s2", slot=1))  # a standby never writes
    # a is paused (no renewals): the lease passes to b, with a higher epoch
    t0 = time.monotonic()
    wait_for(lambda: lead_b.tick()[0], 3, "b to take the lease")
    took = time.monotonic() - t0
    assert took <= 1.0 + 2 * lead_b.interval, took
    fence_b.epoch = lead_b.epoch
    assert lead_b.epoch == lead_a.epoch + 1  # type: ignore[operator]
    assert not lead_a.valid()  # a knows by its own clock before anyone else could act
    store_b.save(_session("s2", slot=1))
    with pytest.raises(FencedOut):  # a's late write (it still believes its old epoch)
        store_a.save(_session("s3", slot=2))
    assert lead_a.tick() == (False, True)  # a notices, and stays out
    assert lead_b.holder() == "b"
    lead_b.release()
    assert lead_b.holder() is None


def test_two_instances_never_lead_at_once(redis_server: int) -> None:
    site = f"race-{time.time_ns()}"
    leads = [Leadership(client(redis_server), f"siprecctl:{site}:", n, ttl=0.6, margin=0.2)
             for n in ("a", "b", "c")]
    both = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        acting = [x for x in leads if x.tick()[0] and x.valid()]
        both += len(acting) > 1
        time.sleep(0.02)
    assert both == 0
    assert sum(x.valid() for x in leads) == 1
