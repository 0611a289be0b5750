"""The reference SRS's session records on disk: ``<record_dir>/<session_id>.json``."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from ...errors import RecordingError
from .session import SrsSession

__all__ = ["write_record"]

log = logging.getLogger(__name__)


def write_record(directory: Path, rec: SrsSession) -> None:
    """Write ``rec`` as ``<directory>/<session_id>.json``, atomically (temp file + link or
    rename in the same directory). The first write never replaces an existing file (it takes
    ``<session_id>-N.json`` instead and remembers it in ``rec.json_path``); later writes of
    the same session replace its own file. Errors are logged, not raised."""
    try:
        if rec.json_path is not None:
            _atomic_write(directory, Path(rec.json_path), rec, replace=True)
            return
        for n in range(1000):
            path = directory / (f"{rec.session_id}.json" if n == 0
                                else f"{rec.session_id}-{n}.json")
            rec.json_path = str(path)
            if _atomic_write(directory, path, rec, replace=False):
                return
        raise RecordingError(f"no free file name for {rec.session_id}.json")
    except (OSError, RecordingError) as exc:
        log.error("session %s: cannot write its JSON record: %s", rec.session_id, exc)


def _atomic_write(directory: Path, path: Path, rec: SrsSession, *, replace: bool) -> bool:
    fd, tmp = tempfile.mkstemp(prefix=f".{rec.session_id}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(rec.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails if the name exists: never overwrite
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
