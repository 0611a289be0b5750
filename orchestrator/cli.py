"""The ``siprecctl`` command line: a thin layer over the library.

One module per subsystem lives in ``orchestrator/commands/``; only the module of the command
being run is imported (cold start matters for ``siprecctl ng ping``). Exit codes: 0 ok,
1 a known error (site file, rtpengine said error, validation findings), 2 usage,
3 unreachable/timeout or an unexpected error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command → (module, one-line help). Order is the order of `siprecctl --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "site": ("orchestrator.commands.site", "validate a site file, print its JSON Schema"),
    "render": ("orchestrator.commands.render", "render Kamailio/rtpengine/kamcli configs"),
    "check": ("orchestrator.commands.check", "render and check configs with the real daemons"),
    "ng": ("orchestrator.commands.ng", "talk NG to rtpengine: ping, list, query, stats"),
    "record": ("orchestrator.commands.record", "start/stop/pause/resume recording of a call"),
    "calls": ("orchestrator.commands.calls", "active calls per rtpengine node"),
    "edge": ("orchestrator.commands.edge", "Kamailio edge status and rtpengine node control"),
    "metadata": ("orchestrator.commands.metadata", "validate or build RFC 7865 metadata"),
    "recordings": ("orchestrator.commands.recordings", "collect and audit rtpengine recordings"),
    "serve": ("orchestrator.commands.serve", "run the recording controller"),
    "losses": ("orchestrator.commands.losses", "recordings the policy wanted and did not get"),
    "audit": ("orchestrator.commands.audit", "was every required call recorded? the completeness ledger"),
    "srs": ("orchestrator.commands.srs", "run the reference SIPREC recording server"),
    "lab": ("orchestrator.commands.lab", "bring the lab up, place calls, report"),
}


def _selected(argv: Sequence[str]) -> str | None:
    for tok in argv:
        if not tok.startswith("-"):
            return tok if tok in COMMANDS else None
    return None


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``selected``'s module is imported and configured."""
    parser = argparse.ArgumentParser(
        prog="siprecctl",
        description="Kamailio + rtpengine call recording: configs, NG control, SIPREC, metadata.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module).configure(sp)
    return parser


def _version() -> str:
    from . import __version__

    return f"siprecctl {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_selected(args_list))
    args = parser.parse_args(args_list)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    from .errors import SiprecctlError, UsageError

    try:
        return int(func(args) or 0)
    except UsageError as exc:  # named after the command, like argparse's own usage errors
        print(f"siprecctl {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except SiprecctlError as exc:
        print(f"siprecctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("siprecctl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # the unexpected: say what, not a traceback (unless -v)
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"siprecctl: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
