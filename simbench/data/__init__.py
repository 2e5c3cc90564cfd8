"""Datasets and robust image decoding."""
