"""Shared test helpers. Real corpora are found through `emoadapt.paths`; tests that need one skip, with the
reason, only where it is absent."""
from __future__ import annotations

import pytest

from emoadapt.paths import ENV_VAR, shared_corpus


@pytest.fixture
def shared_data():
    """Return a function name -> folder of that corpus in ../shared/data (or $EMOADAPT_DATA), skipping if absent."""

    def find(name: str):
        folder = shared_corpus(name)
        if folder is None:
            pytest.skip(f"shared corpus '{name}' not found: set {ENV_VAR} or place shared/data beside the checkout")
        return folder

    return find
