"""The package version, importable from any layer without loading the package's top level."""

__version__ = "0.1.0"
