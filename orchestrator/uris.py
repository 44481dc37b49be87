"""Tracking-URI checks that need no MLflow import (run while a sweep file is validated)."""

from __future__ import annotations

import urllib.parse

# Schemes MLflow's tracking client accepts: its own stores and servers, and the SQLAlchemy
# dialects of a database store (``postgresql+psycopg2://`` counts as ``postgresql``).
KNOWN_SCHEMES = (
    "http",
    "https",
    "sqlite",
    "file",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
    "databricks-uc",
    "uc",
)


def tracking_scheme_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be an MLflow tracking URI (an unknown scheme), or None when it can.

    A plain path (no scheme, or a Windows drive letter) is a local file store and passes.
    """
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if not scheme or len(scheme) == 1:
        return None
    base = scheme.split("+", 1)[0]
    if base in KNOWN_SCHEMES:
        return None
    known = ", ".join(f"{s}://" for s in KNOWN_SCHEMES[:6])
    hint = ""
    import difflib

    close = difflib.get_close_matches(base, KNOWN_SCHEMES, n=1, cutoff=0.6)
    if close:
        hint = f"; did you mean '{close[0]}://'?"
    return f"unknown scheme '{scheme}://' in {uri!r} (MLflow takes {known}, ...){hint}"
