"""End-to-end tests: the shipped model, the CLI, notebooks, training (ndif/: the NDIF server)."""
