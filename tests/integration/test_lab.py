"""The main job: ``siprecctl lab run`` on the embedded lab site."""

from __future__ import annotations

import json

import pytest

from orchestrator.cli import main

pytestmark = pytest.mark.integration


def test_lab_run(tmp_path, capsys) -> None:
    rc = main(["lab", "run", "--workdir", str(tmp_path), "--calls", "2", "--duration-ms", "1500",
               "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    assert report["ok"] is True
    kinds = sorted(c["kind"] for c in report["calls"])
    assert kinds == ["opt-out", "recorded", "recorded"]
    for call in report["calls"]:
        assert call["answered"] and call["ended"]
        if call["kind"] == "recorded":
            assert call["pcap_packets"] > 50
            assert {"call-id", "from", "to", "rule", "edge"} <= set(call["metadata_keys"])
            # recorded over SIPREC too: both streams carried media to the reference SRS
            assert call["siprec_srs"] == "lab-srs-1"
            assert len(call["siprec_packets"]) == 2
            assert all(n > 20 for n in call["siprec_packets"].values()), call
        else:
            assert call["pcap_packets"] is None and call["rule"] == "opt-out"
            assert call["siprec_srs"] is None
    # what it ran is kept for the operator
    assert (tmp_path / "configs" / "kamailio" / "edge1" / "kamailio.cfg").is_file()
    assert list((tmp_path / "recordings" / "rtp1" / "metadata").glob("rtpengine-meta-*.txt"))
    assert len(list((tmp_path / "srs" / "lab-srs-1").glob("*.json"))) == 2  # SRS session records
