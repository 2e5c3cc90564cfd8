"""simbench: benchmark and use methods for finding similar and duplicate images."""

__version__ = "0.1.0"
