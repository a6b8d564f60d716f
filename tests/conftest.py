"""Shared fixtures: paths to the committed fixture and external models; hypothesis profiles.

CI sets ``HYPOTHESIS_PROFILE=ci`` (see ``.ci/run``): property tests then draw the same examples on
every run, so a landing never depends on luck; local runs keep exploring new examples.
"""

import os
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
EXTERNAL = MODELS / "external"

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
