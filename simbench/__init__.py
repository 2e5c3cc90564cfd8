"""simbench: benchmark and use methods for finding similar and duplicate images."""

__version__ = "0.1.0"
#: The Hydra configs: conf/ of the checkout, installed as this package (setup.py).
CONFIG_MODULE = "simbench.conf"
