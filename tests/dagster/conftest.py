"""Fixtures of the Dagster-level tests."""

import dagster as dg
import pytest


@pytest.fixture
def instance(deepfeed_env):
    """A throwaway Dagster instance inside the test's home."""
    with dg.instance_for_test(temp_dir=str(deepfeed_env / "dagster")) as instance:
        yield instance
