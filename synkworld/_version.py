"""The package version: one place, read by pyproject.toml (setuptools dynamic) and the CLI."""

__version__ = "0.1.0"
