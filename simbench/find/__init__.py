"""`simbench find`: duplicate images in folders and PDFs, with provenance, and a report to review them.

Modules, in the order a run uses them: sources (folders, image files, PDFs -> Items), pdf (PyMuPDF:
every placement of an image on a page, rendered as placed), index (the --index feature store keyed by
content hash), cascade (the stages, their calibration, fusion and linking), outputs (pairs.csv,
groups.json, skipped.csv), report (report.html), pipeline (all of it); yearbook builds test PDFs.
"""
from __future__ import annotations

__all__ = ["find", "make_config"]


def find(*args, **kwargs):
    """simbench.find.pipeline.find (imported lazily: the CLI's --help stays fast)."""
    from simbench.find.pipeline import find as _find

    return _find(*args, **kwargs)


def make_config(*args, **kwargs):
    from simbench.find.cascade import make_config as _make_config

    return _make_config(*args, **kwargs)
