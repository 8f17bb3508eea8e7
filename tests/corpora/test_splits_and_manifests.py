"""Speaker-disjoint splits, fold files, manifests, EmoBox, generic layouts and summaries."""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from corpora_helpers import (
    assert_proper_split,
)
from corpus_fixtures import (
    iemocap_expected,
    make_emodb,
    make_label_folders,
    make_ravdess,
    make_unlabeled,
    write_audio,
)

from emoadapt.corpora import (
    Folds,
    Utterance,
    detect_kind,
    load_corpus,
    read_folds,
    read_manifest,
    summarize,
    write_emobox,
    write_folds,
    write_manifest,
)
from emoadapt.errors import CorpusError


# --- speaker-disjoint splits ------------------------------------------------------------------------------
def test_each_split_is_speaker_disjoint_with_gender_balanced_validation(ravdess_dir):
    corpus = load_corpus(ravdess_dir)
    genders = {u.speaker: u.gender for u in corpus.rows}
    for fold in corpus.folds.fold_ids():
        split = corpus.folds.split(fold)                 # 20 training actors -> 2 validation actors
        assert_proper_split(corpus.folds, split, fold)
        val_speakers = {corpus.folds.group(i) for i in split.val}
        assert len(val_speakers) == 2 and sorted(genders[s] for s in val_speakers) == ["female", "male"]


def test_split_is_deterministic_in_seed_and_varies_with_it(ravdess_dir):
    folds = load_corpus(ravdess_dir).folds
    assert folds.split(3, seed=7) == folds.split(3, seed=7)
    assert len({tuple(folds.split(3, seed=s).val) for s in range(6)}) > 1
    assert len(folds.split(3, val_fraction=0.3).val) == 6 * 8    # round(0.3 x 20) = 6 actors x 8 files


def test_split_edge_cases():
    rows = [Utterance(f"{s}/{i}.wav", f"/x/{s}/{i}.wav", "a", s, g) for s, g in
            [("s1", "female"), ("s2", "male"), ("s3", "female")] for i in range(2)]
    folds = Folds.from_rows(rows, lambda u: int(u.speaker[1]))
    split = folds.split(1, val_fraction=0.01)
    assert len({folds.group(i) for i in split.val}) == 1          # at least one speaker
    assert folds.split(1, val_fraction=0).val == []
    with pytest.raises(CorpusError, match="no fold 9"):
        folds.split(9)
    two = Folds.from_rows(rows[:4], lambda u: int(u.speaker[1]))
    with pytest.raises(CorpusError, match="1 training speaker"):
        two.split(1)
    mixed = Folds.from_rows(rows, lambda u: int(u.id[-5]) + 1)     # folds by utterance, not by speaker
    with pytest.raises(CorpusError, match="not speaker-independent"):
        mixed.split(1)


# --- fold files, manifests, EmoBox, generic layouts ---------------------------------------------------------
def test_fold_files_round_trip_per_utterance_and_per_speaker(tmp_path):
    corpus = load_corpus(make_emodb(tmp_path / "emodb", texts=("a01",)))
    per_utt = read_folds(write_folds(corpus.folds, tmp_path / "folds.csv"))
    assert per_utt.assignments == corpus.folds.assignments and per_utt.speakers == corpus.folds.speakers
    table = write_folds(corpus.folds, tmp_path / "speakers.csv", per_speaker=True)
    assert read_folds(table, corpus.rows).assignments == corpus.folds.assignments
    with pytest.raises(CorpusError, match="pass its rows"):
        read_folds(table)
    with pytest.raises(CorpusError, match="utterances have no fold"):
        read_folds(table, corpus.rows + [Utterance("x.wav", "/x.wav", "anger", "99")])
    (tmp_path / "bad.csv").write_text("speaker,fold\n03,one\n")
    with pytest.raises(CorpusError, match="line 2: fold 'one'"):
        read_folds(tmp_path / "bad.csv", corpus.rows)


def test_manifest_round_trip_and_generic_csv_corpus(tmp_path):
    rows = load_corpus(make_emodb(tmp_path / "emodb", texts=("a01",))).rows
    again = read_manifest(write_manifest(rows, tmp_path / "out" / "manifest.csv"))
    assert again == rows and again[0].extras["text"] == rows[0].extras["text"]

    with open(tmp_path / "emodb" / "mine.csv", "w", newline="") as f:   # a user's own manifest, with folds
        w = csv.writer(f)
        w.writerow(["path", "label", "speaker", "gender", "duration_s", "fold"])
        w.writerows([Path(u.path).relative_to(tmp_path / "emodb").as_posix(), u.label, u.speaker, "M", 0.1,
                     1 + int(u.speaker) % 2] for u in rows)
    corpus = load_corpus(tmp_path / "emodb" / "mine.csv")
    assert detect_kind(tmp_path / "emodb" / "mine.csv") == "csv" and corpus.labels == sorted(set(corpus.labels))
    assert corpus.folds.fold_ids() == [1, 2] and {u.gender for u in corpus.rows} == {"male"}
    assert_proper_split(corpus.folds, corpus.folds.split(2), 2)


