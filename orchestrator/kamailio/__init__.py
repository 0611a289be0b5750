"""kamailio."""
