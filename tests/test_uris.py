"""The tracking-URI scheme check run while a sweep file is validated."""

from __future__ import annotations

import pytest

from orchestrator.uris import tracking_scheme_problem


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1:5000", "https://mlflow.example.com", "sqlite:///mlflow.db",
     "file:///tmp/mlruns", "postgresql+psycopg2://u@h/db", "databricks", "mlruns", "C:/mlruns"],
)  # fmt: skip
def test_known_schemes_and_plain_paths_pass(uri: str) -> None:
    assert tracking_scheme_problem(uri) is None


def test_an_unknown_scheme_is_named_with_a_suggestion() -> None:
    problem = tracking_scheme_problem("htp://127.0.0.1:5000")
    assert problem is not None
    assert "unknown scheme 'htp://'" in problem and "did you mean 'http://'" in problem
    assert "did you mean" not in (tracking_scheme_problem("zzzz://x") or "")
