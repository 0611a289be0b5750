"""siprec."""
