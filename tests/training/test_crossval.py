"""Cross-validation: folds and means, skipping finished folds, the full recipe, shared and per-fold stage 1."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from training_helpers import (
    _encoder_of,
    assert_same_state,
    state_of,
    tiny_config,
)

from emoadapt.errors import EmoadaptError, LeakageError
from emoadapt.modelfolder import load_model
from emoadapt.store.extract import extract
from emoadapt.store.features import FeatureStore
from emoadapt.training import crossval, stage2
from emoadapt.training.checkpoint_io import (
    load_checkpoint_file,
)
from emoadapt.training.crossval import run_cv
from emoadapt.training.settings import load_config
from emoadapt.training.stage1 import pretrain
from emoadapt.training.stage2 import finetune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)


# --- cross-validation ---------------------------------------------------------------------------------------------
def test_cv_writes_fold_and_mean_results_and_skips_finished_folds(data, tmp_path, monkeypatch):
    corpus, store = data
    results = run_cv(corpus, store, "superb", tmp_path, folds=[1, 2], config=tiny_config(), progress=False,
                     log=lambda *_: None)
    for k in (1, 2):
        fold = json.loads((tmp_path / f"fold_{k}" / "results.json").read_text())
        assert fold["fold"] == k and fold["scores"]["count"] == 20 and fold["recipe"] == "superb"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["protocol"]["folds"] == [1, 2] and saved["protocol"]["corpus"] == "iemocap"
    assert saved["classes"] == corpus.labels and saved["seed"] == 0 and saved["recipe"] == "superb"
    assert saved["encoder"]["fingerprint"] == FeatureStore(store).meta["fingerprint"]
    assert saved["config"]["stage2"]["epochs"] == 6 and "git" in saved
    uas = [saved["folds"][k]["ua"] for k in ("1", "2")]
    assert saved["mean_std"]["ua"]["mean"] == pytest.approx(np.mean(uas))
    assert saved["mean_std"]["ua"]["std"] == pytest.approx(np.std(uas))
    assert np.sum(saved["confusion_pooled"]) == 40
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["mean_std"] == saved["mean_std"]
    for k in ("1", "2"):  # temperature scaling is on by default: its T, the test ECE and the reliability diagram
        line = saved["folds"][k]["temperature"]
        assert line["T"] > 0 and line["fitted_on"] == "validation speakers"
        assert 0 <= line["ece_closed_after"] <= 100 and 0 <= line["ece_closed_before"] <= 100
        assert (tmp_path / f"fold_{k}" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    calls = []
    real = crossval.train_stage2
    monkeypatch.setattr(crossval, "train_stage2", lambda *a, **k: calls.append(a[0].fold) or real(*a, **k))
    (tmp_path / "fold_2" / "results.json").unlink()
    again = run_cv(corpus, store, "superb", tmp_path, folds=[1, 2], config=tiny_config(), progress=False,
                   log=lambda *_: None)
    assert calls == [2]  # fold 1 was finished: skipped; fold 2 resumed from its own folder
    assert again["mean_std"] == saved["mean_std"]
    with pytest.raises(EmoadaptError, match="other settings"):
        run_cv(corpus, store, "superb", tmp_path, folds=[1, 2], config=tiny_config("seed=4"), progress=False)


def test_frozen_adapter_epochs_train_only_the_head_then_everything(data, tmp_path):
    corpus, store = data
    seen = []

    class Snapshot(Callback):
        def on_train_start(self, trainer, module):
            seen.append((state_of(module.model.adapter), state_of(module.model.pooling)))

        def on_train_epoch_end(self, trainer, module):
            seen.append((state_of(module.model.adapter), state_of(module.model.pooling)))

    config = tiny_config("stage2.epochs=3", "stage2.freeze_adapter_epochs=2", "stage2.warmup_fraction=0.2")
    finetune(corpus, store, 1, tmp_path, config=config, progress=False, callbacks=[Snapshot()])
    start, *epochs = seen
    assert len(epochs) == 3
    for adapter, pooling in epochs[:2]:  # a linear probe on the adapter's features: only the head moves
        assert_same_state(adapter, start[0])
        assert any(not torch.equal(pooling[k], v) for k, v in start[1].items())
    assert any(not torch.equal(epochs[2][0][k], v) for k, v in start[0].items())  # then the adapter trains too
    with pytest.raises(EmoadaptError, match="no adapter"):
        finetune(corpus, store, 1, tmp_path / "superb", recipe="superb", config=config, progress=False)


def test_a_group_held_for_every_update_never_moves():
    from emoadapt.training.trainer import warmup_cosine
    held, free = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [held], "hold_steps": 10}, {"params": [free]}], lr=1.0)
    scheduler = warmup_cosine(optimizer, 10, 0.1, 0.0)["scheduler"]
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert all(h == 0.0 for h, _ in lrs) and max(f for _, f in lrs) == pytest.approx(1.0)


def test_full_recipe_runs_stage1_then_stage2_from_the_teacher(data, tmp_path, monkeypatch):
    corpus, store = data
    starts = []
    monkeypatch.setattr(stage2.FinetuneModule, "on_train_start",
                        lambda self: starts.append(state_of(self.model.adapter)), raising=False)
    run_cv(corpus, store, "full", tmp_path, folds=[3], config=tiny_config(), progress=False, log=lambda *_: None)
    fold = tmp_path / "fold_3"
    teacher = load_model(fold / "stage1" / "adapter")
    assert teacher.info["kind"] == "adapter" and teacher.info["utterances"] == \
        json.loads((fold / "results.json").read_text())["split"]["train"]  # stage 1 saw the training split only
    assert_same_state(starts[0], teacher.model.state_dict())
    student = {k[len("objective.student."):]: v for k, v in
               load_checkpoint_file(fold / "stage1" / "checkpoints" / "last.ckpt")["state_dict"].items()
               if k.startswith("objective.student.")}
    assert any(not torch.equal(student[k], v) for k, v in starts[0].items())  # the teacher, not the student
    assert json.loads((fold / "results.json").read_text())["init"]["path"] == str(fold / "stage1" / "adapter")


def test_shared_stage1_from_other_audio_serves_every_fold(data, tmp_path, monkeypatch):
    corpus, store = data
    other = tmp_path / "other-store"  # stands in for the unlabeled pool: session 1 only, no speaker of folds 2-3
    extract([r for r in corpus.rows if r.speaker.startswith("Ses01")], _encoder_of(store), other,
            layers=FeatureStore(store).layers, progress=False)
    stage1 = pretrain([other], tmp_path / "stage1", config=tiny_config())
    starts = []
    monkeypatch.setattr(stage2.FinetuneModule, "on_train_start",
                        lambda self: starts.append(state_of(self.model.adapter)), raising=False)
    results = run_cv(corpus, store, "full", tmp_path / "cv", folds=[2, 3], config=tiny_config(),
                     stage1=tmp_path / "stage1", progress=False, log=lambda *_: None)
    teacher = load_model(stage1).model.state_dict()
    assert len(starts) == 2 and all(assert_same_state(s, teacher) is None for s in starts)
    assert not (tmp_path / "cv" / "fold_2" / "stage1").exists()  # no per-fold stage 1
    assert results["shared_stage1"]["path"] == str(stage1) and results["shared_stage1"]["stores"] == [str(other)]
    assert sorted(results["folds"]) == ["2", "3"]

    # the same corpus extracted into another folder: caught by what the adapter saw, not by the store's path
    copy = tmp_path / "same-corpus-other-folder"
    shutil.copytree(store, copy)
    on_corpus = pretrain([copy], tmp_path / "stage1-on-corpus", config=tiny_config("pretrain.epochs=1"))
    with pytest.raises(LeakageError, match="trained on 20 of its test utterances .* of fold 2 of iemocap"):
        run_cv(corpus, store, "full", tmp_path / "cv2", folds=[2], config=tiny_config(),
               stage1=on_corpus.parent, progress=False)
    assert not (tmp_path / "cv2").exists()
    with pytest.raises(EmoadaptError, match="only applies to recipe 'full'"):
        run_cv(corpus, store, "adapter", tmp_path / "cv3", folds=[2], config=tiny_config(),
               stage1=tmp_path / "stage1", progress=False)


def test_cv_with_an_unlabeled_store_pretrains_on_the_training_split_plus_that_audio(data, tmp_path):
    corpus, store = data
    pool = tmp_path / "pool"  # unlabeled audio of session 1 only: no speaker of fold 3
    pool_rows = [r for r in corpus.rows if r.speaker.startswith("Ses01")]
    extract(pool_rows, _encoder_of(store), pool, layers=FeatureStore(store).layers, progress=False)
    results = run_cv(corpus, store, "full", tmp_path / "cv", folds=[3], config=tiny_config("pretrain.epochs=1"),
                     extra_unlabeled_stores=[pool], progress=False, log=lambda *_: None)
    fold = json.loads((tmp_path / "cv" / "fold_3" / "results.json").read_text())
    adapter = json.loads((tmp_path / "cv" / "fold_3" / "stage1" / "adapter" / "model.json").read_text())
    assert adapter["utterances"] == fold["split"]["train"] + len(pool_rows)
    assert results["unlabeled_stores"] == [{"root": str(pool), "utterances": len(pool_rows)}]
    stage1_config = json.loads((tmp_path / "cv" / "fold_3" / "stage1" / "config.json").read_text())
    assert stage1_config["data"]["stores"] == [str(store), str(pool)]
    seen = json.loads((tmp_path / "cv" / "fold_3" / "stage1" / "adapter" / "seen.json").read_text())
    assert not any(s.startswith("iemocap:Ses03") for s in seen["speakers"])


def test_linear_probe_bench_and_its_leakage_guard(data, tmp_path, capsys):
    import importlib.util
    corpus, store = data
    spec = importlib.util.spec_from_file_location("linear_probe", Path(__file__).parents[2] / "bench" / "linear_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.run(["--corpus", str(corpus.root), "--store", str(store), "--out", str(tmp_path / "probe.json")]) == 0
    report = json.loads((tmp_path / "probe.json").read_text())
    assert sorted(report["folds"]) == ["1", "2", "3", "4", "5"] and report["mean_std"]["ua"]["mean"] > 50
    assert all(v["C"] in probe.C_GRID for v in report["chosen_on_validation"].values())
    # a stage 1 trained on the corpus itself (another store folder) has seen every fold's test speakers
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    pretrain([copy], tmp_path / "s1", config=tiny_config("pretrain.epochs=1"), progress=False)
    capsys.readouterr()
    assert probe.run(["--corpus", str(corpus.root), "--store", str(store), "--adapter", str(tmp_path / "s1")]) == 2
    err = capsys.readouterr().err
    assert "test utterances" in err and "fold 1 of iemocap" in err and len(err.strip().splitlines()) == 1




def test_leave_one_corpus_out_tests_each_corpus_and_scores_closed_over_its_classes(data, tmp_path):
    from dataclasses import replace
    corpus, store = data
    source = {1: "a", 2: "a", 3: "a", 4: "b", 5: "b"}
    rows = [replace(u, extras={**u.extras, "corpus": source[corpus.folds.assignments[u.id]]}) for u in corpus.rows
            if not (source[corpus.folds.assignments[u.id]] == "b" and u.label == corpus.labels[0])]  # b lacks a class
    merged = replace(corpus, rows=rows, folds=corpus.folds.restrict(u.id for u in rows))
    results = run_cv(merged, store, "stats", tmp_path, config=tiny_config(), protocol="corpus", progress=False,
                     log=lambda *_: None)
    assert results["protocol"]["kind"] == "leave-one-corpus-out"
    assert results["protocol"]["targets"] == {"1": "a", "2": "b"}
    fold_b = json.loads((tmp_path / "fold_2" / "results.json").read_text())
    in_b = {u.speaker for u in rows if u.extras["corpus"] == "b"}
    assert set(fold_b["speakers"]["test"]) == in_b and not in_b & set(fold_b["speakers"]["val"])
    assert fold_b["split"]["test"] == sum(1 for u in rows if u.extras["corpus"] == "b")
    closed = np.asarray(fold_b["scores_closed"]["confusion"])
    assert closed[:, 0].sum() == 0  # never predicts the class corpus b lacks
    assert np.asarray(fold_b["scores"]["confusion"]).sum() == closed.sum()
    assert results["folds"]["2"]["closed"]["ua"] == fold_b["scores_closed"]["ua"]
    assert results["mean_std_closed"]["ua"]["mean"] == pytest.approx(
        np.mean([results["folds"][k]["closed"]["ua"] for k in ("1", "2")]))
    one_by_one = tmp_path / "one-by-one"  # folds run in separate calls resume one run folder
    run_cv(merged, store, "stats", one_by_one, folds=[2], config=tiny_config(), protocol="corpus", progress=False,
           log=lambda *_: None)
    again = run_cv(merged, store, "stats", one_by_one, folds=[1, 2], config=tiny_config(), protocol="corpus",
                   progress=False, log=lambda *_: None)
    assert again["protocol"]["targets"] == {"1": "a", "2": "b"}
    assert again["folds"]["2"]["closed"]["ua"] == results["folds"]["2"]["closed"]["ua"]
    with pytest.raises(EmoadaptError, match="emoadapt merge"):
        run_cv(corpus, store, "stats", tmp_path / "plain", config=tiny_config(), protocol="corpus", progress=False,
               log=lambda *_: None)


def test_choose_by_corpus_holds_each_training_corpus_out_in_turn(data, tmp_path):
    from dataclasses import replace

    corpus, store = data
    source = {1: "a", 2: "a", 3: "c", 4: "b", 5: "b"}
    rows = [replace(u, extras={**u.extras, "corpus": source[corpus.folds.assignments[u.id]]}) for u in corpus.rows]
    merged = replace(corpus, rows=rows)
    config = load_config(None, ["choose_by=corpus", "head.c_grid=[0.01,1.0]"], base=tiny_config())
    run_cv(merged, store, "stats", tmp_path, folds=[2], config=config, protocol="corpus", progress=False,
           log=lambda *_: None)
    chosen = json.loads((tmp_path / "fold_2" / "results.json").read_text())["closed_form"]
    assert json.loads((tmp_path / "results.json").read_text())["folds"]["2"]["closed_form"] == chosen  # kept in cv's
    assert chosen["chosen_on"] == "each training corpus held out in turn (a, c)"
    assert set(chosen["val_ua"]) == {"0.01", "1.0"} and chosen["C"] in (0.01, 1.0)
    with pytest.raises(EmoadaptError, match="choose_by=corpus applies to the closed-form recipes"):
        run_cv(merged, store, "superb", tmp_path / "superb", config=config, protocol="corpus", progress=False,
               log=lambda *_: None)


def test_training_speakers_shrinkage_is_chosen_on_training_corpora_read_without_a_reference(data, tmp_path,
                                                                                            monkeypatch):
    """calibration.train_shrink_grid: τ chosen with each training corpus held out and read with the others' population
    statistics; the fast path (frame moments) scores what the package's own normaliser and pooling give, and the
    fold's model is trained and recorded with the chosen τ, on fold data built once (with that τ)."""
    from dataclasses import replace

    from emoadapt.calibration import make_normalizer, shrunk
    from emoadapt.corpora.base import speaker_group
    from emoadapt.modelfolder import read_model_info
    from emoadapt.model.pooling import utterance_statistics
    from emoadapt.store.dataset import encoder_info
    from emoadapt.store.features import FrameMoments
    from emoadapt.training import data as fold_module
    from emoadapt.training.closed_form import all_class_probabilities, fit_logistic, pooled_features
    from emoadapt.training.data import FoldData, labelled_dataset
    from emoadapt.training.metrics import closed_predictions, score
    from emoadapt.training.settings import with_store_dims

    corpus, store = data
    source = {1: "a", 2: "a", 3: "c", 4: "b", 5: "b"}
    rows = [replace(u, extras={**u.extras, "corpus": source[corpus.folds.assignments[u.id]]}) for u in corpus.rows]
    merged = replace(corpus, rows=rows)
    config = load_config(None, ["choose_by=corpus", "head.c_grid=[0.1]", "normalize=speaker",
                                "calibration.scope=none", "calibration.train_shrink_grid=[0,1000]"], base=tiny_config())
    built = []  # the train_shrink of every normaliser the fold's data is built with
    real_normalizer = fold_module.make_normalizer
    monkeypatch.setattr(fold_module, "make_normalizer", lambda config, *a, **k: built.append(
        config.calibration.train_shrink) or real_normalizer(config, *a, **k))
    results = run_cv(merged, store, "stats", tmp_path, folds=[2], config=config, protocol="corpus", progress=False,
                     log=lambda *_: None)
    choice = json.loads((tmp_path / "fold_2" / "results.json").read_text())["choices"]["calibration.train_shrink"]
    assert results["folds"]["2"]["choices"]["calibration.train_shrink"] == choice
    assert set(choice["held_out_ua"]) == {"0", "1000"} and choice["chosen_on"].startswith(
        "each training corpus held out in turn (a, c)")
    assert choice["train_shrink"] == max((0.0, 1000.0), key=lambda t: (round(choice["held_out_ua"][f"{t:g}"], 6), t))
    recorded = read_model_info(tmp_path / "fold_2" / "model")["config"]["calibration"]
    assert recorded["train_shrink"] == choice["train_shrink"]
    assert built == [choice["train_shrink"]]  # one pass over the store, after the choice
    encoder = encoder_info(FeatureStore(store))
    unchosen = FoldData(merged, FeatureStore(store), 2, config, merged.labels, 50.0)
    with pytest.raises(EmoadaptError, match="chosen before the fold's data is built"):  # data built without the choice
        stage2.train_stage2(unchosen, tmp_path / "unchosen", recipe="stats", config=with_store_dims(config, encoder),
                            encoder=encoder)
    assert not (tmp_path / "unchosen").exists()  # refused before the run folder is claimed

    # the slow path for the chosen τ: corpus a held out, its speakers read with c's population, c's shrunk toward it
    tau, store = choice["train_shrink"], FeatureStore(store)
    training = replace(merged, rows=[u for u in rows if u.extras["corpus"] in ("a", "c")])
    held_out = [u.id for u in training.rows if u.extras["corpus"] == "a"]
    outside = [u.id for u in training.rows if u.extras["corpus"] == "c"]
    shrunk_config = load_config(None, [f"calibration.train_shrink={tau}"], base=config)
    normalizer = make_normalizer(shrunk_config, training, store, test_ids=held_out)
    labels = merged.labels
    pool = lambda x, mask: utterance_statistics(x, mask)  # noqa: E731 - the stats recipe's pooling
    x_out, y_out = pooled_features(pool, labelled_dataset(training, store, outside, labels, normalizer=normalizer), 8)
    x_in, y_in = pooled_features(pool, labelled_dataset(training, store, held_out, labels, normalizer=normalizer), 8)
    probabilities = all_class_probabilities(*fit_logistic(x_out, y_out, 0.1), x_in, len(labels))
    slow = score(y_in.tolist(), closed_predictions(y_in.tolist(), probabilities), labels).ua
    assert slow == pytest.approx(choice["held_out_ua_by_corpus"]["a"], abs=1e-6)
    moments = FrameMoments(store, held_out + outside)  # the features the choice fits on, as the fast path makes them
    population = moments.statistics(outside)
    assert np.allclose(moments.pooled(held_out, [population] * len(held_out)), x_in, atol=1e-4)
    speaker_of = speaker_group(training)
    members = {s: [i for i in outside if speaker_of(i) == s] for s in {speaker_of(i) for i in outside}}
    statistics = {s: shrunk(moments.statistics(ids), population, len(ids), tau)[0] for s, ids in members.items()}
    fast = moments.pooled(outside, [statistics[speaker_of(i)] for i in outside])
    assert np.allclose(fast, x_out, atol=1e-4) and not np.allclose(fast, moments.pooled(
        outside, [moments.statistics(members[speaker_of(i)]) for i in outside]), atol=1e-2)  # the shrinkage shows

    with pytest.raises(EmoadaptError, match="train_shrink_grid is chosen with each training corpus held out"):
        run_cv(merged, store, "stats", tmp_path / "global", config=load_config(
            None, ["normalize=global"], base=config), protocol="corpus", progress=False, log=lambda *_: None)


