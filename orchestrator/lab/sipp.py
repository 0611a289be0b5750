"""sipp as the lab's caller and callee (argument lists, no shell)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from ..daemons import Daemon, udp_bound

SIPP_BIN = "/usr/bin/sipp"
SIPP_PCAPS = Path("/usr/share/sip-tester")  # g711a.pcap ships with the sip-tester package


_PLAY = """  <nop>
    <action>
      <exec play_pcap_audio="pcap/g711a.pcap"/>
    </action>
  </nop>
"""


def workdir(path: Path) -> Path:
    """Prepare a sipp working dir: our scenarios plus ``pcap/`` → the packaged pcaps, and
    ``uac_record_nortp.xml``: the lab caller without its RTP (load runs, as sipp's uac)."""
    path.mkdir(parents=True, exist_ok=True)
    link = path / "pcap"
    if not link.exists():
        link.symlink_to(SIPP_PCAPS)
    src = resources.files("orchestrator.lab").joinpath("scenarios")
    for f in src.iterdir():
        if f.name.endswith(".xml"):
            (path / f.name).write_text(f.read_text())
    text = (path / "uac_record.xml").read_text()
    assert _PLAY in text, "uac_record.xml changed: update sipp._PLAY"
    (path / "uac_record_nortp.xml").write_text(text.replace(_PLAY, ""))
    return path


def uas_argv(cwd: Path, host: str, port: int, *, rtp_echo: bool = True,
             record_route: bool = False, media_port: int | None = None) -> list[str]:
    """Arguments for a callee answering every call (echoing RTP so both legs carry
    media); its errors go to ``uas_errors.log``."""
    # -ci: sipp's UDP control socket binds to 0.0.0.0 unless told otherwise
    argv = [SIPP_BIN, "-sn", "uas", "-i", host, "-ci", host, "-p", str(port), "-nostdin",
            "-trace_err", "-error_file", str(cwd / "uas_errors.log")]
    if record_route:
        # sipp's built-in uas ignores Record-Route (so do many PBXs): the caller's ACK and
        # BYE then reach the edge without our Route. uas_rr.xml copies it into its replies.
        argv[1:3] = ["-sf", "uas_rr.xml"]
    if rtp_echo:
        argv.append("-rtp_echo")
    if media_port is not None:
        argv += ["-mp", str(media_port)]
    return argv


def uas(cwd: Path, host: str, port: int, *, rtp_echo: bool = True,
        record_route: bool = False) -> Daemon:
    """Start the callee of :func:`uas_argv` and wait until it listens (calls placed before
    would fail on a closed port); its screen output goes nowhere."""
    proc = Daemon(uas_argv(cwd, host, port, rtp_echo=rtp_echo, record_route=record_route),
                  cwd, name="sipp", log_path=Path(os.devnull),
                  ready=lambda: udp_bound(host, port))
    proc.start()
    proc.wait_ready(10.0)
    return proc


def uac_argv(cwd: Path, target: str, *, local: tuple[str, int], calls: int = 1,
             duration_ms: int = 3000, record: str = "yes", customer: str = "C-1",
             rate: float | None = None, rtp: bool = True, timeout_s: int = 60,
             extra: Sequence[str] = ()) -> list[str]:
    """Arguments for the lab caller (``uac_record.xml``, or without RTP
    ``uac_record_nortp.xml``) placing ``calls`` calls; sipp gives up after ``timeout_s``."""
    scenario = "uac_record.xml" if rtp else "uac_record_nortp.xml"
    argv = [SIPP_BIN, "-sf", scenario, target, "-i", local[0], "-ci", local[0],
            "-p", str(local[1]),
            "-m", str(calls), "-d", str(duration_ms), "-key", "record", record,
            "-key", "customer", customer, "-nostdin", "-timeout", f"{timeout_s}s",
            "-timeout_error", "-trace_err",
            "-error_file", str(cwd / f"uac_{local[1]}_errors.log")]
    if rate is not None:
        argv += ["-r", str(rate)]
    return argv + list(extra)


def stop(proc: Daemon | None) -> None:
    """Stop a sipp started by :func:`uas` (nothing if None or already gone)."""
    if proc is not None:
        proc.stop()
