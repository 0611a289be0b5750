"""The recording controller: SIPREC sessions from Kamailio + rtpengine to recording servers."""

from .api import ApiServer
from .dialog import RsDialog, RsReply, bump_version, set_direction
from .service import Controller, KeyedExecutor
from .session import OPEN_STATES, TRANSITIONS, Ev, RecordingSession, State
from .store import DuplicateSession, SessionStore

__all__ = ["OPEN_STATES", "TRANSITIONS", "ApiServer", "Controller", "DuplicateSession", "Ev",
           "KeyedExecutor", "RecordingSession", "RsDialog", "RsReply", "SessionStore", "State",
           "bump_version", "set_direction"]
