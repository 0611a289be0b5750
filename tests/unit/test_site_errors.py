"""Malformed site files: each gives the documented located error and a non-zero exit."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from orchestrator.errors import SiteError
from orchestrator.site import load, load_text
from orchestrator.site.loader import embedded_text

BASE = embedded_text("lab")


def variant(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


# (case id, site text, exact error message)
CASES = [
    ("port-order",
     variant("port_min: 30000, port_max: 30999", "port_min: 40000, port_max: 30000"),
     "site.yaml:27 media.nodes[0].ports: port_min 40000 must be below port_max 30000"),
    ("unknown-key",
     variant("  delete_delay: 2\n", "  delete_delay: 2\n  colour: blue\n"),
     "site.yaml:20 media.colour: unknown key (expected one of: nodes, recording, "
     "delete_delay, timeouts, ping_interval, ping_failures, redis)"),
    ("bad-type-int",
     variant("delete_delay: 2", "delete_delay: soon"),
     'site.yaml:19 media.delete_delay: expected an integer, got a string "soon"'),
    ("bad-type-bool",
     variant("  default: true", "  default: 3"),
     "site.yaml:29 recording.default: expected a boolean (true/false), got an integer 3"),
    ("bad-type-list",
     variant("domains: [lab.invalid]", "domains: lab.invalid"),
     'site.yaml:10 edges[0].domains: expected a list, got a string "lab.invalid"'),
    ("yaml-syntax",
     variant("delete_delay: 2", "delete_delay: [2"),
     "site.yaml:20: YAML syntax error: expected ',' or ']', but got ':'"),
    ("yaml-duplicate-key",
     variant("  delete_delay: 2\n", "  delete_delay: 2\n  delete_delay: 3\n"),
     "site.yaml:20 media.delete_delay: duplicate key 'delete_delay' (first at line 19)"),
    ("invalid-uri",
     variant("uri: sip:127.0.0.1:5080", "uri: http://127.0.0.1:5080"),
     "site.yaml:13 edges[0].trunks[0].uri: 'http://127.0.0.1:5080' is not a SIP URI "
     "(expected sip:[user@]host[:port][;params])"),
    ("invalid-srs-uri",
     variant('uri: "sip:srs@127.0.0.1:5090"', 'uri: "srs at 127.0.0.1"'),
     "site.yaml:40 recording.srs_groups[0].servers[0].uri: 'srs at 127.0.0.1' is not a SIP "
     "URI (expected sip:[user@]host[:port][;params])"),
    ("unresolved-srs-group",
     variant("siprec: lab-srs", "siprec: nowhere"),
     "site.yaml:31 recording.siprec: unknown SRS group 'nowhere' (defined: lab-srs)"),
    ("unresolved-trunk",
     variant('match: {header: {name: X-Record, pattern: "^no$"}}', "match: {trunk: pstn}"),
     "site.yaml:35 recording.rules[0].match.trunk: unknown trunk 'pstn' (defined: uas)"),
    ("unresolved-media-set",
     variant("evapi: {address: 127.0.0.1, port: 8448}",
             "evapi: {address: 127.0.0.1, port: 8448}\n    media_set: 3"),
     "site.yaml:16 edges[0].media_set: no rtpengine node in set 3 (sets: [0])"),
    ("duplicate-node-name",
     variant("      ports: {port_min: 30000, port_max: 30999}\n",
             "      ports: {port_min: 30000, port_max: 30999}\n"
             "    - name: rtp1\n      ng: {address: 127.0.0.1, port: 2233}\n"
             "      interfaces: [{name: lab, address: 127.0.0.2}]\n"
             "      ports: {port_min: 31000, port_max: 31999}\n"),
     "site.yaml:28 media.nodes[1].name: duplicate name 'rtp1' (already used by media.nodes[0])"),
    ("overlapping-ports",
     variant("      ports: {port_min: 30000, port_max: 30999}\n",
             "      ports: {port_min: 30000, port_max: 30999}\n"
             "    - name: rtp2\n      ng: {address: 127.0.0.1, port: 2233}\n"
             "      interfaces: [{name: lab, address: 127.0.0.1}]\n"
             "      ports: {port_min: 30500, port_max: 31499}\n"),
     "site.yaml:31 media.nodes[1].ports: ports 30500-31499 overlap media.nodes[0] "
     "(30000-30999) on 127.0.0.1"),
    ("listener-conflict",
     variant("evapi: {address: 127.0.0.1, port: 8448}", "evapi: {address: 127.0.0.1, port: 5071}"),
     "site.yaml:15 edges[0].evapi: tcp 127.0.0.1:5071 is already used by edges[0].jsonrpc"),
    ("public-control-listener",
     variant("jsonrpc: {address: 127.0.0.1", "jsonrpc: {address: 0.0.0.0"),
     "site.yaml:14 edges[0].jsonrpc.address: '0.0.0.0' is not a loopback or private address: "
     "control listeners (NG, JSON-RPC, evapi, API) must not be exposed"),
    ("missing-key",
     variant("      ports: {port_min: 30000, port_max: 30999}\n", ""),
     "site.yaml:21 media.nodes[0].ports: required key is missing"),
    ("bad-literal",
     variant("method: pcap", "method: proc"),
     "site.yaml:18 media.recording.method: expected one of 'pcap', got \"proc\""),
    ("bad-ip",
     variant("{name: lab, address: 127.0.0.1}", "{name: lab, address: 127.0.0.300}"),
     "site.yaml:26 media.nodes[0].interfaces[0].address: '127.0.0.300' is not an IP address"),
    ("bad-regex",
     variant('pattern: "^no$"', 'pattern: "^(no$"'),
     "site.yaml:35 recording.rules[0].match.header.pattern: '^(no$' is not a valid regular "
     "expression: missing ), unterminated subpattern at position 1"),
    ("out-of-range",
     variant("port: 2223", "port: 70000"),
     "site.yaml:22 media.nodes[0].ng.port: must be <= 65535, got 70000"),
    ("node-ping-too-fast",
     variant("  delete_delay: 2\n", "  delete_delay: 2\n  ping_interval: 0.01\n"),
     "site.yaml:20 media.ping_interval: must be >= 0.1, got 0.01"),
    ("bad-name",
     variant("name: edge1", "name: Edge One"),
     "site.yaml:6 edges[0].name: 'Edge One' is not a valid name (expected lower-case letters, "
     "digits, '-' or '_', starting with a letter, at most 32 characters)"),
    ("tcp-transport-without-listener",
     variant("      ng_tcp: {port: 2224}\n", "      transport: tcp\n"),
     "site.yaml:23 media.nodes[0].transport: transport tcp needs ng_tcp.port"),
    ("empty-file", "", "site.yaml:1: the site file is empty"),
    ("not-a-mapping", "- just\n- a list\n",
     "site.yaml:1: expected a mapping at the top level, got a list"),
]


@pytest.mark.parametrize("case,text,message", CASES, ids=[c[0] for c in CASES])
def test_bad_site_gives_located_error(case: str, text: str, message: str) -> None:
    with pytest.raises(SiteError) as exc:
        load_text(text, file="site.yaml")
    assert str(exc.value) == message


@pytest.mark.parametrize("case,text,message", CASES, ids=[c[0] for c in CASES])
def test_cli_exit_code_and_message(case: str, text: str, message: str, tmp_path, capsys) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(text)
    rc = main(["site", "validate", str(site)])
    err = capsys.readouterr().err
    assert rc == 1
    assert message.replace("site.yaml", str(site), 1) in err
    assert "Traceback" not in err


def test_several_errors_are_all_reported() -> None:
    text = variant("delete_delay: 2", "delete_delay: soon").replace("port: 8448", "port: -1")
    with pytest.raises(SiteError) as exc:
        load_text(text, file="s.yaml")
    lines = str(exc.value).splitlines()
    assert lines == ["s.yaml:15 edges[0].evapi.port: must be >= 1, got -1",
                     's.yaml:19 media.delete_delay: expected an integer, got a string "soon"']


def test_unreadable_file(tmp_path, capsys) -> None:
    rc = main(["site", "validate", str(tmp_path / "nope.yaml")])
    assert rc == 1
    assert "cannot read site file" in capsys.readouterr().err


def test_embedded_and_examples_are_valid() -> None:
    from tests.conftest import ROOT

    assert load().name == "lab"
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        assert load(path).name == path.stem


def test_schema_is_published(capsys) -> None:
    import json

    assert main(["site", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "siprecctl site"
    assert set(schema["required"]) >= {"name", "edges", "media"}
    assert "MediaNode" in schema["$defs"]
