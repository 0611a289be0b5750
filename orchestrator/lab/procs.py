"""Moved to :mod:`orchestrator.daemons` (process supervision is not a lab concern).

Kept only as a re-export for the tests that still import it (``tests/integration/
test_siprec.py``, ``test_drills.py`` on main); new code imports :mod:`orchestrator.daemons`.
"""

from __future__ import annotations

from ..daemons import free_port, free_ports, tcp_open

__all__ = ["free_port", "free_ports", "tcp_open"]
