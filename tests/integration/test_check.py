"""``siprecctl check`` with the real daemons: every example passes; problems are located."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.render.check import check_kamailio, check_rtpengine_config, check_site
from orchestrator.site import load
from tests.conftest import ROOT, lab_secrets

pytestmark = pytest.mark.integration

SITES = [None] + sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("site", SITES, ids=["lab"] + [p.stem for p in SITES[1:]])
def test_check_passes_with_smoke_start(site) -> None:
    s = load(site)
    findings = check_site(s)
    assert all(f.ok for f in findings), "\n".join(f.format() for f in findings)
    steps = [(f.step, f.target) for f in findings]
    for e in s.edges:
        assert ("kamailio-c", e.name) in steps and ("smoke-kamailio", e.name) in steps
    for n in s.media.nodes:
        assert ("rtpengine-config", n.name) in steps and ("smoke-rtpengine", n.name) in steps


def test_kamailio_syntax_error_is_located(tmp_path: Path) -> None:
    cfg = tmp_path / "kamailio.cfg"
    lines = lab_secrets(tmp_path, (ROOT / "kamailio/edge1/kamailio.cfg").read_text())[0] \
        .splitlines()
    idx = next(i for i, ln in enumerate(lines) if ln.startswith("route[RELAY]"))
    lines.insert(idx + 1, "\tno_such_function();")
    cfg.write_text("\n".join(lines) + "\n")
    findings = check_kamailio(cfg, "edge1")
    bad = [f for f in findings if not f.ok]
    assert bad and all(f.step == "kamailio-c" for f in bad)
    located = [f for f in bad if f.line is not None]
    assert located and located[0].file == str(cfg) and located[0].line == idx + 2
    assert "no_such_function" in " ".join(f.message for f in bad)


def test_rtpengine_bad_option_is_reported(tmp_path: Path) -> None:
    conf = tmp_path / "rtpengine.conf"
    conf.write_text((ROOT / "rtpengine/rtp1/rtpengine.conf").read_text()
                    .replace("port-min = 30000", "port-min = many"))
    f = check_rtpengine_config(conf, "rtp1")
    assert not f.ok and f.file == str(conf) and "rejected" in f.message


def test_smoke_start_reports_a_port_in_use(tmp_path: Path) -> None:
    """Kamailio -c passes a config whose socket cannot be bound; the smoke start catches it."""
    import socket

    from orchestrator.daemons import Kamailio
    from orchestrator.errors import LabError

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        cfg = tmp_path / "kamailio.cfg"
        cfg.write_text(lab_secrets(tmp_path, (ROOT / "kamailio/edge1/kamailio.cfg")
                                   .read_text())[0]
                       .replace("listen=udp:127.0.0.1:5060", f"listen=udp:127.0.0.1:{port}")
                       .replace("5071", "15071").replace("8448", "18448"))
        assert check_kamailio(cfg, "edge1")[0].ok  # kamailio -c does not bind
        kam = Kamailio(cfg, tmp_path / "k", ready_tcp=("127.0.0.1", 15071))
        with pytest.raises(LabError, match="exited with status"), kam.started(timeout=10):
            pass


def test_check_cli_json(capsys) -> None:
    import json

    assert main(["check", str(ROOT / "examples" / "single-box.yaml"), "--no-smoke",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert {f["step"] for f in out["findings"]} == {"kamailio-c", "rtpengine-config"}
    assert out["findings"][0]["file"] == "kamailio/edge/kamailio.cfg"


def _tls_site(tmp_path: Path, cert: str) -> Path:
    text = (ROOT / "orchestrator/site/embedded/lab.yaml").read_text().replace(
        "      - {proto: tcp, address: 127.0.0.1, port: 5060}\n",
        "      - {proto: tcp, address: 127.0.0.1, port: 5060}\n"
        "      - {proto: tls, address: 127.0.0.1, port: 5061}\n"
        f"    tls: {{certificate: {cert}, private_key: {tmp_path / 'key.pem'}}}\n")
    site = tmp_path / "tls.yaml"
    site.write_text(text)
    return site


def test_tls_listener_checked(tmp_path: Path) -> None:
    import subprocess

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-days", "2",
                    "-subj", "/CN=edge.test"], check=True, capture_output=True)
    findings = check_site(load(_tls_site(tmp_path, str(tmp_path / "cert.pem"))))
    assert all(f.ok for f in findings), "\n".join(f.format() for f in findings)
    smoke = next(f for f in findings if f.step == "smoke-kamailio")
    assert "3/3 SIP listeners answer" in smoke.message

    # a certificate that is not there passes kamailio -c but not the smoke start
    findings = check_site(load(_tls_site(tmp_path, str(tmp_path / "missing.pem"))))
    bad = [f for f in findings if not f.ok]
    assert [f.step for f in bad] == ["smoke-kamailio"]
    assert "Unable to load certificate file" in bad[0].message