def test_stage1_on_the_test_audio_is_a_labelled_protocol_of_its_own(data, tmp_path, monkeypatch):
    """pretrain.test_audio: each fold's stage 1 hears its test utterances (never their labels); the leakage guard lets
    cv's own stage 1 through and the results say which protocol it was."""
    from dataclasses import replace

    from emoadapt.modelfolder import read_model_info, read_seen
    from emoadapt.training.reports import compare_runs
    corpus, store = data
    source = {1: "a", 2: "a", 3: "a", 4: "b", 5: "b"}
    rows = [replace(u, extras={**u.extras, "corpus": source[corpus.folds.assignments[u.id]]}) for u in corpus.rows]
    merged = replace(corpus, rows=rows)
    config = load_config(None, ["pretrain.test_audio=true"], base=tiny_config())
    results = run_cv(merged, store, "full", tmp_path, folds=[2], config=config, protocol="corpus", progress=False,
                     log=lambda *_: None)
    stage1 = tmp_path / "fold_2" / "stage1" / "adapter"
    heard = read_seen(stage1, read_model_info(stage1)).ids
    test = {u.id for u in rows if u.extras["corpus"] == "b"}
    assert test <= heard  # the target's audio was in stage 1
    assert results["protocol"]["stage1_test_audio"] and not results["protocol"]["speaker_independent"]
    assert compare_runs([tmp_path])[0]["protocol"].startswith("leave-one-corpus-out, stage 1 on the test")
    with pytest.raises(EmoadaptError, match="pretrain.test_audio applies to recipe 'full'"):
        run_cv(merged, store, "adapter", tmp_path / "adapter", config=config, protocol="corpus", progress=False,
               log=lambda *_: None)

    # pretrain.test_audio_share: the test audio gets that share of stage 1's draws, whatever its clip count
    import emoadapt.training.stage1 as stage1_module
    shares, plain_loader = [], stage1_module.train_loader
    def loader(dataset, *args, share=None, **kwargs):
        shares.append(({dataset.items[k][1] for k in share[0]}, share[1]))
        return plain_loader(dataset, *args, share=share, **kwargs)
    monkeypatch.setattr(stage1_module, "train_loader", loader)
    said = []
    run_cv(merged, store, "full", tmp_path / "share", folds=[2], config=load_config(
        None, ["pretrain.test_audio_share=0.5"], base=config), protocol="corpus", progress=False, log=said.append)
    assert shares == [(test, 0.5)] and any("(50% of the draws)" in line for line in said)
    with pytest.raises(EmoadaptError, match="test_audio_share=0.5 weighs .* needs pretrain.test_audio=true"):
        run_cv(merged, store, "full", tmp_path / "share-alone", folds=[2], config=load_config(
            None, ["pretrain.test_audio_share=0.5"], base=tiny_config()), protocol="corpus", progress=False)
    monkeypatch.undo()
    from emoadapt.training.stage1 import pretrain  # no test audio outside cv: refused before the folder is claimed
    with pytest.raises(EmoadaptError, match="test_audio_share needs test audio and other audio .* 0 of its"):
        pretrain([store], tmp_path / "alone", config=load_config(
            None, ["pretrain.test_audio=true", "pretrain.test_audio_share=0.5"], base=tiny_config()), progress=False)
    assert not (tmp_path / "alone" / "config.json").exists()

    # a stage-2 variant on that run's stage 1 (--stage1-from): no stage 1 of its own, started from that teacher
    frozen = load_config(None, ["stage2.freeze_adapter_epochs=1"], base=config)
    said = []
    variant = run_cv(merged, store, "full", tmp_path / "frozen", folds=[2], config=frozen, protocol="corpus",
                     progress=False, log=said.append, stage1_from=tmp_path)
    assert not (tmp_path / "frozen" / "fold_2" / "stage1").exists() and f"fold 2: stage 1 from {stage1}" in said
    assert json.loads((tmp_path / "frozen" / "fold_2" / "results.json").read_text())["init"]["path"] == str(stage1)
    assert variant["stage1_from"] == {"run": str(tmp_path), "test_audio": True}
    assert variant["protocol"]["stage1_test_audio"]  # still tabled apart
    for settings, message in (([], "other settings \\(pretrain\\)"),  # without test_audio: another stage 1
                              (["pretrain.test_audio=true", "seed=3"], "other settings \\(seed\\)")):
        with pytest.raises(EmoadaptError, match=message):
            run_cv(merged, store, "full", tmp_path / "other", folds=[2], config=load_config(None, settings,
                   base=tiny_config()), protocol="corpus", progress=False, stage1_from=tmp_path)
    with pytest.raises(EmoadaptError, match="stage 1 of fold 1 is not finished"):
        run_cv(merged, store, "full", tmp_path / "other", folds=[1], config=config, protocol="corpus",
               progress=False, stage1_from=tmp_path)
    with pytest.raises(EmoadaptError, match="another corpus or protocol"):
        run_cv(merged, store, "full", tmp_path / "other", folds=[2], config=config, progress=False,
               stage1_from=tmp_path)
    with pytest.raises(EmoadaptError, match="needs a `cv --recipe full` run"):
        run_cv(merged, store, "full", tmp_path / "other", folds=[2], config=config, protocol="corpus",
               progress=False, stage1_from=tmp_path / "fold_2")
    assert not (tmp_path / "other").exists()


