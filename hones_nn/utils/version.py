"""The package version, in one place (read by pyproject.toml, the front door and table metadata)."""

__version__ = "0.1.0"
