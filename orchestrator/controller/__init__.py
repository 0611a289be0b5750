"""The recording controller: SIPREC sessions from Kamailio + rtpengine to recording servers.

A sans-IO core per call (:mod:`.core`, inputs and actions in :mod:`.messages`, sessions in
:mod:`.session`), SRS choice and probes (:mod:`.selection`), the RS dialog
(:mod:`.dialog`), the driver (:mod:`.service`), the store, the HTTP API and metrics.
"""

from .api import ApiServer
from .core import CallCore
from .dialog import RsDialog, bump_version, set_direction
from .selection import SrsProber, SrsSelector
from .service import Controller, KeyedExecutor
from .session import OPEN_STATES, TRANSITIONS, Ev, RecordingSession, State
from .store import DuplicateSession, SessionStore

__all__ = ["OPEN_STATES", "TRANSITIONS", "ApiServer", "CallCore", "Controller",
           "DuplicateSession", "Ev", "KeyedExecutor", "RecordingSession", "RsDialog",
           "SessionStore", "SrsProber", "SrsSelector", "State", "bump_version",
           "set_direction"]
