"""SIP message parsing for the SIPREC code: a re-export of :mod:`orchestrator.sip`, where
the SIP toolkit lives (new code imports it from there)."""

from __future__ import annotations

from ..sip import NameAddr, SipMessage, looks_like_sip, parse_name_addr, parse_sip_message

__all__ = ["NameAddr", "SipMessage", "looks_like_sip", "parse_name_addr", "parse_sip_message"]
