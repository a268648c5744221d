"""The test suite (a package, so tests.helpers imports from every subfolder).

unit/: fast, no trained model, no CLI runs; integration/: the shipped model end to end, the
CLI, notebooks, training, and ndif/ (the real NDIF server, marker ``ndif``)."""
