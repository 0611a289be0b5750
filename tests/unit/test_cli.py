"""The one top-level error handler: usage errors (one class in the exception tree) exit 2,
named after the command; nothing else prints them."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from orchestrator.errors import SiprecctlError, UsageError


def test_usage_error_is_in_the_tree_with_exit_2() -> None:
    assert issubclass(UsageError, SiprecctlError) and UsageError.exit_code == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["ng", "ping", "--ng", "no-port"], "siprecctl ng: --ng: expected HOST:PORT"),
    (["ng", "query", "c1", "--ng", "127.0.0.1:9", "--site", "lab"],
     "siprecctl ng: --ng talks to one rtpengine"),
    (["ng", "ping", "--ng", "127.0.0.1:9", "--transport", "tcp", "--encoding", "json"],
     "siprecctl ng: TCP-NG carries bencode only"),
    (["ng", "stats", "--node", "nope"], "siprecctl ng: --node: no media node 'nope'"),
    (["record", "start", "c1", "--direct", "--metadata", ""],
     "siprecctl record: --metadata must not be empty"),
    (["calls", "--ng", "127.0.0.1"], "siprecctl calls: --ng: expected HOST:PORT"),
    (["edge", "status", "--jsonrpc", "http://127.0.0.1:9/RPC", "--kamcli", "k.ini"],
     "siprecctl edge: --jsonrpc and --kamcli are alternatives"),
    (["edge", "status", "--edge", "nope"], "siprecctl edge: --edge: no edge 'nope'"),
    (["edge", "rtpengine", "enable", "nope"], "siprecctl edge: unknown media node 'nope'"),
])
def test_usage_errors_exit_2(argv: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith(message), err
    assert out == "" and err.count("\n") == 1
