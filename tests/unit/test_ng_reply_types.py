"""NG replies with values of the wrong type: a typed error naming the key (exit 1), never an
AttributeError; a reply without ``created`` shows the call's age as unknown."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.errors import NgProtocolError
from orchestrator.ng import MockTransport, NgClient
from orchestrator.ng.pool import Node, NodePool, NodeState

GOOD_TAG = {"tag": "ft", "medias": [{"streams": [{"stats": {"packets": 5, "bytes": 80}}]}]}

# (case, reply of `query`, the key path the error must name)
QUERY_CASES = [
    ("tags-list", {"tags": [1, 2]}, "'tags' is a list, expected a dictionary"),
    ("tags-string", {"tags": "x"}, "'tags' is a string, expected a dictionary"),
    ("tag-int", {"tags": {"ft": 3}}, "'tags.ft' is an integer, expected a dictionary"),
    ("tag-name-list", {"tags": {"ft": {"tag": ["x"]}}}, "'tags.ft.tag' is a list"),
    ("medias-dict", {"tags": {"ft": {"medias": {"a": 1}}}}, "'tags.ft.medias' is a dictionary"),
    ("media-int", {"tags": {"ft": {"medias": [1]}}}, "'tags.ft.medias[0]' is an integer"),
    ("streams-str", {"tags": {"ft": {"medias": [{"streams": "s"}]}}},
     "'tags.ft.medias[0].streams' is a string"),
    ("stats-list", {"tags": {"ft": {"medias": [{"streams": [{"stats": []}]}]}}},
     "'tags.ft.medias[0].streams[0].stats' is a list"),
    ("packets-word", {"tags": {"ft": {"medias": [{"streams": [{"stats": {"packets": "many"}}]}]}}},
     "'tags.ft.medias[0].streams[0].stats.packets' is a string, expected an integer"),
    ("subscriptions-int", {"tags": {"ft": {"subscriptions": 4}}},
     "'tags.ft.subscriptions' is an integer"),
    ("subscription-entry", {"tags": {"ft": {"subscriptions": ["x"]}}},
     "'tags.ft.subscriptions[0]' is a string"),
    ("created-word", {"created": "yesterday"}, "'created' is a string, expected an integer"),
    ("created-list", {"created": [1]}, "'created' is a list, expected an integer"),
    ("totals-list", {"totals": [1]}, "'totals' is a list"),
    ("rtp-int", {"totals": {"RTP": 7}}, "'totals.RTP' is an integer"),
    ("rtp-packets-str", {"totals": {"RTP": {"packets": "x"}}}, "'totals.RTP.packets' is a string"),
]


def ng(reply: dict[str, Any]) -> NgClient:
    return NgClient(transport=MockTransport(lambda r: {"result": "ok", **reply}))


def pool_of(client: NgClient) -> NodePool:
    """A one-node pool, as ``siprecctl ng`` opens for ``--ng``."""
    return NodePool([Node("rtp1", 0, 1, client, NodeState("rtp1", 0, 1, "udp:127.0.0.1:1"))])


def touch(info: Any) -> None:
    """What `siprecctl ng query` / `calls` read."""
    _ = info.created, info.tags, info.legs, info.subscribers, info.packets


@pytest.mark.parametrize("case,reply,message", QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_query_wrong_type_names_the_key(case: str, reply: dict[str, Any], message: str) -> None:
    with pytest.raises(NgProtocolError) as ei:
        touch(ng(reply).query("c1"))
    assert message in str(ei.value)
    assert str(ei.value).startswith("query reply: ")


SUB_CASES = [
    ("labels-list", {"media-labels": [1]}, "'media-labels' is a list"),
    ("label-str", {"media-labels": {"0": "x"}}, "'media-labels.0' is a string"),
    ("label-index", {"media-labels": {"0": {"tag": "ft", "index": "one"}}},
     "'media-labels.0.index' is a string, expected an integer"),
    ("tag-medias-dict", {"tag-medias": {"a": 1}}, "'tag-medias' is a dictionary"),
    ("tag-medias-entry", {"tag-medias": [[1]]}, "'tag-medias[0]' is a list"),
    ("medias-entry", {"tag-medias": [{"tag": "ft", "medias": [2]}]},
     "'tag-medias[0].medias[0]' is an integer"),
    ("from-tags-str", {"from-tags": "ft"}, "'from-tags' is a string, expected a list"),
    ("from-tags-int", {"from-tags": [1]}, "'from-tags[0]' is an integer"),
    ("sdp-int", {"sdp": 5}, "'sdp' is an integer, expected a string"),
    ("to-tag-dict", {"to-tag": {}}, "'to-tag' is a dictionary"),
]


@pytest.mark.parametrize("case,reply,message", SUB_CASES, ids=[c[0] for c in SUB_CASES])
def test_subscribe_wrong_type_names_the_key(case: str, reply: dict[str, Any],
                                            message: str) -> None:
    with pytest.raises(NgProtocolError, match="subscribe request reply: ") as ei:
        ng(reply).subscribe_request("c1", all=True, siprec=True, to_tag="srs1")
    assert message in str(ei.value)


def test_offer_wrong_types() -> None:
    with pytest.raises(NgProtocolError, match="'sdp' is a list"):
        ng({"sdp": ["x"]}).offer("c1", "ft", b"v=0\r\n")
    with pytest.raises(NgProtocolError, match=r"'recordings\[0\]' is an integer"):
        ng({"sdp": "v=0", "recordings": [3]}).offer("c1", "ft", b"v=0\r\n")


def test_good_reply_still_reads() -> None:
    info = ng({"created": 100, "created_us": 500000, "tags": {"ft": GOOD_TAG},
               "totals": {"RTP": {"packets": 5}}}).query("c1")
    assert info.created == 100.5 and info.packets == 5 and info.tags["ft"].packets == 5


def test_missing_created_is_unknown(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    info = ng({"tags": {"ft": GOOD_TAG}}).query("c1")
    assert info.created is None and info.age(1e9) is None
    assert info.tags["ft"].created is None
    # the CLI prints "unknown", not an age of 1.8 billion seconds
    import orchestrator.commands.ng as cmd

    monkeypatch.setattr(cmd, "open_pool", lambda args, all_nodes=False: pool_of(
        ng({"tags": {"ft": GOOD_TAG}})))
    assert main(["ng", "query", "c1"]) == 0
    out = capsys.readouterr().out
    assert "age unknown" in out


def test_cli_exit_1_for_a_wrong_type(capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.commands.ng as cmd

    monkeypatch.setattr(cmd, "open_pool", lambda args, all_nodes=False: pool_of(
        ng({"tags": [1, 2]})))
    assert main(["ng", "query", "c1"]) == 1
    err = capsys.readouterr().err
    assert "query reply: 'tags' is a list, expected a dictionary" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("encoding", ["json", "bencode"])
def test_counters_equal_the_tags_packets_and_octets(encoding: str) -> None:
    reply = {"tags": {"ft": GOOD_TAG, "tt": GOOD_TAG}}
    client = NgClient(transport=MockTransport(lambda r: {"result": "ok", **reply}),
                      encoding=encoding)
    info = client.query("c1")
    assert info.counters() == {t: (i.packets, i.octets) for t, i in info.tags.items()}
    bad = NgClient(transport=MockTransport(lambda r: {"result": "ok", "tags": {"ft": {
        "medias": [{"streams": [{"stats": {"packets": "x", "bytes": 1}}]}]}}}))
    with pytest.raises(NgProtocolError, match="tags.ft.medias"):
        bad.query("c1").counters()
