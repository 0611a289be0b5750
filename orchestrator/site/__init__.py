"""The site model: load, validate and describe a deployment (see :mod:`.model`)."""

from .loader import DEFAULT_SITE, embedded_names, json_schema, load, load_text, validate_data
from .model import Edge, MediaNode, Rule, Site, SrsGroup

__all__ = ["DEFAULT_SITE", "Edge", "MediaNode", "Rule", "Site", "SrsGroup", "embedded_names",
           "json_schema", "load", "load_text", "validate_data"]
