"""The real shared copies in ../shared/data, and label maps onto one label set."""
from __future__ import annotations

import csv
import re
from collections import Counter

import pytest
from corpora_helpers import (
    assert_proper_split,
    fold_file,
    source_counts,
    speaker_table,
)
from corpus_fixtures import (
    make_emovo,
    make_ravdess,
)

from emoadapt.corpora import (
    detect_kind,
    load_corpus,
    summarize,
)
from emoadapt.corpora.splits import PACKAGED
from emoadapt.errors import CorpusError


# --- the real shared copies ---------------------------------------------------------------------------------
def test_real_ravdess(shared_data):
    folder = shared_data("ravdess")
    corpus = load_corpus(folder)
    assert len(corpus.rows) == 1440 and corpus.problems == []
    assert dict(Counter(u.label for u in corpus.rows)) == source_counts(folder)
    assert len({u.speaker for u in corpus.rows}) == 24
    assert corpus.folds.assignments == fold_file(folder)
    assert Counter(corpus.folds.assignments.values()) == {k: 240 for k in range(1, 7)}
    assert all(u.duration and 2.9 < u.duration < 5.3 for u in corpus.rows)    # from manifest.csv, not decoded
    for fold in corpus.folds.fold_ids():
        assert_proper_split(corpus.folds, corpus.folds.split(fold), fold)
    # labels parsed from the names agree with the manifest's column, read by the generic CSV loader
    as_csv = load_corpus(folder, kind="csv")
    first_actor = [u.id for u in as_csv.rows[:60]]
    assert corpus.folds.restrict(first_actor).fold_ids() == [corpus.folds.assignments[first_actor[0]]]
    assert {u.id: u.label for u in as_csv.rows} == {u.id: u.label for u in corpus.rows}
    assert len(load_corpus(folder, view="4class").rows) == 96 + 3 * 192


def test_real_emovo(shared_data):
    folder = shared_data("emovo")
    corpus = load_corpus(folder)
    assert len(corpus.rows) == 588
    assert dict(Counter(u.label for u in corpus.rows)) == source_counts(folder)
    assert corpus.folds.assignments == fold_file(folder)
    for fold in corpus.folds.fold_ids():
        split = corpus.folds.split(fold)
        assert len({u.speaker for u in corpus.select(split.test)}) == 1
        assert_proper_split(corpus.folds, split, fold)
    assert len(corpus.folds.fold_ids()) == 6


def test_real_unlabeled(shared_data):
    folder = shared_data("unlabeled")
    pool = load_corpus(folder)
    assert detect_kind(folder) == "unlabeled" and len(pool.rows) == 1657 and pool.labels == []
    assert sum(u.duration for u in pool.rows) / 3600 == pytest.approx(1.63, abs=0.01)
    assert Counter(u.speaker for u in pool.rows)["nl_fish_small"] == 692


@pytest.mark.parametrize("name", ["ravdess", "emovo"])
def test_packaged_fold_tables_match_the_shared_fold_files(shared_data, name):
    folder = shared_data(name)
    with open(folder / "folds.csv", newline="") as f:
        shared = {(r["speaker"], int(r["fold"])) for r in csv.DictReader(f)}
    assert set(speaker_table(PACKAGED / f"{name}.csv").items()) == shared


# --- label maps -----------------------------------------------------------------------------------------------
def test_shared7_maps_ravdess_and_emovo_onto_one_label_set(tmp_path):
    from emoadapt.corpora import packaged_label_maps, read_label_map
    assert "shared7" in packaged_label_maps()
    shared = read_label_map("shared7")
    assert shared.classes == ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise")
    ravdess = load_corpus(make_ravdess(tmp_path / "ravdess", actors=4), label_map="shared7")
    emovo = load_corpus(make_emovo(tmp_path / "emovo"), label_map="shared7")
    assert ravdess.labels == emovo.labels == list(shared.classes)
    assert len(ravdess.rows) == 4 * 7 and "calm" not in {u.label for u in ravdess.rows}  # calm: dropped
    assert Counter(u.label for u in ravdess.rows)["fear"] == 4 and ravdess.view == "8class>shared7"
    assert set(ravdess.folds.assignments) == {u.id for u in ravdess.rows}  # the dropped clips leave the folds too
    assert Counter(u.label for u in emovo.rows)["happy"] == 12  # EMOVO's happiness (gio)
    assert "calm" not in summarize(ravdess)


