"""bitelab: a remote lab of embedded boards."""

__version__ = "0.1.0"
