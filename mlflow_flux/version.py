"""The package's version, in one place: the package face, the runs' tags and pyproject.toml read it."""

__version__ = "0.1.0"
