"""Shared fixtures: paths to the committed fixture and external models."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
EXTERNAL = MODELS / "external"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