def test_label_map_errors_name_the_file_and_the_fix(tmp_path):
    from emoadapt.corpora import apply_label_map
    ravdess = load_corpus(make_ravdess(tmp_path / "ravdess", actors=2))
    cases = {
        "partial.csv": ("corpus,label,to\nravdess,neutral,neutral\nravdess,happy,happy\n",
                        "does not say what ravdess labels angry, calm, disgust, fearful, sad and 1 more become"),
        "other.csv": ("corpus,label,to\nemovo,neutral,neutral\n", "has no rows for corpus 'ravdess'"),
        "columns.csv": ("corpus,emotion\nravdess,neutral\n", "needs the columns corpus,label,to"),
        "twice.csv": ("corpus,label,to\nravdess,sad,sad\nravdess,sad,low\n", "line 3: ravdess label 'sad' is mapped twice"),
        "empty.csv": ("corpus,label,to\nravdess,sad,\n", "maps no label to a class"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(CorpusError, match=re.escape(message)) as error:
            apply_label_map(ravdess, tmp_path / name)
        assert name in str(error.value)
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(CorpusError, match="not a text CSV"):
        apply_label_map(ravdess, tmp_path / "binary.csv")
    with pytest.raises(CorpusError, match="no such label map.*shared7"):
        apply_label_map(ravdess, "shared8")


def test_merge_writes_one_corpus_with_prefixed_ids_and_united_folds(tmp_path, capsys):
    from emoadapt import cli
    from emoadapt.corpora import merge_corpora
    ravdess = load_corpus(make_ravdess(tmp_path / "ravdess", actors=6), label_map="shared7")
    emovo = load_corpus(make_emovo(tmp_path / "emovo"), label_map="shared7")
    merged = merge_corpora([ravdess, emovo])
    assert len(merged.rows) == len(ravdess.rows) + len(emovo.rows) == 6 * 7 + 6 * 7 * 2
    assert merged.rows[0].id == "ravdess/" + ravdess.rows[0].id and merged.rows[0].speaker == "ravdess:Actor_01"
    test1 = merged.folds.split(1, val_fraction=0).test
    assert {merged.folds.group(i) for i in test1} == {"ravdess:Actor_01", "emovo:f2"}  # EmoBox's folds of each
    with pytest.raises(CorpusError, match="both called 'ravdess'"):
        merge_corpora([ravdess, ravdess])
    code = cli.main(["merge", str(ravdess.root), str(emovo.root), "--label-map", "shared7",
                     "--out", str(tmp_path / "both")])
    assert code == 0 and "6 folds" in capsys.readouterr().out
    back = load_corpus(tmp_path / "both")
    assert sorted(back.labels) == sorted(merged.labels) and len(back.rows) == len(merged.rows)
    assert back.folds.assignments == merged.folds.assignments
    assert {u.extras["corpus"] for u in back.rows} == {"ravdess", "emovo"}


def test_shared7_covers_ased_and_leave_one_corpus_out_folds_follow_the_corpus_column(shared_data, tmp_path):
    from emoadapt.corpora import merge_corpora
    from emoadapt.corpora.splits import corpus_folds
    ased = load_corpus(shared_data("ased"), label_map="shared7")
    assert sorted(ased.labels) == ["angry", "fear", "happy", "neutral", "sad"] and len(ased.rows) == 2474
    emovo = load_corpus(make_emovo(tmp_path / "emovo"), label_map="shared7")
    merged = merge_corpora([emovo, ased])
    folds, targets = corpus_folds(merged.rows)
    assert targets == {1: "ased", 2: "emovo"}
    split = folds.split(2, val_fraction=0.1)
    assert {i.split("/")[0] for i in split.test} == {"emovo"}
    assert {i.split("/")[0] for i in split.train + split.val} == {"ased"}  # validation from the training corpus
    with pytest.raises(CorpusError, match="only 'ased'"):
        corpus_folds(merged.rows[-10:])  # ased only
    with pytest.raises(CorpusError, match="emoadapt merge"):
        corpus_folds(emovo.rows)
