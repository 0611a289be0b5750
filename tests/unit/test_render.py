"""Rendering: golden files, determinism, staleness detection, escaping."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.render import MANIFEST, render_site, stale_diff, write
from orchestrator.render import _kstr as kstr
from orchestrator.render import _rule_condition as rule_condition
from orchestrator.site import load
from orchestrator.site.model import Rule
from tests.conftest import DATA, ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_golden(example: Path) -> None:
    golden = DATA / "golden" / example.stem
    files = render_site(load(example))
    if os.environ.get("SIPRECCTL_UPDATE_GOLDEN"):
        write(golden, files, force=True)  # the golden dir is regenerated whole
    diff = stale_diff(golden, files)
    assert diff == "", f"golden files differ (SIPRECCTL_UPDATE_GOLDEN=1 to update):\n{diff}"
    assert {r.path for r in files} == {
        str(p.relative_to(golden)) for p in golden.rglob("*") if p.is_file()}


def test_committed_lab_configs_are_fresh() -> None:
    diff = stale_diff(ROOT, render_site(load()))
    assert diff == "", f"run: siprecctl render -o .\n{diff}"


def test_deterministic_and_independent_of_yaml_formatting(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "carrier.yaml").read_text()
    reformatted = "# another comment\n" + text.replace("{proto: udp,", "{ proto: udp ,")
    a = render_site(load(ROOT / "examples" / "carrier.yaml"))
    (tmp_path / "c.yaml").write_text(reformatted)
    b = render_site(load(tmp_path / "c.yaml"))
    assert [(r.path, r.content) for r in a] == [(r.path, r.content) for r in b]


def test_layout_per_edge_and_node() -> None:
    paths = [r.path for r in render_site(load(ROOT / "examples" / "carrier.yaml"))]
    assert paths == [
        "kamailio/edge-a/kamailio.cfg", "kamailio/edge-a/kamcli.ini",
        "kamailio/edge-b/kamailio.cfg", "kamailio/edge-b/kamcli.ini",
        "rtpengine/rtp-a1/rtpengine.conf", "rtpengine/rtp-a2/rtpengine.conf",
        "rtpengine/rtp-b1/rtpengine.conf", "redis/redis.conf",
        "systemd/siprecctl-kamailio-edge-a.service", "systemd/siprecctl-kamailio-edge-b.service",
        "systemd/siprecctl-rtpengine-rtp-a1.service", "systemd/siprecctl-rtpengine-rtp-a2.service",
        "systemd/siprecctl-rtpengine-rtp-b1.service", "systemd/siprecctl-controller.service",
        MANIFEST]


def test_render_check_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["render", "-o", str(out), "--check"]) == 1  # nothing there yet
    assert not out.exists(), "--check must write nothing"
    assert main(["render", "-o", str(out)]) == 0
    assert main(["render", "-o", str(out), "--check"]) == 0
    cfg = out / "kamailio" / "edge1" / "kamailio.cfg"
    cfg.write_text(cfg.read_text().replace("children=4", "children=5"))
    capsys.readouterr()
    assert main(["render", "-o", str(out), "--check"]) == 1
    diff = capsys.readouterr().out
    assert "-children=5" in diff and "+children=4" in diff


def test_kamailio_config_content() -> None:
    files = {r.path: r.content for r in render_site(load(ROOT / "examples" / "carrier.yaml"))}
    a = files["kamailio/edge-a/kamailio.cfg"]
    # sets and weights from the site model
    assert ('modparam("rtpengine", "rtpengine_sock", "0 == udp:10.1.0.21:2223=2 '
            'udp:10.1.0.22:2223=1")') in a
    assert 'modparam("rtpengine", "rtpengine_sock", "1 == udp:10.2.0.21:2223=1")' in a
    assert 'modparam("rtpengine", "setid_default", 0)' in a
    # JSON-RPC only for the allowed networks, evapi on the configured private address
    assert 'is_in_subnet("$si", "127.0.0.1/32,10.1.0.0/24")' in a
    assert 'modparam("evapi", "bind_addr", "10.1.0.10:8448")' in a
    # media freed on every path
    for needle in ("failure_route[MANAGE_FAILURE] {\n\t# the initial INVITE failed",
                   'is_method("CANCEL")', "rtpengine_delete();"):
        assert needle in a
    # trunk selection and sampling
    assert 'if ($ru =~ "^sip:(112|911)@") {' in a
    assert "if (($RANDOM mod 100) >= 5) {" in a
    assert "listen=udp:10.1.0.10:5060 advertise 198.51.100.10:5060" in a


def test_rtpengine_config_content() -> None:
    files = {r.path: r.content for r in render_site(load(ROOT / "examples" / "single-box.yaml"))}
    conf = files["rtpengine/rtp/rtpengine.conf"]
    assert "table = -1\n" in conf
    assert "recording-method = pcap\n" in conf
    assert "interface = internal/10.20.0.5;external/10.30.0.5!203.0.113.5\n" in conf
    assert "listen-ng = 127.0.0.1:2223\n" in conf and "port-min = 30000\n" in conf


def test_cfg_string_escaping() -> None:
    assert kstr('a"b\\c') == 'a\\"b\\\\c'
    rule = Rule.model_validate({"name": "r", "match": {"caller": r"^sip:\+44",
                                                      "header": {"name": "X-Q", "pattern": "a|b"},
                                                      "trunk": "t"}})
    assert rule_condition(rule) == (r'$fu =~ "^sip:\\+44" && (is_present_hf("X-Q") && '
                                    r'$hdr(X-Q) =~ "a|b") && $avp(trunk) == "t"')
    assert rule_condition(Rule.model_validate({"name": "all"})) == "1 == 1"


ENC = "{s.urlencode.param}{s.replace,+,%20}"
# values that go into events unencoded: config literals, Kamailio's own, and the call's
# identifiers, which route[IDCHECK] holds to printable ASCII tokens
RAW_OK = {"$var(evname)", "$dlg(callid)", "$ci", "$TV(Sn)", "$rm", "$ft", "$tt",
          "$var(rsci)", "$var(method)", "rs_error", "rs_request", "rs_reply", "caller",
          "callee", "edge", "$dlg_var(from_tag)", "$dlg_var(to_tag)", "$dlg_var(trunk)",
          "$dlg_var(rtpengine)", "$dlg_var(rule)", "$dlg_var(siprec)",
          # the evapi authentication replies (no SIP-derived value in them)
          "auth", "ok", "refused", "observer",
          "another controller of this site is connected to edge {edge} "
          "(from $sht(evc=>owner0_addr))"}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_sip_values_reach_events_and_metadata_encoded(example: Path) -> None:
    """Every value taken from a SIP message goes into the evapi JSON and rtpengine's
    metadata percent-encoded (jansson drops a value that is not UTF-8; rtpengine splits its
    flags on spaces): checked on the rendered text, so a new field cannot slip past."""
    site = load(example)
    for r in render_site(site):
        if r.kind != "kamailio":
            continue
        cfg = r.content
        assert "{s.escape.param}" not in cfg  # fails on any byte outside printable ASCII
        encoded_vars = set()
        for name, rhs in re.findall(r"\$dlg_var\((\w+)\) = (.+);", cfg):
            if ENC in rhs or rhs == "$var(dn)":
                encoded_vars.add(name)
        display = cfg[cfg.index("route[DISPLAY] {"):]
        assert f"$var(dn) = $(var(dn){ENC});" in display[:display.index("\n}\n")]
        values = re.findall(r'jansson_(?:set|append)\("string", "[^"]+", "([^"]*)"', cfg)
        assert len(values) > 30
        for v in values:
            m = re.fullmatch(r"\$dlg_var\((\w+)\)", v)
            raw_ok = RAW_OK | {x.replace("{edge}", e.name) for x in RAW_OK for e in site.edges}
            ok = (ENC in v or v in raw_ok or v in {e.name for e in site.edges}
                  or (m is not None and m.group(1) in encoded_vars)
                  or v.startswith("body of $(rb{s.len}) bytes"))
            assert ok, f"{r.path}: {v!r} reaches an event unencoded"
        meta = re.findall(r"\$var\(meta\) = (.+);", cfg)
        assert meta
        for line in meta:
            for ref in re.findall(r"\$dlg_var\((\w+)\)", line):
                assert ref in encoded_vars or ref == "rule", (r.path, line)
            assert "$ci" not in line and "$fu" not in line and "$hdr(" not in line
        assert f"$(ci{ENC})" in meta[0]
        for h in ["From", "To", "P-Asserted-Identity", "Session-ID",
                  *site.recording.metadata_headers]:
            assert f'send_reply("400", "{h} Too Long");' in cfg
        assert '$ci =~ "[^!-~]"' in cfg and '$ft =~ "[^!-~]"' in cfg


def test_dialog_handling_for_uas_that_ignore_record_route() -> None:
    cfg = next(r.content for r in render_site(load()) if r.kind == "kamailio")
    known = cfg[cfg.index("\tif (is_known_dlg()) {"):]
    assert known.split("\n")[1].strip() == "dlg_manage();"
    # `ended` comes from the dialog module, once per dialog, not from each BYE seen
    assert "event_route[dialog:end] {\n\t$var(evname) = \"ended\";\n\troute(EVENT);\n}" in cfg
    assert cfg.count('$var(evname) = "ended";') == 1
    assert "pv_buffer_size=65536\n" in cfg
