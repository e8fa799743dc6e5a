"""The package version, in a module of its own so that any layer can record it without importing the
top-level package (which gives the public API and so imports every stage)."""

__version__ = "0.1.0"
