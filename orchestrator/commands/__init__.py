"""One module per CLI subsystem; each exposes ``configure(parser)`` which sets ``func``."""
