"""Kamailio RPC client: reply parsing and parameter encoding (no Kamailio here)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import KamailioError, KamailioRpcError, KamailioUnreachable
from orchestrator.kamailio import KamailioClient, KamcliTransport, RpcTransport, RtpengineNode
from orchestrator.kamailio.rpc import _result


class Canned(RpcTransport):
    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.calls: list[tuple[str, list[Any], float]] = []

    def call(self, method: str, params: list[Any], timeout: float) -> Any:
        self.calls.append((method, params, timeout))
        return _result(self.replies[method], method)


def test_result_shapes() -> None:
    assert _result({"jsonrpc": "2.0", "result": 5, "id": 1}, "m") == 5
    with pytest.raises(KamailioRpcError) as ei:
        _result({"error": {"code": 500, "message": "Method Not Found"}}, "x.y")
    assert (ei.value.code, ei.value.rpc_message, ei.value.method) == (500, "Method Not Found",
                                                                      "x.y")
    with pytest.raises(KamailioUnreachable):
        _result({"jsonrpc": "2.0", "id": 1}, "m")
    with pytest.raises(KamailioUnreachable):
        _result([1], "m")


def test_rtpengine_show_states() -> None:
    ok = RtpengineNode.from_raw({"url": "udp:127.0.0.1:2223", "set": 0, "index": 0,
                                 "weight": 1, "disabled": 0, "recheck_ticks": 0})
    failed = RtpengineNode.from_raw({"url": "u", "disabled": 1, "recheck_ticks": 49})
    admin = RtpengineNode.from_raw({"url": "u", "disabled": "1(permanent)",
                                    "recheck_ticks": "N/A"})
    assert ok.state == "enabled" and not ok.disabled
    assert failed.state == "disabled (failed)" and failed.recheck_ticks == 49
    assert admin.state == "disabled (admin)" and admin.recheck_ticks is None


def test_enable_sends_an_integer_flag() -> None:
    t = Canned({"rtpengine.enable": {"result": {"url": "all", "status": "enable"}}})
    kam = KamailioClient(t, timeout=3)
    assert kam.rtpengine_enable("all", True) == "enable"
    kam.rtpengine_enable("all", False)
    assert [c[1] for c in t.calls] == [["all", 1], ["all", 0]]  # ints, never "1"
    assert t.calls[0][2] == 3  # default timeout on every call


def test_client_helpers() -> None:
    t = Canned({"core.version": {"result": "kamailio 5.6.3 (x86_64/linux) "},
                "core.uptime": {"result": {"now": "x", "up_since": "y", "uptime": 42}},
                "dlg.stats_active": {"result": {"starting": 0, "connecting": 0,
                                                "answering": 0, "ongoing": 2, "all": 2}}})
    kam = KamailioClient(t)
    assert kam.version() == "kamailio 5.6.3 (x86_64/linux)"
    assert kam.uptime() == 42
    assert kam.active_dialogs()["ongoing"] == 2


def test_kamcli_argument_encoding() -> None:
    assert KamcliTransport._arg(1) == "i:1"
    assert KamcliTransport._arg("all") == "s:all"
    for bad in ('a"b', "a\\b", "a\nb"):
        with pytest.raises(KamailioError):
            KamcliTransport._arg(bad)


def test_kamcli_missing_binary(tmp_path: Any) -> None:
    t = KamcliTransport(tmp_path / "x.ini", kamcli=str(tmp_path / "no-kamcli"))
    with pytest.raises(KamailioUnreachable, match="cannot run kamcli"):
        t.call("core.version", [], 1.0)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        KamailioClient(Canned({}), timeout=0)
