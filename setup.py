"""Packaging beyond pyproject.toml: conf/ and kernels/ stay at the top of the checkout and install as the
packages simbench.conf and simbench.kernels (their files found with importlib.resources), next to every
package under simbench/ (found, so a new subpackage needs no entry here)."""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["simbench", "simbench.*"]), "simbench.conf", "simbench.kernels"],
      package_dir={"simbench.conf": "conf", "simbench.kernels": "kernels"})
