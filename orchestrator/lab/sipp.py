"""sipp as the lab's caller and callee (argument lists, no shell)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from ..daemons import Daemon

SIPP_BIN = "/usr/bin/sipp"
SIPP_PCAPS = Path("/usr/share/sip-tester")  # g711a.pcap ships with the sip-tester package


def workdir(path: Path) -> Path:
    """Prepare a sipp working dir: our scenarios plus ``pcap/`` → the packaged pcaps."""
    path.mkdir(parents=True, exist_ok=True)
    link = path / "pcap"
    if not link.exists():
        link.symlink_to(SIPP_PCAPS)
    src = resources.files("orchestrator.lab").joinpath("scenarios")
    for f in src.iterdir():
        if f.name.endswith(".xml"):
            (path / f.name).write_text(f.read_text())
    return path


def uas(cwd: Path, host: str, port: int, *, rtp_echo: bool = True,
        record_route: bool = False) -> Daemon:
    """Start a callee answering every call (echoing RTP so both legs carry media); its
    errors go to ``uas_errors.log``, its screen output nowhere."""
    # -ci: sipp's UDP control socket binds to 0.0.0.0 unless told otherwise
    argv = [SIPP_BIN, "-sn", "uas", "-i", host, "-ci", host, "-p", str(port), "-nostdin",
            "-trace_err", "-error_file", str(cwd / "uas_errors.log")]
    if record_route:
        # sipp's built-in uas ignores Record-Route (so do many PBXs): the caller's ACK and
        # BYE then reach the edge without our Route. uas_rr.xml copies it into its replies.
        argv[1:3] = ["-sf", "uas_rr.xml"]
    if rtp_echo:
        argv.append("-rtp_echo")
    proc = Daemon(argv, cwd, name="sipp", log_path=Path(os.devnull))
    proc.start()
    return proc


def uac_argv(cwd: Path, target: str, *, local: tuple[str, int], calls: int = 1,
             duration_ms: int = 3000, record: str = "yes", customer: str = "C-1",
             rate: float | None = None, extra: Sequence[str] = ()) -> list[str]:
    """Arguments for the lab caller (``uac_record.xml``) placing ``calls`` calls."""
    argv = [SIPP_BIN, "-sf", "uac_record.xml", target, "-i", local[0], "-ci", local[0],
            "-p", str(local[1]),
            "-m", str(calls), "-d", str(duration_ms), "-key", "record", record,
            "-key", "customer", customer, "-nostdin", "-timeout", "60s", "-timeout_error",
            "-trace_err", "-error_file", str(cwd / f"uac_{local[1]}_errors.log")]
    if rate is not None:
        argv += ["-r", str(rate)]
    return argv + list(extra)


def stop(proc: Daemon | None) -> None:
    """Stop a sipp started by :func:`uas` (nothing if None or already gone)."""
    if proc is not None:
        proc.stop()
