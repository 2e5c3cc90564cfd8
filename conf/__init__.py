"""Hydra configs, installed as the package simbench.conf (the runner reads them as pkg://simbench.conf)."""
