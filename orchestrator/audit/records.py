"""The edge's own call records: Kamailio ``acc`` through ``db_flatstore`` (sans-IO parsing).

The generated ``kamailio.cfg`` (its "Accounting" section) appends one line per record to
``<accounting.dir>/<edge>/calls_<process>.log``, one file per Kamailio process. A line is
``|``-separated: acc's own seven fields (about the SIP message that triggered the record:
a BYE, a reply, or the dialog module's stand-in message for a timeout), then the
``db_extra`` fields in :data:`FIELDS` order (layout ``v=1``). db_flatstore writes a ``|``
inside a value as ``%7C``; every SIP-derived value siprecctl adds is percent-encoded
already (:mod:`orchestrator.kamailio.encoding`), so only acc's reason phrase can hold one.

Record kinds: ``answered`` (the first 2xx to the INVITE), ``failed`` (its final 3xx-6xx,
timeout or CANCEL; or the edge's own 503 when rtpengine refused the offer) and ``ended``
(the dialog ended: answered and end times, duration, who ended it).

:func:`parse_line` types one line or raises :class:`AuditError` naming the file, the line
and the field; :func:`read_edge_dir` reads a directory and collects the errors instead.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AuditError
from ..kamailio.encoding import decode_uri, readable
from ..site.model import NAME_RE

__all__ = ["ACC_FIELDS", "FIELDS", "MAX_LINE", "EdgeCall", "EdgeRecord", "EdgeRecords",
           "group_calls", "parse_line", "read_edge_dir", "record_files"]

#: acc's own fields (module defaults), always first
ACC_FIELDS = ("method", "from_tag", "to_tag", "callid", "sip_code", "sip_reason", "time")
#: the db_extra fields of the generated config, in order (layout v=1)
EXTRA_FIELDS = ("v", "kind", "edge", "call_id", "caller_tag", "callee_tag", "from", "to",
                "pai", "ruri", "trunk", "rule", "local", "siprec", "required", "sampled_out",
                "node", "invited", "answered", "at", "duration_ms", "by")
FIELDS = ACC_FIELDS + EXTRA_FIELDS
LAYOUT = "1"
KINDS = ("answered", "failed", "ended")
MAX_LINE = 64 * 1024  # Kamailio's pv_buffer_size: no record can be longer
_COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4")


@dataclass(frozen=True, slots=True)
class EdgeRecord:
    """One typed line. URIs are decoded as URIs (bytes outside printable ASCII ``%xx``)."""

    kind: str
    edge: str
    call_id: str
    at: float  # when the edge wrote it (Kamailio's clock)
    code: int  # the INVITE's final code (answered/ended: the 2xx; failed: the failure)
    reason: str
    caller_tag: str = ""
    callee_tag: str = ""
    from_uri: str = ""
    to_uri: str = ""
    pai: str = ""
    ruri: str = ""
    trunk: str = ""
    rule: str = ""
    local: bool = False
    siprec: str | None = None
    required: str = "no"
    sampled_out: bool = False
    node: str = ""
    invited: float | None = None
    answered: float | None = None
    duration: float | None = None  # seconds (ended records)
    by: str | None = None  # caller | callee | edge (ended records)
    where: str = ""  # file:line


@dataclass
class EdgeCall:
    """Everything the edge recorded about one Call-ID."""

    call_id: str
    answered: EdgeRecord | None = None
    ended: EdgeRecord | None = None
    failed: list[EdgeRecord] = field(default_factory=list)

    @property
    def first(self) -> EdgeRecord:
        return self.answered or self.ended or self.failed[0]


@dataclass
class EdgeRecords:
    """What a read found: the records and every line it could not use (located)."""

    records: list[EdgeRecord] = field(default_factory=list)
    errors: list[AuditError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _float(value: str, name: str, where: str, *, optional: bool = False) -> float | None:
    if value == "" and optional:
        return None
    try:
        v = float(value)
    except ValueError:
        raise AuditError(f"{name}: {value[:40]!r} is not a time in seconds", where=where) \
            from None
    if not 0 <= v < 1e11:
        raise AuditError(f"{name}: {value[:40]!r} is out of range", where=where)
    return v


def _token(value: str, name: str, where: str) -> str:
    if not value or any(not "!" <= c <= "~" for c in value):
        raise AuditError(f"{name}: {value[:40]!r} is not a token of printable ASCII",
                         where=where)
    return value


def _text(value: str) -> str:
    """A value acc wrote as it came (a reason phrase, a callee's tag): any bytes, made
    readable and safe for JSON/HTML (``%xx`` for what is not printable UTF-8)."""
    return readable(value.encode("utf-8", "surrogateescape"))


def parse_line(line: str, where: str = "<line>") -> EdgeRecord:
    """One record line (without its newline) → :class:`EdgeRecord`, or :class:`AuditError`."""
    if len(line) > MAX_LINE:
        raise AuditError(f"line of {len(line)} characters (at most {MAX_LINE})", where=where)
    parts = line.split("|")
    if len(parts) != len(FIELDS):
        raise AuditError(f"{len(parts)} fields, expected {len(FIELDS)} (method|from_tag|…|by)",
                         where=where)
    f = dict(zip(FIELDS, parts, strict=True))
    if f["v"] != LAYOUT:
        raise AuditError(f"v: layout {f['v'][:20]!r} is not one this siprecctl reads "
                         f"({LAYOUT})", where=where)
    if f["kind"] not in KINDS:
        raise AuditError(f"kind: {f['kind'][:20]!r} is not one of {', '.join(KINDS)}",
                         where=where)
    if not NAME_RE.match(f["edge"]):
        raise AuditError(f"edge: {f['edge'][:40]!r} is not an edge name", where=where)
    call_id = _token(f["call_id"], "call_id", where)
    code = f["sip_code"]
    if not (code.isdigit() and len(code) == 3):
        raise AuditError(f"sip_code: {code[:20]!r} is not a SIP status code", where=where)
    uris = {}
    for key in ("from", "to", "pai", "ruri"):
        try:
            uris[key] = decode_uri(f[key], what=key, error=AuditError) if f[key] else ""
        except AuditError as exc:
            raise AuditError(str(exc), where=where) from None
    for key in ("trunk", "rule", "siprec", "node"):
        if any(not "!" <= c <= "~" for c in f[key]):
            raise AuditError(f"{key}: {f[key][:40]!r} holds a character outside printable "
                             "ASCII", where=where)
    if f["local"] not in ("0", "1", ""):
        raise AuditError(f"local: {f['local'][:20]!r} is not 0 or 1", where=where)
    if f["required"] not in ("no", "yes", "all"):
        raise AuditError(f"required: {f['required'][:20]!r} is not no, yes or all", where=where)
    if f["by"] not in ("", "caller", "callee", "edge"):
        raise AuditError(f"by: {f['by'][:20]!r} is not caller, callee or edge", where=where)
    duration = None
    if f["duration_ms"]:
        try:
            duration = int(f["duration_ms"]) / 1000
        except ValueError:
            raise AuditError(f"duration_ms: {f['duration_ms'][:20]!r} is not an integer",
                             where=where) from None
    at = _float(f["at"], "at", where)
    assert at is not None
    return EdgeRecord(
        kind=f["kind"], edge=f["edge"], call_id=call_id, at=at, code=int(code),
        reason=_text(f["sip_reason"].replace("%7C", "|")), caller_tag=_text(f["caller_tag"]),
        callee_tag=_text(f["callee_tag"]), from_uri=uris["from"], to_uri=uris["to"],
        pai=uris["pai"], ruri=uris["ruri"], trunk=f["trunk"], rule=f["rule"],
        local=f["local"] == "1", siprec=f["siprec"] or None, required=f["required"],
        sampled_out=f["sampled_out"] == "1", node=f["node"],
        invited=_float(f["invited"], "invited", where, optional=True),
        answered=_float(f["answered"], "answered", where, optional=True),
        duration=duration, by=f["by"] or None, where=where)


def record_files(directory: Path) -> list[Path]:
    """The record files of one edge: ``calls_*.log`` and their rotated copies."""
    return sorted(p for p in directory.glob("calls_*.log*")
                  if p.is_file() and not p.name.endswith(_COMPRESSED))


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per complete line; text None for a line over MAX_LINE. An
    unterminated last line is a record still being written: not yielded."""
    with open(path, "rb") as fh:
        n = 0
        while True:
            raw = fh.readline(MAX_LINE + 2)
            if not raw:
                return
            n += 1
            if not raw.endswith(b"\n"):
                if len(raw) > MAX_LINE:  # over-long: skip to its end
                    while raw and not raw.endswith(b"\n"):
                        raw = fh.readline(MAX_LINE + 2)
                    yield n, None
                    continue
                return
            yield n, raw[:-1].decode("utf-8", "surrogateescape")


def read_edge_dir(directory: Path, *, since: float = 0.0, until: float | None = None,
                  max_errors: int = 1000) -> EdgeRecords:
    """Every record of one edge directory whose time falls in [since, until) — for an
    ``ended`` record, whose answer time does — with the lines that could not be used."""
    out = EdgeRecords()
    if not directory.is_dir():
        out.errors.append(AuditError("no such directory (is the edge's accounting set up?)",
                                     where=str(directory)))
        return out
    if not os.access(directory, os.R_OK | os.X_OK):
        out.errors.append(AuditError("not readable by this user", where=str(directory)))
        return out
    mode = directory.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        out.errors.append(AuditError(
            f"writable by group/others (mode {stat.S_IMODE(mode):04o}): records anyone can "
            "change are no evidence; chmod go-w", where=str(directory)))
    hi = until if until is not None else float("inf")
    for path in record_files(directory):
        out.files.append(str(path))
        try:
            for n, text in _lines(path):
                where = f"{path}:{n}"
                if text is None:
                    err = AuditError(f"line over {MAX_LINE} bytes", where=where)
                else:
                    try:
                        rec = parse_line(text, where)
                    except AuditError as exc:
                        err = exc
                    else:
                        t = rec.answered if rec.kind == "ended" and rec.answered else rec.at
                        if since <= t < hi:
                            out.records.append(rec)
                        continue
                if len(out.errors) < max_errors:
                    out.errors.append(err)
        except OSError as exc:
            out.errors.append(AuditError(f"unreadable: {exc.strerror or exc}", where=str(path)))
    if len(out.errors) >= max_errors:
        out.notes.append(f"{directory}: more than {max_errors} unusable lines; the first "
                         f"{max_errors} are listed")
    return out


def group_calls(records: Iterable[EdgeRecord]) -> dict[str, EdgeCall]:
    """Records by Call-ID (a repeated ``answered``/``ended`` keeps the first)."""
    calls: dict[str, EdgeCall] = {}
    for r in sorted(records, key=lambda r: r.at):
        c = calls.setdefault(r.call_id, EdgeCall(r.call_id))
        if r.kind == "answered":
            c.answered = c.answered or r
        elif r.kind == "ended":
            c.ended = c.ended or r
        else:
            c.failed.append(r)
    return calls
