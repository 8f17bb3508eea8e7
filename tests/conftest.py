"""Shared test helpers. Real corpora are found through `emoadapt.paths`; tests that need one skip, with the
reason, only where it is absent."""
from __future__ import annotations

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and never stall when the machine is busy. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
