"""The training tests' fixtures, made once per worker and only read: a tiny IEMOCAP-shaped corpus whose clips carry
emotion-dependent tones, its features (Whisper tiny.en, two hidden states) and one fine-tuned fold."""
from __future__ import annotations

import pytest
from corpus_fixtures import make_iemocap
from training_helpers import ToneEncoder, tiny_config

from emoadapt.corpora import load_corpus
from emoadapt.errors import EmoadaptError
from emoadapt.store.extract import extract


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """(corpus, store path): 5 sessions x 20 utterances of 0.4-1.0 s, 4 classes; fold k = session k."""
    root = tmp_path_factory.mktemp("training")
    corpus = load_corpus(make_iemocap(root / "iemocap", utts_per_session=20, seconds=(0.4, 1.0)))
    try:
        from emoadapt.encoders import load_encoder
        encoder, layers = load_encoder("whisper-tiny.en"), [2, 4]
    except EmoadaptError:
        encoder, layers = ToneEncoder(), None
    extract(corpus.rows, encoder, root / "store", layers=layers, progress=False)
    return corpus, root / "store"



@pytest.fixture(scope="session")
def finetuned(data, tmp_path_factory):
    """One fine-tuned fold, trained on one thread like the tests that retrain it and compare weights (a session
    fixture is made before a test's function-scoped ``one_thread``; thread counts change float sums)."""
    import torch

    from emoadapt.training.stage2 import finetune
    corpus, store = data
    out = tmp_path_factory.mktemp("finetune")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return finetune(corpus, store, 1, out, config=tiny_config(), progress=False), out
    finally:
        torch.set_num_threads(threads)

