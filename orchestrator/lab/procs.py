"""Moved to :mod:`orchestrator.daemons` (process supervision is not a lab concern).

Kept only as a re-export for ``tests/integration/test_siprec.py``, which still imports it;
new code imports :mod:`orchestrator.daemons`.
"""

from __future__ import annotations

from ..daemons import free_port, free_ports

__all__ = ["free_port", "free_ports"]
