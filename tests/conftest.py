"""Shared test configuration: Hypothesis profiles.

`ci` (the default) runs at least 200 examples per property; `thorough` is for
local bug hunting, 10,000 per property (the stateful cluster machine among
them): HYPOTHESIS_PROFILE=thorough make test
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`thorough` runs 50 times the examples: 50 times the per-test time bound
    (pyproject's `timeout`), so a deep search is not cut short."""
    if PROFILE == "thorough":
        bound = 50 * float(config.getini("timeout") or 300)
        for item in items:
            item.add_marker(pytest.mark.timeout(bound))
