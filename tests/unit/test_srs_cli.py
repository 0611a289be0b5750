"""``siprecctl srs``: usage errors (exit 2), a bounded run that reports ended sessions."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.daemons import free_port


@pytest.mark.parametrize(("argv", "message"), [
    (["--listen", "example.com:5090"], "expected an IPv4 address"),
    (["--listen", "127.0.0.1:0"], "port must be 1-65535"),
    (["--listen", "8.8.8.8:5090"], "not a loopback or private address"),
    (["--listen", "0.0.0.0:5090"], "not a loopback or private address"),
    (["--transport", "udp,sctp"], "--transport"),
    (["--rtp-ports", "5000"], "--rtp-ports"),
    (["--rtp-ports", "6000-5000"], "--rtp-ports"),
    (["--reject", "200"], "reject"),
    (["--answer-delay", "-1"], "answer_delay"),
    (["--name", "a/b"], "name"),
])
def test_usage_errors_exit_2(argv: list[str], message: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["srs", "--dir", str(tmp_path), "--run-for", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("siprecctl srs: ")


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["srs", "--bye-after", "soon"])
    assert exc.value.code == 2


def test_port_in_use_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert main(["srs", "--listen", f"127.0.0.1:{port}", "--transport", "udp",
                     "--dir", str(tmp_path), "--run-for", "0"]) == 1
    assert "cannot bind" in capsys.readouterr().err


@pytest.mark.parametrize("as_json", [False, True])
def test_run_reports_each_ended_session(as_json: bool, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    base = free_port() & ~1
    invite = (f"INVITE sip:srs@127.0.0.1:{port} SIP/2.0\r\n"
              "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKcli1;rport\r\n"
              "From: <sip:src@127.0.0.1>;tag=f1\r\nTo: <sip:srs@127.0.0.1>\r\n"
              "Call-ID: cli-call-1\r\nCSeq: 1 INVITE\r\nRequire: siprec\r\n"
              "Contact: <sip:src@127.0.0.1:9>;+sip.src\r\nContent-Length: 0\r\n\r\n").encode()
    replies: list[bytes] = []

    def src() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.05)
            for _ in range(40):  # resend until the server is up (an unbound port drops it)
                s.sendto(invite, ("127.0.0.1", port))
                try:
                    replies.append(s.recv(65535))
                    return
                except TimeoutError:
                    continue

    t = threading.Thread(target=src)
    t.start()
    argv = ["srs", "--listen", f"127.0.0.1:{port}", "--dir", str(tmp_path), "--rtp-ports",
            f"{base}-{base + 9}", "--reject", "486", "--run-for", "0.4"]
    assert main(argv + (["--json"] if as_json else [])) == 0
    t.join()
    out, err = capsys.readouterr()
    assert "listening on sip:srs@127.0.0.1:" in err
    assert replies and replies[0].startswith(b"SIP/2.0 100")
    lines = out.splitlines()
    assert len(lines) == 1, out
    if as_json:
        record = json.loads(lines[0])
        assert (record["call_id"], record["state"], record["final_status"]) == \
            ("cli-call-1", "rejected", 486)
    else:
        assert " rejected status=486 " in lines[0] and "call-id=cli-call-1" in lines[0]
