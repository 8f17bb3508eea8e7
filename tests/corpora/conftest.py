"""Read-only corpus fixtures of the corpus tests."""
from __future__ import annotations

import pytest
from corpus_fixtures import make_iemocap, make_ravdess


@pytest.fixture(scope="module")
def ravdess_dir(tmp_path_factory):
    """24 actors x 8 emotions, shared by the tests that only read it."""
    return make_ravdess(tmp_path_factory.mktemp("ravdess"))


@pytest.fixture(scope="module")
def iemocap_dir(tmp_path_factory):
    """5 sessions with IEMOCAP_COUNTS utterances each, shared by the tests that only read it."""
    return make_iemocap(tmp_path_factory.mktemp("iemocap"))