def test_a_corpus_without_folds_gets_speaker_folds_and_final_trains_the_model_to_deploy(data, tmp_path):
    from dataclasses import replace

    from emoadapt.corpora.splits import speaker_folds
    from emoadapt.errors import CorpusError
    from emoadapt.modelfolder import read_model_info
    corpus, store = data
    bare = replace(corpus, folds=None)
    said = []
    results = run_cv(bare, store, "stats", tmp_path, folds=[1, 2], config=tiny_config(), progress=False,
                     log=said.append, final=True)
    speakers = sorted({u.speaker for u in corpus.rows})
    assert len(speakers) <= 10 and results["protocol"]["all_folds"] == list(range(1, len(speakers) + 1))
    assert results["protocol"]["folds_from"].startswith("no folds given: leave one speaker out")
    assert any("leave one speaker out" in line for line in said)
    fold_1 = json.loads((tmp_path / "fold_1" / "results.json").read_text())
    assert fold_1["speakers"]["test"] == [speakers[0]]
    final = json.loads((tmp_path / "final" / "results.json").read_text())
    assert final["scores"] is None and sorted(final["speakers"]["train"] + final["speakers"]["val"]) == speakers
    assert read_model_info(tmp_path / "final" / "model")["labels"] == corpus.labels
    with pytest.raises(EmoadaptError, match="final"):
        read_model_info(tmp_path)  # the run folder names its final model
    many = [replace(u, speaker=f"{u.speaker}-{k % 3}") for k, u in enumerate(corpus.rows)]  # more than 10
    folds, line = speaker_folds(many)
    assert folds.fold_ids() == [1, 2, 3, 4, 5] and "5 folds of whole speakers" in line and not folds.mixed_speakers()
    with pytest.raises(CorpusError, match="no speaker"):
        speaker_folds([replace(corpus.rows[0], speaker=None), *corpus.rows[1:]])


def test_every_verb_that_takes_a_recipe_lists_every_recipe():
    from emoadapt.cli.parser import build_parser
    from emoadapt.model.recipes import RECIPES
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    for verb in ("cv", "finetune", "demo"):
        text = verbs[verb].format_help()
        assert all(name in text for name in RECIPES), (verb, [n for n in RECIPES if n not in text])
