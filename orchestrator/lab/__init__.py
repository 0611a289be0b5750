"""Lab: process supervision, network namespaces, reference SRS, load."""
