"""CUDA sources, installed as the package simbench.kernels (see README.md here)."""
