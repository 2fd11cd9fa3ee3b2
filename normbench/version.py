"""The package version, in a leaf of its own: every module may read it without importing the package's
lazy API (``normbench/__init__.py``)."""
__version__ = "0.9.0"
