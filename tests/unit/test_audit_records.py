"""The edge's call records (Kamailio acc via db_flatstore): the parser, table-driven; the
layout it expects is the one the template writes; reading a directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from orchestrator.audit import (
    FIELDS,
    IncrementalEdgeReader,
    group_calls,
    parse_line,
    read_edge_dir,
)
from orchestrator.audit.records import MAX_LINE
from orchestrator.errors import AuditError
from orchestrator.render import render_site
from orchestrator.site import load

T0 = 1795800000.0


def line(**kw: str) -> str:
    """A record line: an answered call by default, fields overridden by name."""
    base = {
        "method": "INVITE", "from_tag": "ft1", "to_tag": "tt1", "callid": "c1@lab",
        "sip_code": "200", "sip_reason": "OK", "time": str(int(T0)), "v": "1",
        "kind": "answered", "edge": "edge1", "call_id": "c1@lab", "caller_tag": "ft1",
        "callee_tag": "tt1", "from": "sip%3aalice%40lab", "to": "sip%3abob%40lab",
        "pai": "", "ruri": "sip%3abob%40lab", "trunk": "phones", "rule": "default",
        "local": "1", "siprec": "main", "required": "no", "sampled_out": "",
        "node": "udp:127.0.0.1:2223", "invited": f"{T0 - 0.5:.6f}",
        "answered": f"{T0:.6f}", "at": f"{T0:.6f}", "duration_ms": "", "by": ""}
    base.update({k.rstrip("_"): v for k, v in kw.items()})
    return "|".join(base[f] for f in FIELDS)


def test_the_parser_reads_the_layout_the_template_writes() -> None:
    cfg = next(r.content for r in render_site(load()) if r.kind == "kamailio")
    extra = re.search(r'modparam\("acc", "db_extra", "([^"]+)"\)', cfg)
    assert extra is not None
    names = [item.split("=", 1)[0] for item in extra.group(1).split(";")]
    assert tuple(names) == FIELDS[7:]
    assert 'db_url", "flatstore:' in cfg


@pytest.mark.parametrize(("kw", "check"), [
    ({}, lambda r: (r.kind, r.call_id, r.code, r.siprec, r.local, r.from_uri, r.answered)
     == ("answered", "c1@lab", 200, "main", True, "sip:alice@lab", T0)),
    ({"kind": "failed", "sip_code": "486", "sip_reason": "Busy Here", "answered": ""},
     lambda r: (r.kind, r.code, r.reason, r.answered) == ("failed", 486, "Busy Here", None)),
    ({"kind": "ended", "at": f"{T0 + 3:.6f}", "duration_ms": "3000", "by": "callee"},
     lambda r: (r.duration, r.by, r.at) == (3.0, "callee", T0 + 3)),
    ({"siprec": "", "local": "0", "rule": "opt-out"},
     lambda r: (r.siprec, r.local, r.rule) == (None, False, "opt-out")),
    ({"sampled_out": "1", "required": "all"}, lambda r: r.sampled_out and r.required == "all"),
    # acc writes a "|" inside its reason phrase as %7C
    ({"sip_reason": "Odd%7CReason"}, lambda r: r.reason == "Odd|Reason"),
    # what acc wrote as it came is made readable: invalid UTF-8 and controls as %xx
    ({"sip_reason": "Caf\udce9 \x01", "callee_tag": "t\udcff"},
     lambda r: (r.reason, r.callee_tag) == ("Caf%e9 %01", "t%ff")),
    # non-ASCII bytes of a URI stay percent-encoded, the URI's own escapes too
    ({"from": "sip%3a%c3%a9%2541%40lab"}, lambda r: r.from_uri == "sip:%c3%a9%41@lab"),
])
def test_valid_lines(kw: dict[str, str], check: object) -> None:
    rec = parse_line(line(**kw), "f.log:3")
    assert check(rec), rec  # type: ignore[operator]
    assert rec.where == "f.log:3"


@pytest.mark.parametrize(("text", "message"), [
    ("INVITE|a|b", "f.log:7: 3 fields, expected 29 (method|from_tag|…|by)"),
    (line(v="2"), "f.log:7: v: layout '2' is not one this siprecctl reads (1)"),
    (line(kind="paused"), "f.log:7: kind: 'paused' is not one of answered, failed, ended"),
    (line(edge="Edge 1"), "f.log:7: edge: 'Edge 1' is not an edge name"),
    (line(call_id=""), "f.log:7: call_id: '' is not a token of printable ASCII"),
    (line(call_id="a b"), "f.log:7: call_id: 'a b' is not a token of printable ASCII"),
    (line(sip_code="2000"), "f.log:7: sip_code: '2000' is not a SIP status code"),
    (line(at="soon"), "f.log:7: at: 'soon' is not a time in seconds"),
    (line(at="-5"), "f.log:7: at: '-5' is out of range"),
    (line(invited="x"), "f.log:7: invited: 'x' is not a time in seconds"),
    (line(from_="sip%3a%zz"), "f.log:7: from: not percent-encoded at offset 6: '%zz'"),
    (line(to="sip:bob lab"), "f.log:7: to: not percent-encoded at offset 7: ' lab'"),
    (line(local="yes"), "f.log:7: local: 'yes' is not 0 or 1"),
    (line(required="maybe"), "f.log:7: required: 'maybe' is not no, yes or all"),
    (line(by="nobody"), "f.log:7: by: 'nobody' is not caller, callee or edge"),
    (line(duration_ms="1.5"), "f.log:7: duration_ms: '1.5' is not an integer"),
    (line(trunk="a\tb"), "f.log:7: trunk: 'a\\tb' holds a character outside printable ASCII"),
    ("x" * (MAX_LINE + 1), f"f.log:7: line of {MAX_LINE + 1} characters (at most {MAX_LINE})"),
])
def test_malformed_lines_are_located_typed_errors(text: str, message: str) -> None:
    with pytest.raises(AuditError) as exc:
        parse_line(text, "f.log:7")
    assert str(exc.value) == message
    assert exc.value.where == "f.log:7"


def _edge_dir(tmp_path: Path) -> Path:
    d = tmp_path / "edge1"
    d.mkdir(mode=0o700)
    return d


def test_read_dir_merges_process_files_and_keeps_going_past_bad_lines(tmp_path: Path) -> None:
    d = _edge_dir(tmp_path)
    (d / "calls_129.log").write_text(line() + "\n" + "garbage\n"
                                     + line(kind="ended", at=f"{T0 + 2:.6f}",
                                            duration_ms="2000", by="caller") + "\n")
    (d / "calls_130.log").write_text(line(call_id="c2@lab", kind="failed", sip_code="487",
                                          answered="") + "\n")
    # a rotated copy is read; a compressed one is not
    (d / "calls_131.log.1").write_text(line(call_id="c3@lab") + "\n")
    (d / "calls_131.log.2.gz").write_bytes(b"\x1f\x8b")
    got = read_edge_dir(d)
    assert sorted(r.call_id for r in got.records) == ["c1@lab", "c1@lab", "c2@lab", "c3@lab"]
    assert [str(e) for e in got.errors] == [
        f"{d}/calls_129.log:2: 1 fields, expected 29 (method|from_tag|…|by)"]
    calls = group_calls(got.records)
    assert calls["c1@lab"].answered and calls["c1@lab"].ended
    assert calls["c1@lab"].ended.duration == 2.0
    assert [r.code for r in calls["c2@lab"].failed] == [487]


def test_a_line_still_being_written_is_not_an_error(tmp_path: Path) -> None:
    d = _edge_dir(tmp_path)
    (d / "calls_1.log").write_text(line() + "\n" + line(call_id="c2@lab")[:40])
    got = read_edge_dir(d)
    assert [r.call_id for r in got.records] == ["c1@lab"] and not got.errors


def test_an_over_long_line_is_skipped_with_an_error(tmp_path: Path) -> None:
    d = _edge_dir(tmp_path)
    (d / "calls_1.log").write_text("y" * (MAX_LINE + 10) + "\n" + line() + "\n")
    got = read_edge_dir(d)
    assert [r.call_id for r in got.records] == ["c1@lab"]
    assert [str(e) for e in got.errors] == [f"{d}/calls_1.log:1: line over {MAX_LINE} bytes"]


def test_window_by_answer_time(tmp_path: Path) -> None:
    d = _edge_dir(tmp_path)
    (d / "calls_1.log").write_text("\n".join([
        line(call_id="early", at=f"{T0 - 100:.6f}", answered=f"{T0 - 100:.6f}"),
        line(call_id="in"),
        # ended after the window, answered inside it: kept
        line(call_id="in", kind="ended", at=f"{T0 + 500:.6f}", duration_ms="500000",
             by="edge"),
        line(call_id="late", at=f"{T0 + 100:.6f}", answered=f"{T0 + 100:.6f}"),
    ]) + "\n")
    got = read_edge_dir(d, since=T0 - 10, until=T0 + 10)
    assert [(r.call_id, r.kind) for r in got.records] == [("in", "answered"), ("in", "ended")]


def test_directory_problems_are_errors(tmp_path: Path) -> None:
    got = read_edge_dir(tmp_path / "nope")
    assert [str(e) for e in got.errors] == [
        f"{tmp_path}/nope: no such directory (is the edge's accounting set up?)"]
    d = _edge_dir(tmp_path)
    os.chmod(d, 0o777)
    (d / "calls_1.log").write_text(line() + "\n")
    got = read_edge_dir(d)
    assert len(got.records) == 1  # still read, and said
    assert [str(e) for e in got.errors] == [
        f"{d}: writable by group/others (mode 0777): records anyone can change are no "
        "evidence; chmod go-w"]


def test_the_incremental_reader_parses_each_complete_line_once(tmp_path: Path) -> None:
    d = _edge_dir(tmp_path)
    f = d / "calls_1.log"
    f.write_text(line(call_id="a") + "\n" + line(call_id="b")[:30])
    r = IncrementalEdgeReader(d)
    assert [x.call_id for x in r.poll()] == ["a"]
    with open(f, "a") as fh:
        fh.write(line(call_id="b")[30:] + "\nnot a record\n")
    assert [x.call_id for x in r.poll()] == ["b"] and r.errors == 1
    assert r.poll() == []
    # rotated: a new file under the same name is read from its start
    f.rename(d / "calls_1.log.1")
    f.write_text(line(call_id="c") + "\n")
    assert [x.call_id for x in r.poll()] == ["c"]


def test_the_incremental_reader_starts_from_the_recent_past(tmp_path: Path) -> None:
    d = _edge_dir(tmp_path)
    rows = [line(call_id=f"c{i}") for i in range(50)]
    (d / "calls_1.log").write_text("\n".join(rows) + "\n")
    got = IncrementalEdgeReader(d, tail=len(rows[0]) * 3 + 10).poll()
    assert [x.call_id for x in got] == ["c47", "c48", "c49"]
