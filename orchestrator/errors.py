"""The one exception tree of siprecctl.

Every error the library raises on purpose derives from :class:`SiprecctlError`; backend
errors (sockets, subprocesses, parsers) are translated at the boundary
(``raise NgTimeout(...) from exc``), so callers never see a traceback from deep inside::

    SiprecctlError
    ├── UsageError                 a command-line value or combination that cannot be used
    ├── SiteError                  site file: file, line, key path, what was expected
    │   └── SiteErrors             several SiteError at once (all problems of one file)
    ├── RenderError                template or output-directory problems
    ├── SecretError                a secret/token file: missing, unsafe mode, malformed
    ├── CheckError                 a daemon rejected a rendered config
    ├── NgError                    rtpengine answered result=error (error-reason)
    │   ├── NgOverloaded           result="load limit"
    │   └── NgUnsupported          "Unrecognized command" (feature not in this version)
    ├── NgTransportError           could not talk to rtpengine
    │   └── NgTimeout              no reply after all retransmissions
    ├── NgProtocolError            malformed NG message (with the offending offset)
    ├── KamailioError              Kamailio JSON-RPC / kamcli problems
    │   ├── KamailioRpcError       the RPC returned an error member (code, message)
    │   ├── KamailioUnreachable    transport failure or timeout
    │   ├── EvapiProtocolError     malformed evapi frame or event JSON
    │   └── EvapiRefused           the edge accepts another controller (one per site)
    ├── MetadataError              RFC 7865 metadata could not be parsed/built
    ├── SipError                   malformed SIP message, multipart body or SDP
    ├── RecordingError             recording files: unreadable, never modified
    ├── AuditError                 the completeness ledger's inputs (located: file:line)
    ├── ControllerError            controller / session state machine problems
    │   ├── IllegalTransition      a move the transition table does not allow
    │   └── ControllerUnreachable  no controller API at the address
    └── LabError                   lab topology / process supervision (orchestrator.daemons)

Exit codes (``exit_code``): 1 by default, 2 for :class:`UsageError`, 3 for the unreachable.
"""

from __future__ import annotations


class SiprecctlError(Exception):
    """Base of every error siprecctl raises on purpose."""

    exit_code = 1


class UsageError(SiprecctlError):
    """A command-line value or option combination that cannot be used."""

    exit_code = 2


class SiteError(SiprecctlError):
    """One problem in a site file, located by file, line and key path."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 path: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.path = path
        super().__init__(self.format())

    def format(self) -> str:
        where = self.file or "<site>"
        if self.line is not None:
            where += f":{self.line}"
        if self.path:
            return f"{where} {self.path}: {self.message}"
        return f"{where}: {self.message}"


class SiteErrors(SiteError):
    """All problems found in one site file."""

    def __init__(self, errors: list[SiteError]) -> None:
        self.errors = errors
        SiprecctlError.__init__(self, "\n".join(e.format() for e in errors))
        self.message = str(self)
        self.file = errors[0].file if errors else None
        self.line = errors[0].line if errors else None
        self.path = errors[0].path if errors else None

    def format(self) -> str:
        return "\n".join(e.format() for e in self.errors)


class RenderError(SiprecctlError):
    """Rendering failed (template error, unwritable output)."""


class SecretError(SiprecctlError):
    """A secret or token file is missing, readable by others, or malformed (never its value)."""


class CheckError(SiprecctlError):
    """A rendered configuration was rejected by the real daemon."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        loc = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(loc + message)


class NgError(SiprecctlError):
    """rtpengine replied ``result: error``; ``reason`` is its ``error-reason``."""

    def __init__(self, reason: str, *, command: str | None = None, reply: dict | None = None) -> None:
        self.reason = reason
        self.command = command
        self.reply = reply or {}
        super().__init__(f"{command}: {reason}" if command else reason)


class NgOverloaded(NgError):
    """rtpengine replied ``result: load limit`` (max-sessions/cpu/load/bandwidth)."""


class NgUnsupported(NgError):
    """The command is not known to this rtpengine ("Unrecognized command")."""


class NgTransportError(SiprecctlError):
    """Could not exchange a message with rtpengine."""

    exit_code = 3


class NgTimeout(NgTransportError):
    """No reply after all retransmissions."""


class NgProtocolError(SiprecctlError):
    """A malformed NG message; ``offset`` is where decoding failed, if known."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        self.offset = offset
        super().__init__(f"{message} (at offset {offset})" if offset is not None else message)


class KamailioError(SiprecctlError):
    """Problems talking to Kamailio."""


class KamailioRpcError(KamailioError):
    """The RPC reply carried an ``error`` member."""

    def __init__(self, code: int, message: str, *, method: str | None = None) -> None:
        self.code = code
        self.rpc_message = message
        self.method = method
        super().__init__(f"{method or 'rpc'}: {code} {message}")


class KamailioUnreachable(KamailioError):
    """Transport failure or timeout talking to Kamailio."""

    exit_code = 3


class EvapiProtocolError(KamailioError):
    """A malformed netstring frame or event JSON on an evapi connection."""


class EvapiRefused(KamailioError):
    """The edge refused this controller: another one of the site is connected."""


class MetadataError(SiprecctlError):
    """RFC 7865 recording metadata could not be parsed or built."""


class SipError(SiprecctlError):
    """A malformed SIP message, multipart body or SDP."""


class RecordingError(SiprecctlError):
    """A recording's files could not be read (they are never modified)."""


class AuditError(SiprecctlError):
    """An input of the completeness ledger is unusable: an edge record line, a file, a
    directory. ``where`` locates it (``file:line``)."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ControllerError(SiprecctlError):
    """Recording controller problems."""


class IllegalTransition(ControllerError):
    """The session state machine does not allow this event in this state."""

    def __init__(self, role: str, state: str, event: str) -> None:
        self.role, self.state, self.event = role, state, event
        super().__init__(f"{role}: event {event!r} is not allowed in state {state!r}")


class ControllerUnreachable(ControllerError):
    """The controller's HTTP API did not answer."""

    exit_code = 3


class LabError(SiprecctlError):
    """Lab topology or process supervision problems."""
