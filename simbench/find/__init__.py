"""`simbench find`: duplicate images in folders and PDFs, with provenance, and a report to review them.

Modules, in the order a run uses them: sources (folders, image files, PDFs -> Items), pdf (PyMuPDF:
every placement of an image on a page, rendered as placed), index (the --index feature store keyed by
content hash), cascade (the stages, their calibration, fusion and linking), outputs (pairs.csv,
groups.json, skipped.csv), report (report.html), pipeline (all of it); yearbook builds test PDFs.
"""
from __future__ import annotations

import sys
import types

__all__ = ["find", "make_config"]


class _CallableModule(types.ModuleType):
    """`simbench.find(paths, ...)` is the Python API's find (simbench.api.find); once this package is
    imported, `simbench.find` names the package, so the package itself answers the call."""

    def __call__(self, *args, **kwargs):
        from simbench.api import find as api_find

        return api_find(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def find(*args, **kwargs):
    """simbench.find.pipeline.find (imported lazily: the CLI's --help stays fast)."""
    from simbench.find.pipeline import find as _find

    return _find(*args, **kwargs)


def make_config(*args, **kwargs):
    from simbench.find.cascade import make_config as _make_config

    return _make_config(*args, **kwargs)
