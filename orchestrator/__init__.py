"""siprecctl: Kamailio + rtpengine call recording (local pcap and SIPREC).

The package keeps its top-level import cheap: subpackages are imported on first use,
so ``siprecctl ng ping`` starts fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "errors"]


def __getattr__(name: str):  # PEP 562: lazy subpackage access
    if name == "errors":
        from . import errors

        return errors
    raise AttributeError(name)
