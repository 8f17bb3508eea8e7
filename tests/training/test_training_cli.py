"""The training verbs on the command line, the leakage guard, cross-corpus models."""
from __future__ import annotations

import json
import shutil

import pytest
from corpus_fixtures import make_ravdess
from tiny_settings import TINY
from training_helpers import (
    ToneEncoder,
    _encoder_of,
    tiny_config,
)

from emoadapt import cli
from emoadapt.corpora import load_corpus
from emoadapt.errors import StoreMismatch
from emoadapt.store.extract import extract
from emoadapt.store.features import FeatureStore
from emoadapt.training.evaluate import evaluate
from emoadapt.training.stage1 import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


# --- command line -------------------------------------------------------------------------------------------------
def test_cli_verbs_and_one_line_errors(data, finetuned, tmp_path, capsys, monkeypatch):
    corpus, store = data
    results, out = finetuned
    sets = [a for s in TINY if "epochs" not in s for a in ("--set", s)]  # --set would win over --epochs
    code = cli.main(["pretrain", "--store", str(store), "--corpus", str(corpus.root), "--fold", "2",
                     "--out", str(tmp_path / "s1"), "--pretrain-epochs", "1", "--no-la-loss", "--no-progress", *sets])
    assert code == 0 and "teacher adapter" in capsys.readouterr().out
    config = json.loads((tmp_path / "s1" / "config.json").read_text())
    assert config["config"]["pretrain"]["la_weight"] == 0 and config["config"]["pretrain"]["epochs"] == 1

    seen = {}  # pretrain --corpus --normalize speaker: each speaker's own statistics, the corpus naming the speakers
    import emoadapt.training.stage1
    monkeypatch.setattr(emoadapt.training.stage1, "pretrain", lambda *a, normalizer=None, **k: seen.update(n=normalizer) or "x")
    assert cli.main(["pretrain", "--store", str(store), "--corpus", str(corpus.root), "--normalize", "speaker",
                     "--out", str(tmp_path / "s1-speaker")]) == 0
    assert seen["n"].mode == "speaker" and set(seen["n"]._by_speaker) == {u.speaker for u in corpus.rows}
    monkeypatch.undo()

    code = cli.main(["finetune", "--corpus", str(corpus.root), "--store", str(store), "--fold", "2", "--init",
                     str(tmp_path / "s1"), "--out", str(tmp_path / "s2"), "--epochs", "1", "--no-progress", *sets])
    assert code == 0 and "fold 2 test: UA" in capsys.readouterr().out

    code = cli.main(["evaluate", "--model", str(out), "--corpus", str(corpus.root), "--store", str(store),
                     "--fold", "1"])
    assert code == 0 and f"UA {results['scores']['ua']:.2f}" in capsys.readouterr().out

    other = tmp_path / "other-store"  # features of another encoder: a model must refuse them
    extract(corpus.rows[:5], ToneEncoder(), other, progress=False)
    code = cli.main(["evaluate", "--model", str(out), "--corpus", str(corpus.root), "--store", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "other features" in err and len(err.strip().splitlines()) == 1

    code = cli.main(["cv", "--corpus", str(corpus.root), "--store", str(store), "--recipe", "nope",
                     "--out", str(tmp_path / "cv")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown recipe 'nope'" in err and len(err.strip().splitlines()) == 1
    code = cli.main(["cv", "--corpus", str(corpus.root), "--store", str(store), "--recipe", "adapter",
                     "--out", str(tmp_path / "cv"), "--set", "stage2.lr=fast"])
    assert code == 2 and "stage2.lr: Value 'fast'" in capsys.readouterr().err


def test_a_model_that_saw_a_test_speaker_is_refused(data, finetuned, tmp_path, capsys):
    """The README's old manual workflow (stage 1 on the corpus's own store, then finetune --init) is refused, and
    so is evaluating a model on speakers it was trained on; a model is scored on a corpus it never saw."""
    corpus, store = data
    results, out = finetuned
    sets = [a for s in TINY if "epochs" not in s for a in ("--set", s)]
    copy = tmp_path / "store-copy"  # the same corpus in another store folder
    shutil.copytree(store, copy)
    assert cli.main(["pretrain", "--store", str(copy), "--out", str(tmp_path / "s1-all"), "--pretrain-epochs", "1",
                     "--no-progress", *sets]) == 0
    seen = json.loads((tmp_path / "s1-all" / "adapter" / "seen.json").read_text())
    assert len(seen["ids"]) == len(corpus.rows) and seen["speakers"] == []  # a store alone: ids, no speakers
    capsys.readouterr()
    code = cli.main(["finetune", "--corpus", str(corpus.root), "--store", str(store), "--fold", "1", "--init",
                     str(tmp_path / "s1-all"), "--out", str(tmp_path / "ft"), "--epochs", "1", "--no-progress", *sets])
    err = capsys.readouterr().err
    assert code == 2 and "trained on 20 of its test utterances" in err and "fold 1 of iemocap" in err
    assert not (tmp_path / "ft").exists()

    # the safe workflow: stage 1 on fold 1's training speakers only (with --corpus, speakers are recorded too)
    assert cli.main(["pretrain", "--store", str(copy), "--corpus", str(corpus.root), "--fold", "1", "--out",
                     str(tmp_path / "s1-fold1"), "--pretrain-epochs", "1", "--no-progress", *sets]) == 0
    speakers = json.loads((tmp_path / "s1-fold1" / "adapter" / "seen.json").read_text())["speakers"]
    assert speakers and not any(s.startswith("iemocap:Ses01") for s in speakers)
    code = cli.main(["finetune", "--corpus", str(corpus.root), "--store", str(store), "--fold", "2", "--init",
                     str(tmp_path / "s1-fold1"), "--out", str(tmp_path / "ft2"), "--epochs", "1", "--no-progress",
                     *sets])  # fold 1's stage 1 saw fold 2's speakers
    assert code == 2 and "iemocap:Ses02" in capsys.readouterr().err

    model_seen = json.loads((out / "model" / "seen.json").read_text())
    assert model_seen["ids_sha256"] == json.loads((out / "model" / "model.json").read_text())["seen"]["ids_sha256"]
    assert len(model_seen["ids"]) == results["split"]["train"] + results["split"]["val"]
    for fold in (["--fold", "2"], []):  # trained on session 2's speakers; without a fold: every utterance
        code = cli.main(["evaluate", "--model", str(out), "--corpus", str(corpus.root), "--store", str(store), *fold])
        err = capsys.readouterr().err
        assert code == 2 and "of its test speakers (iemocap:Ses02F" in err and len(err.strip().splitlines()) == 1

    # evaluate without a fold on a corpus the model never saw: every utterance is scored
    other = make_ravdess(tmp_path / "ravdess", actors=4, emotions=(1, 3, 4, 5), seconds=0.6)
    other_store = tmp_path / "ravdess-store"
    extract(load_corpus(other, view="4class").rows, _encoder_of(store), other_store,
            layers=FeatureStore(store).layers, progress=False)
    report = evaluate(out, load_corpus(other, view="4class"), other_store)
    assert report["fold"] is None and sum(map(sum, report["scores"]["confusion"])) == 16
    assert report["scores"]["ua"] > 25  # the same emotion-dependent tones: better than chance across corpora


def test_cross_corpus_train_on_every_speaker_then_evaluate_on_another_corpus(data, tmp_path, capsys):
    """finetune --fold all on RAVDESS mapped to the shared label set, then evaluate on EMOVO through the same map
    (the cross-corpus rows of docs/RESULTS.md), in both protocols."""
    from corpus_fixtures import make_emovo
    _, store = data
    encoder, layers = _encoder_of(store), FeatureStore(store).layers
    ravdess = make_ravdess(tmp_path / "ravdess", actors=6, seconds=0.6)
    emovo = make_emovo(tmp_path / "emovo", speakers=("f1", "m1"), seconds=0.6)
    for root in (ravdess, emovo):
        extract(load_corpus(root).rows, encoder, tmp_path / f"{root.name}-store", layers=layers, progress=False)
    for normalize in ("global", "speaker"):
        out = tmp_path / f"all-{normalize}"
        code = cli.main(["finetune", "--corpus", str(ravdess), "--label-map", "shared7", "--store",
                         str(tmp_path / "ravdess-store"), "--fold", "all", "--recipe", "stats", "--normalize",
                         normalize, "--out", str(out)])
        printed = capsys.readouterr().out
        assert code == 0 and "trained on every speaker of ravdess, nothing tested" in printed, printed
        results = json.loads((out / "results.json").read_text())
        assert results["scores"] is None and results["fold"] is None and not (out / "predictions.csv").exists()
        assert len(results["speakers"]["train"]) + len(results["speakers"]["val"]) == 6
        code = cli.main(["evaluate", "--model", str(out), "--corpus", str(emovo), "--label-map", "shared7",
                         "--store", str(tmp_path / "emovo-store"), "--out", str(out / "emovo.json")])
        assert code == 0, capsys.readouterr().err
        report = json.loads((out / "emovo.json").read_text())
        assert report["classes"] == ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]
        assert sum(map(sum, report["scores"]["confusion"])) == 2 * 7 * 2  # every EMOVO clip, 7 shared classes
        assert report["protocol"]["normalize"] == normalize
        # 4 of the 7 classes have their own tone, the other 3 share one: far above chance (14.3)
        assert report["scores"]["ua"] > 40, report["scores"]
    with pytest.raises(SystemExit) as refused:  # argparse: usage, the reason, exit status 2
        cli.main(["finetune", "--corpus", str(ravdess), "--store", str(tmp_path / "ravdess-store"), "--fold", "most",
                  "--out", str(tmp_path / "x")])
    assert refused.value.code == 2 and "'most' is neither a fold number nor 'all'" in capsys.readouterr().err


def test_mixing_stores_of_different_encoders_is_refused(data, tmp_path):
    corpus, store = data
    other = tmp_path / "other-store"
    extract(corpus.rows[:5], ToneEncoder(), other, progress=False)
    if FeatureStore(other).meta["fingerprint"] == FeatureStore(store).meta["fingerprint"]:
        pytest.skip("the fixture store was made by the stand-in encoder itself")
    with pytest.raises(StoreMismatch, match="cannot be mixed"):
        pretrain([store, other], tmp_path / "s1", config=tiny_config(), progress=False)


