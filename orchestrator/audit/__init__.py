"""The completeness ledger: proof, from evidence the controller cannot fake, that every call
the policy requires was recorded — and every gap, with its reason.

Sources: the edge's own call records (Kamailio ``acc``, :mod:`.records`), the controller's
store (:func:`orchestrator.controller.metrics.ledger_facts`), the local recordings and the
SRSs' own session records (:mod:`.sources`). :mod:`.join` joins them (sans-IO) into one
:class:`LedgerEntry` per answered call; :mod:`.report` summarises and renders them
(``siprecctl audit``).
"""

from .facts import (
    ControllerCall,
    ControllerFacts,
    ControllerLoss,
    ControllerSession,
    LocalRecording,
    MediaRead,
)
from .join import SETUP_ALLOWANCE, AuditOptions, build_entry, build_ledger, paused_intervals
from .ledger import (
    LEDGER_SCHEMA,
    SCHEMA_VERSION,
    Gap,
    LedgerEntry,
    LocalEntry,
    Policy,
    SessionEntry,
    StreamMedia,
    Verdict,
)
from .records import FIELDS, EdgeCall, EdgeRecord, group_calls, parse_line, read_edge_dir
from .sources import (
    EdgeSources,
    IncrementalEdgeReader,
    load_edges,
    load_local,
    load_srs_counts,
    recording_dirs,
)

__all__ = [
    "FIELDS", "LEDGER_SCHEMA", "SCHEMA_VERSION", "SETUP_ALLOWANCE", "AuditOptions",
    "ControllerCall", "ControllerFacts", "ControllerLoss", "ControllerSession", "EdgeCall",
    "EdgeRecord", "EdgeSources", "Gap", "IncrementalEdgeReader", "LedgerEntry", "LocalEntry",
    "LocalRecording", "MediaRead", "Policy", "SessionEntry", "StreamMedia", "Verdict",
    "build_entry", "build_ledger", "group_calls", "load_edges", "load_local",
    "load_srs_counts", "parse_line", "paused_intervals", "read_edge_dir", "recording_dirs",
]
