"""Unit tests run on a machine without kamailio, rtpengine, sipp or kamcli: the check that
they are installed belongs to the integration tests only (tests/integration/conftest.py).

To see it (root, a private mount namespace: the daemons hidden, PATH without them)::

    unshare -m sh -c 'mount -t tmpfs none /usr/sbin &&
      for b in rtpengine sipp kamcli; do mount --bind /dev/null /usr/bin/$b; done &&
      PATH=/nonexistent .venv/bin/python -m pytest tests/unit -q'
"""

from __future__ import annotations

import pytest


def test_unit_tests_do_not_ask_for_the_daemons(request: pytest.FixtureRequest) -> None:
    assert "_daemons_installed" not in request.fixturenames
