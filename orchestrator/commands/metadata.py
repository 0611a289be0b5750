"""``siprecctl metadata``: validate RFC 7865 metadata, build test documents for an SRS.

``validate`` takes XML documents, whole SIP messages (multipart INVITEs) or directories and
prints the findings; exit 0 valid, 1 errors found, 2 an input could not be read.
``build`` turns a small JSON/YAML call description into a valid document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MetadataError

if TYPE_CHECKING:
    from ..siprec import Recording
from ._output import add_json_flag, print_json, print_table

SUFFIXES = (".xml", ".sip", ".msg", ".eml", ".txt")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="metadata_command", metavar="ACTION", required=True)
    v = sub.add_parser("validate", help="validate metadata documents or SIP messages",
                       description="Validate RFC 7865 metadata: XML documents, whole SIP "
                                   "messages, or directories of them ('-' reads stdin). Exit 0 "
                                   "valid, 1 errors found, 2 unreadable input.")
    v.add_argument("paths", nargs="+", metavar="PATH", help="file, directory or -")
    v.add_argument("--profile", choices=["strict", "legacy"], default="strict",
                   help="strict RFC 7865 (default) or lenient pre-RFC draft format")
    v.add_argument("--sdp", type=Path, help="RS SDP whose a=label values the streams must match")
    v.add_argument("--session", action="store_true",
                   help="the inputs are successive messages of one recording session: check "
                        "partial updates against the accumulated state")
    v.add_argument("--min-severity", choices=["info", "warning", "error"], default="info",
                   help="hide findings below this severity")
    add_json_flag(v)
    v.set_defaults(func=run_validate)

    b = sub.add_parser("build", help="build a document from a JSON/YAML call description",
                       description="Build a valid RFC 7865 document from a call description "
                                   "(see docs/metadata.md), for testing an SRS.")
    b.add_argument("description", type=Path, help="JSON or YAML file ('-' reads stdin)")
    b.add_argument("-o", "--output", type=Path,
                   help="write here instead of stdout (never over an existing file unless "
                        "--force, never into a recording directory)")
    b.add_argument("--force", action="store_true",
                   help="replace an existing output file (still never in a recording "
                        "directory)")
    b.add_argument("--multipart", type=Path, metavar="SDP",
                   help="emit a multipart/mixed body with this SDP and the metadata part")
    b.set_defaults(func=run_build)


# ------------------------------------------------------------------------------ validate

def _inputs(paths: list[str]) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """(source, bytes) of every readable input, and (source, reason) of the unreadable."""
    found: list[tuple[str, bytes]] = []
    bad: list[tuple[str, str]] = []
    for raw in paths:
        if raw == "-":
            found.append(("<stdin>", sys.stdin.buffer.read()))
            continue
        p = Path(raw)
        try:
            if p.is_dir():
                files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
                if not files:
                    bad.append((raw, "directory holds no .xml/.sip/.msg/.eml/.txt files"))
                for f in files:
                    try:
                        found.append((str(f), f.read_bytes()))
                    except OSError as exc:
                        bad.append((str(f), exc.strerror or str(exc)))
            else:
                found.append((raw, p.read_bytes()))
        except OSError as exc:
            bad.append((raw, exc.strerror or str(exc)))
    return found, bad


def run_validate(args: argparse.Namespace) -> int:
    from ..siprec import RecordingSessionValidator, Severity, validate_input

    order = {"info": 0, "warning": 1, "error": 2}
    floor = order[args.min_severity]
    sdp: bytes | None = None
    if args.sdp is not None:
        try:
            sdp = args.sdp.read_bytes()
        except OSError as exc:
            print(f"siprecctl: cannot read SDP {args.sdp}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    found, bad = _inputs(args.paths)
    shared = RecordingSessionValidator(args.profile) if args.session else None
    results: list[dict[str, Any]] = []
    errors = warnings = 0
    for source, data in found:
        v = shared or RecordingSessionValidator(args.profile)
        if sdp is not None and not data.lstrip().startswith((b"INVITE", b"UPDATE", b"SIP/")):
            findings = v.validate(data, sdp=sdp, source=source)
        else:
            findings = validate_input(data, v, source=source)
        errors += sum(f.severity is Severity.ERROR for f in findings)
        warnings += sum(f.severity is Severity.WARNING for f in findings)
        shown = [f for f in findings if order[f.severity.value] >= floor]
        results.append({"source": source, "findings": [f.as_dict() for f in shown]})
    status = 2 if bad else (1 if errors else 0)
    if args.json:
        print_json({"inputs": results, "unreadable": [{"source": s, "reason": r} for s, r in bad],
                    "errors": errors, "warnings": warnings, "exit": status})
        return status
    rows = [(r["source"], f["line"] if f["line"] is not None else "-", f["severity"], f["rule"],
             f["message"]) for r in results for f in r["findings"]]
    if rows:
        print_table(["source", "line", "severity", "rule", "message"], rows)
    for source, reason in bad:
        print(f"siprecctl: cannot read {source}: {reason}", file=sys.stderr)
    print(f"{len(found)} input(s): {errors} error(s), {warnings} warning(s)"
          + (f", {len(bad)} unreadable" if bad else ""))
    return status


# ------------------------------------------------------------------------------ build

def _load_description(path: Path) -> Any:
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise MetadataError(f"{where}: invalid YAML: {exc}") from exc


def _time(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        dt = value
    else:
        from ..siprec.parse import parse_datetime

        try:
            dt = parse_datetime(str(value))
        except ValueError as exc:
            raise MetadataError(f"{where}: {exc}") from exc
    if dt.tzinfo is None:
        raise MetadataError(f"{where}: {value} has no timezone (add Z or ±hh:mm)")
    return dt


def recording_from_description(desc: object) -> Recording:
    """The :class:`~orchestrator.siprec.Recording` a call description asks for."""
    from ..errors import SipError
    from ..siprec import (
        Extension,
        Group,
        NameID,
        Participant,
        ParticipantSessionAssoc,
        ParticipantStreamAssoc,
        Recording,
        Session,
        SessionRecordingAssoc,
        Stream,
        new_id,
        participant_from_header,
    )

    if not isinstance(desc, dict):
        raise MetadataError("description: expected a mapping with 'participants'")
    at = _time(desc["start_time"], "start_time") if "start_time" in desc else datetime.now(UTC)
    people = desc.get("participants")
    if not isinstance(people, list) or not people:
        raise MetadataError("participants: expected a non-empty list")
    group = Group(str(desc.get("group_id") or new_id()), associate_time=at)
    sid = str(desc.get("session_id") or new_id())
    session = Session(sid, sip_session_ids=tuple(str(x) for x in (
        [desc["sip_session_id"]] if desc.get("sip_session_id") else [])),
        group_ref=group.group_id, start_time=at)
    labels: list[str] = [str(x) for x in desc.get("streams", [])]
    for i, p in enumerate(people):
        if not isinstance(p, dict):
            raise MetadataError(f"participants[{i}]: expected a mapping")
        for key in ("send", "recv"):
            for lb in p.get(key, []):
                if str(lb) not in labels:
                    labels.append(str(lb))
    streams = {lb: Stream(new_id(), sid, lb) for lb in labels}
    participants, psts = [], []
    for i, p in enumerate(people):
        where = f"participants[{i}]"
        try:
            if "header" in p:
                part = participant_from_header(str(p["header"]), lang=p.get("lang"))
            elif "aor" in p:
                part = Participant(new_id(), (NameID(str(p["aor"]), p.get("name"), p.get("lang")),))
            else:
                raise MetadataError(f"{where}: needs 'aor' (with optional 'name') or 'header'")
        except SipError as exc:
            raise MetadataError(f"{where}.header: {exc}") from exc
        participants.append(part)
        send = [str(x) for x in p.get("send", [])]
        recv = [str(x) for x in p.get("recv", [lb for lb in labels if lb not in send])]
        psts.append(ParticipantStreamAssoc(part.participant_id,
                                           tuple(streams[lb].stream_id for lb in send),
                                           tuple(streams[lb].stream_id for lb in recv),
                                           associate_time=at))
    exts = tuple(Extension(str(e["namespace"]), str(e["name"]), e.get("text"))
                 for e in desc.get("extensions", []))
    return Recording(
        groups=(group,), sessions=(session,), participants=tuple(participants),
        streams=tuple(streams.values()),
        session_recording_assocs=(SessionRecordingAssoc(sid, at),),
        participant_session_assocs=tuple(ParticipantSessionAssoc(p.participant_id, sid, at)
                                         for p in participants),
        participant_stream_assocs=tuple(psts), extensions=exts)


_RECORDING_SUFFIXES = (".pcap", ".wav", ".meta")


def recording_dir_of(path: Path) -> Path | None:
    """The recording directory ``path`` lies in, if any: rtpengine's recording-dir (with
    ``pcaps/`` and ``metadata/``) or anything below it, or a directory holding recordings
    (``.pcap``, ``.wav``, ``.meta``, ``rtpengine-meta-*`` files, as rtpengine and the
    reference SRS write them)."""
    target = path.resolve()
    if target.suffix in _RECORDING_SUFFIXES or target.name.startswith("rtpengine-meta-"):
        return target.parent
    for d in (target.parent, *target.parent.parents):
        if (d / "pcaps").is_dir() and (d / "metadata").is_dir():
            return d
    try:
        with os.scandir(target.parent) as it:
            for n, entry in enumerate(it):
                if n >= 10_000:
                    break
                if entry.name.endswith(_RECORDING_SUFFIXES) \
                        or entry.name.startswith("rtpengine-meta-"):
                    return target.parent
    except OSError:
        pass
    return None


def write_output(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``data`` to ``path``: a new file, or with ``force`` a replaced one (atomically);
    never into a recording directory (recordings are never overwritten or mixed with other
    files). :class:`MetadataError`/:class:`RecordingError` say why not."""
    from ..errors import RecordingError

    rec_dir = recording_dir_of(path)
    if rec_dir is not None:
        raise RecordingError(f"{path}: {rec_dir} is a recording directory; siprecctl never "
                             "writes there (choose another output path)")
    if path.is_dir():
        raise MetadataError(f"{path} is a directory")
    try:
        if not force:
            try:
                with path.open("xb") as fh:  # exclusive create: no race with a file appearing
                    fh.write(data)
            except FileExistsError:
                raise MetadataError(f"{path} exists; use --force to replace it") from None
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("xb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise MetadataError(f"cannot write {path}: {exc.strerror or exc}") from exc


def run_build(args: argparse.Namespace) -> int:
    from ..siprec import build_metadata, build_siprec_body

    try:
        desc = _load_description(args.description)
        sdp = args.multipart.read_bytes() if args.multipart else None
    except OSError as exc:
        print(f"siprecctl: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    xml = build_metadata(recording_from_description(desc))
    out = xml
    if sdp is not None:
        ctype, body = build_siprec_body(sdp, xml)
        out = f"Content-Type: {ctype}\r\n\r\n".encode() + body
    if args.output:
        write_output(args.output, out, force=args.force)
    else:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    return 0
