"""The `hones-nn` command line (installed as the package ``hones_nn.cli``)."""