def test_manifest_with_missing_files_names_the_first_few_and_the_count(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,label\n" + "".join(f"gone/{i}.wav,sad\n" for i in range(8)))
    with pytest.raises(CorpusError, match=r"8 missing audio files: .*gone/0.wav.* and 3 more"):
        load_corpus(tmp_path)


def test_emobox_export_then_import_keeps_labels_speakers_and_folds(tmp_path, iemocap_dir):
    corpus = load_corpus(iemocap_dir)
    main = write_emobox(corpus, tmp_path / "emobox" / "iemocap")
    first = json.loads(main.read_text().splitlines()[0])
    assert {"key", "wav", "emo", "length", "speaker", "sample_rate", "num_frame"} <= set(first)
    back = load_corpus(tmp_path / "emobox" / "iemocap")
    assert detect_kind(tmp_path / "emobox" / "iemocap") == "emobox" and len(back.rows) == len(corpus.rows)
    before = {Path(u.path).name: (u.label, u.speaker, corpus.folds.assignments[u.id]) for u in corpus.rows}
    after = {Path(u.path).name: (u.label, u.speaker, back.folds.assignments[u.id]) for u in back.rows}
    assert after == before


def test_emobox_files_without_speakers_get_them_from_official_names(tmp_path):
    make_ravdess(tmp_path / "downloads" / "ravdess", actors=4, emotions=[1, 5])
    folder = tmp_path / "data" / "ravdess"                 # EmoBox layout: wav paths relative to the repository
    lines = [{"key": f"ravdess-{f.stem}", "dataset": "ravdess", "wav": f.relative_to(tmp_path).as_posix(),
              "type": "raw", "length": 0.1, "emo": "Angry" if "-05-" in f.name else "Neutral", "channel": 1}
             for f in sorted((tmp_path / "downloads").rglob("*.wav"))]
    jsonl = lambda records: "".join(json.dumps(r) + "\n" for r in records)
    (folder / "ravdess.jsonl").parent.mkdir(parents=True)
    (folder / "ravdess.jsonl").write_text(jsonl(lines))
    for k, part in ((1, lines[:4]), (2, lines[4:])):                 # actors 1-2 test in fold 1, 3-4 in fold 2
        (folder / f"fold_{k}").mkdir()
        (folder / f"fold_{k}" / f"ravdess_test_fold_{k}.jsonl").write_text(jsonl(part))
    (folder / "label_map.json").write_text(json.dumps({"Angry": "angry", "Neutral": "neutral"}))
    corpus = load_corpus(folder)
    assert {u.speaker for u in corpus.rows} == {"Actor_01", "Actor_02", "Actor_03", "Actor_04"}
    assert {u.speaker for u in corpus.select(corpus.folds.split(2).test)} == {"Actor_03", "Actor_04"}
    assert corpus.labels == ["Angry", "Neutral"]
    assert load_corpus(folder, view="label_map").labels == ["angry", "neutral"]
    (folder / "fold_2" / "ravdess_test_fold_2.jsonl").unlink()
    with pytest.raises(CorpusError, match="4 utterances in no test fold"):     # fold files must cover the corpus
        load_corpus(folder)
    assert len(load_corpus(folder, strict=False).folds.assignments) == 4


def test_label_folders_and_unlabeled_audio(tmp_path):
    corpus = load_corpus(make_label_folders(tmp_path / "byfolder"))
    assert detect_kind(tmp_path / "byfolder") == "folders" and corpus.labels == ["angry", "calm"]
    assert Counter(u.label for u in corpus.rows) == {"angry": 2, "calm": 3} and corpus.folds is None
    write_audio(tmp_path / "byfolder" / "loose.wav")
    with pytest.raises(CorpusError, match="1 audio files outside a label folder.*loose.wav"):
        load_corpus(tmp_path / "byfolder")

    pool = load_corpus(make_unlabeled(tmp_path / "pool"))
    assert detect_kind(tmp_path / "pool") == "unlabeled" and pool.labels == [] and pool.folds is None
    assert sorted(u.id for u in pool.rows) == ["clip0.flac", "deep/er/clip1.flac", "deep/er/clip3.flac",
                                               "top/clip2.flac", "top/clip4.flac"]
    assert all(u.label is None for u in pool.rows)
    write_manifest(pool.rows[:3], tmp_path / "pool" / "manifest.csv")   # a manifest (labels empty) wins
    assert detect_kind(tmp_path / "pool") == "unlabeled" and len(load_corpus(tmp_path / "pool").rows) == 3


def test_summarize_counts_per_label_speaker_and_fold(iemocap_dir):
    text = summarize(load_corpus(iemocap_dir))
    expected = iemocap_expected()
    assert re.search(rf"^happy\s+{expected['happy']}\s", text, re.M)
    assert re.search(r"^fold\s+utterances", text, re.M) and "Ses03F" in text and "Ses05M" in text
    assert f"{sum(expected.values())} utterances, 4 labels, 10 speakers, 5 folds" in text
    assert "problems: none" in text


