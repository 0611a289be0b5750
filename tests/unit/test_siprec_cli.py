"""``siprecctl metadata validate|build`` exit codes and output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "metadata"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(["metadata", "validate", "--json", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_valid_document_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_json(capsys, str(DATA / "valid" / "rfc-full.xml"),
                         "--sdp", str(DATA / "valid" / "rfc-full.sdp"))
    assert (code, out["errors"], out["inputs"][0]["findings"]) == (0, 0, [])


def test_errors_exit_1_with_rule_and_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_json(capsys, str(DATA / "invalid" / "R21-time-order.xml"))
    assert code == 1
    f = out["inputs"][0]["findings"][0]
    assert (f["rule"], f["severity"], f["line"], f["slug"]) == ("R21", "error", 14, "time-order")


def test_unreadable_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run_json(capsys, str(DATA / "valid" / "rfc-full.xml"), str(tmp_path / "missing.xml"))
    assert code == 2
    assert out["unreadable"] == [{"source": str(tmp_path / "missing.xml"),
                                  "reason": "No such file or directory"}]


def test_directory_and_sip_message(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_json(capsys, str(DATA / "sip"))
    assert code == 1
    by_source = {Path(r["source"]).name: r["findings"] for r in out["inputs"]}
    assert by_source["valid-invite.sip"] == []
    assert [f["rule"] for f in by_source["R01-no-require.sip"]] == ["R01"]


def test_session_mode_checks_partials_against_state(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(DATA / "valid" / n) for n in ("rfc-full.xml", "hold-partial.xml",
                                               "resume-partial.xml", "end-of-call.xml")]
    code, out = run_json(capsys, "--session", *files)
    assert code == 0
    assert [[f["rule"] for f in r["findings"]] for r in out["inputs"]] == [[], ["R28"], [], []]


def test_legacy_profile(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(DATA / "legacy" / "acme-style.xml")
    assert run_json(capsys, path)[0] == 1
    code, out = run_json(capsys, "--profile", "legacy", "--min-severity", "warning", path)
    assert (code, out["inputs"][0]["findings"]) == (0, [])


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["metadata", "validate", str(DATA / "invalid" / "R13-datamode.xml")]) == 1
    out = capsys.readouterr().out
    assert "R13" in out and "1 input(s): 1 error(s), 0 warning(s)" in out


def test_build_yaml_gives_valid_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desc = tmp_path / "call.yaml"
    desc.write_text("start_time: 2024-05-01T10:00:00+02:00\n"
                    "sip_session_id: ab30317f1a784dc48ff824d0d3715d86;"
                    "remote=47755a9de7794ba387653f2099600ef2\nparticipants:\n"
                    "  - header: '\"Alice & <Co>\" <sip:alice@atlanta.example.com>;tag=1'\n"
                    "    lang: en\n    send: ['1']\n"
                    "  - aor: 'tel:+14155550100'\n    name: Bob\n    lang: en\n    send: ['2']\n")
    out = tmp_path / "m.xml"
    assert main(["metadata", "build", str(desc), "-o", str(out)]) == 0
    assert b"Alice &amp; &lt;Co&gt;" in out.read_bytes()
    code, res = run_json(capsys, str(out))
    assert (code, res["inputs"][0]["findings"]) == (0, [])


def test_build_multipart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desc = tmp_path / "call.json"
    desc.write_text(json.dumps({"participants": [{"aor": "sip:a@example.com", "send": ["96"]},
                                                 {"aor": "sip:b@example.com", "send": ["97"]}]}))
    sdp = tmp_path / "rs.sdp"
    sdp.write_bytes(b"v=0\r\nm=audio 1 RTP/AVP 0\r\na=label:96\r\na=sendonly\r\n"
                    b"m=audio 3 RTP/AVP 0\r\na=label:97\r\na=sendonly\r\n")
    assert main(["metadata", "build", str(desc), "--multipart", str(sdp)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Content-Type: multipart/mixed;boundary=siprecctl-")
    assert "Content-Disposition: recording-session" in out


def test_build_bad_description_is_a_known_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    desc = tmp_path / "bad.yaml"
    desc.write_text("participants:\n  - name: nobody\n")
    assert main(["metadata", "build", str(desc)]) == 1
    assert "participants[0]: needs 'aor' (with optional 'name') or 'header'" in \
        capsys.readouterr().err


def test_build_missing_file_exit_2(tmp_path: Path) -> None:
    assert main(["metadata", "build", str(tmp_path / "nope.yaml")]) == 2


# ------------------------------------------------------------------ build -o: nothing lost

DESC = '{"participants": [{"aor": "sip:a@example.com", "send": ["1"]}, {"aor": "sip:b@example.com"}]}'


def test_build_does_not_overwrite_without_force(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    desc = tmp_path / "d.json"
    desc.write_text(DESC)
    out = tmp_path / "capture.pcap.bak"
    out.write_bytes(b"\xd4\xc3\xb2\xa1 precious")
    assert main(["metadata", "build", str(desc), "-o", str(out)]) == 1
    assert f"{out} exists; use --force to replace it" in capsys.readouterr().err
    assert out.read_bytes() == b"\xd4\xc3\xb2\xa1 precious"
    assert main(["metadata", "build", str(desc), "-o", str(out), "--force"]) == 0
    assert out.read_bytes().startswith(b"<?xml")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_build_new_file(tmp_path: Path) -> None:
    desc = tmp_path / "d.json"
    desc.write_text(DESC)
    assert main(["metadata", "build", str(desc), "-o", str(tmp_path / "new.xml")]) == 0
    assert (tmp_path / "new.xml").read_bytes().startswith(b"<?xml")


@pytest.mark.parametrize("layout", ["rtpengine", "rtpengine-subdir", "srs", "pcap-target"])
def test_build_never_writes_into_a_recording_directory(
        layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desc = tmp_path / "d.json"
    desc.write_text(DESC)
    rec = tmp_path / "rec"
    (rec / "pcaps").mkdir(parents=True)
    (rec / "metadata").mkdir()
    srs = tmp_path / "srs"
    srs.mkdir()
    (srs / "srs1-20240501T100000-ab12-1.wav").write_bytes(b"RIFF")
    target = {"rtpengine": rec / "m.xml", "rtpengine-subdir": rec / "pcaps" / "m.xml",
              "srs": srs / "m.xml", "pcap-target": tmp_path / "call.pcap"}[layout]
    for force in ([], ["--force"]):
        assert main(["metadata", "build", str(desc), "-o", str(target), *force]) == 1
        assert "is a recording directory; siprecctl never writes there" in \
            capsys.readouterr().err
        assert not target.exists()
