"""Each official layout -> rows, labels, speakers, genders, views and folds read as data."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
from corpora_helpers import (
    RAVDESS_8,
    speaker_table,
)
from corpus_fixtures import (
    IEMOCAP_COUNTS,
    iemocap_expected,
    make_cremad,
    make_emodb,
    make_emovo,
    make_iemocap,
    make_ravdess,
    write_audio,
)

from emoadapt.corpora import (
    detect_kind,
    load_corpus,
    summarize,
)
from emoadapt.corpora.splits import PACKAGED
from emoadapt.errors import CorpusError


# --- RAVDESS ------------------------------------------------------------------------------------------------
def test_ravdess_labels_speakers_and_gender_come_from_the_official_names(ravdess_dir):
    corpus = load_corpus(ravdess_dir)
    assert detect_kind(ravdess_dir) == "ravdess" and corpus.name == "ravdess" and corpus.view == "8class"
    assert corpus.labels == RAVDESS_8
    assert Counter(u.label for u in corpus.rows) == {label: 24 for label in RAVDESS_8}
    row = corpus.select(["Actor_07/03-01-05-01-01-01-07.wav"])[0]
    assert (row.label, row.speaker, row.gender, row.extras["intensity"]) == ("angry", "Actor_07", "male", "normal")
    assert all((int(u.speaker[-2:]) % 2 == 1) == (u.gender == "male") for u in corpus.rows)
    assert all(Path(u.path).is_absolute() and Path(u.path).is_file() for u in corpus.rows)


def test_ravdess_folds_are_the_packaged_emobox_table_unless_the_folder_has_its_own(tmp_path):
    corpus = load_corpus(make_ravdess(tmp_path, emotions=[1]))
    table = speaker_table(PACKAGED / "ravdess.csv")
    assert corpus.folds.fold_ids() == [1, 2, 3, 4, 5, 6]
    assert all(corpus.folds.assignments[u.id] == table[u.speaker] for u in corpus.rows)
    assert Counter(table.values()) == {k: 4 for k in range(1, 7)}

    with open(tmp_path / "folds.csv", "w", newline="") as f:  # a folder's own folds.csv wins
        csv.writer(f).writerows([["speaker", "fold"], *([f"Actor_{a:02d}", (a - 1) // 8 + 1] for a in range(1, 25))])
    assert load_corpus(tmp_path).folds.fold_ids() == [1, 2, 3]


def test_ravdess_4class_view_and_unknown_views(ravdess_dir):
    corpus = load_corpus(ravdess_dir, view="4class")
    assert corpus.labels == ["neutral", "happy", "angry", "sad"]
    assert Counter(u.label for u in corpus.rows) == {label: 24 for label in corpus.labels}
    assert set(corpus.folds.assignments) == {u.id for u in corpus.rows}   # folds follow the view's rows
    with pytest.raises(CorpusError, match="8class, 4class"):
        load_corpus(ravdess_dir, view="5class")


def test_unlabelled_files_are_named_in_the_error_and_listed_by_summarize(tmp_path):
    make_ravdess(tmp_path, emotions=[1, 3])
    for i in range(7):
        write_audio(tmp_path / "Actor_01" / f"take{i}.wav")
    with pytest.raises(CorpusError) as error:
        load_corpus(tmp_path)
    message = str(error.value)
    assert "7 audio files not named like ravdess" in message and "Actor_01/take0.wav" in message
    assert "and 2 more" in message
    lenient = load_corpus(tmp_path, strict=False)
    assert len(lenient.rows) == 48 and len(lenient.problems) == 1
    assert "take0.wav" in summarize(lenient) and "take0.wav" in summarize(tmp_path)


def test_a_shared_copy_manifest_is_cross_checked_against_the_names(tmp_path):
    make_emovo(tmp_path, speakers=("f1", "m1"), sentences=("b1",))
    rows = [["f1/neu-f1-b1.wav", "neutral", "1.5"], ["m1/tri-m1-b1.wav", "anger", "2.5"],
            ["m1/gone-m1-b1.wav", "fear", "1"]]
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "duration_s"], *rows])
    with pytest.raises(CorpusError) as error:
        load_corpus(tmp_path)
    assert "m1/tri-m1-b1.wav (anger vs sadness)" in str(error.value)          # the name wins, the clash is named
    assert "1 missing audio files listed in manifest.csv: m1/gone-m1-b1.wav" in str(error.value)
    lenient = load_corpus(tmp_path, strict=False)
    assert lenient.select(["m1/tri-m1-b1.wav"])[0].label == "sadness"
    assert lenient.select(["f1/neu-f1-b1.wav"])[0].duration == 1.5


def test_loading_checks_files_exist_without_decoding_them(tmp_path, monkeypatch):
    make_emovo(tmp_path)
    (tmp_path / "f1" / "neu-f1-b1.wav").write_bytes(b"not audio, but loading must not notice")
    def no_decoding(*args, **kwargs):
        raise AssertionError("load_corpus decoded audio")
    for name in ("read", "info", "SoundFile"):
        monkeypatch.setattr(sf, name, no_decoding)
    assert len(load_corpus(tmp_path).rows) == 6 * 7 * 2
    (tmp_path / "f2" / "neu-f2-b1.wav").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"1 empty \(0-byte\) audio files: .*neu-f2-b1.wav"):
        load_corpus(tmp_path)


# --- EMOVO, CREMA-D, EmoDB --------------------------------------------------------------------------------
def test_emovo_codes_speakers_and_emobox_leave_one_speaker_out(tmp_path):
    corpus = load_corpus(make_emovo(tmp_path))
    assert detect_kind(tmp_path) == "emovo"
    assert Counter(u.label for u in corpus.rows) == {label: 12 for label in corpus.labels}
    assert corpus.select(["m2/pau-m2-l1.wav"])[0].label == "fear"
    assert corpus.select(["f3/gio-f3-b1.wav"])[0].gender == "female"
    table = speaker_table(PACKAGED / "emovo.csv")
    assert sorted(table.values()) == [1, 2, 3, 4, 5, 6]
    for fold in corpus.folds.fold_ids():
        assert {u.speaker for u in corpus.rows if corpus.folds.assignments[u.id] == fold} == \
            {s for s, f in table.items() if f == fold}
    assert load_corpus(tmp_path, view="4class").labels == ["neutral", "happy", "angry", "sad"]


def test_cremad_gender_from_demographics_and_five_speaker_folds(tmp_path):
    corpus = load_corpus(make_cremad(tmp_path, actors=10, sentences=("DFA",)))
    assert detect_kind(tmp_path) == "cremad" and len(corpus.labels) == 6
    assert Counter(u.label for u in corpus.rows) == {label: 10 for label in corpus.labels}
    genders = {u.speaker: u.gender for u in corpus.rows}
    assert genders["1001"] == "female" and genders["1002"] == "male"
    fold_of = {u.speaker: corpus.folds.assignments[u.id] for u in corpus.rows}
    assert fold_of["1001"] == fold_of["1006"] == 1 and fold_of["1002"] == 2 and fold_of["1010"] == 5
    assert corpus.folds.mixed_speakers() == []
    (tmp_path / "VideoDemographics.csv").unlink()
    assert {u.gender for u in load_corpus(tmp_path).rows} == {None}


def test_emodb_letters_genders_and_leave_one_speaker_out(tmp_path):
    corpus = load_corpus(make_emodb(tmp_path))
    assert detect_kind(tmp_path) == "emodb"
    row = corpus.select(["wav/03a01Wa.wav"])[0]
    assert (row.label, row.speaker, row.gender) == ("anger", "03", "male")
    assert corpus.select(["wav/16b02La.wav"])[0].label == "boredom"
    assert corpus.folds.fold_ids() == list(range(1, 11))
    assert {u.speaker for u in corpus.rows if corpus.folds.assignments[u.id] == 2} == {"08"}


# --- IEMOCAP ----------------------------------------------------------------------------------------------
def test_iemocap_4class_merges_excited_into_happy_and_folds_by_session(iemocap_dir):
    corpus = load_corpus(iemocap_dir)
    assert detect_kind(iemocap_dir) == "iemocap" and corpus.view == "4class"
    assert corpus.labels == ["neutral", "happy", "angry", "sad"]
    assert dict(Counter(u.label for u in corpus.rows)) == iemocap_expected()
    assert corpus.folds.fold_ids() == [1, 2, 3, 4, 5]
    for n in range(1, 6):
        in_fold = [u for u in corpus.rows if corpus.folds.assignments[u.id] == n]
        assert {u.speaker for u in in_fold} == {f"Ses0{n}F", f"Ses0{n}M"}
    # the speaker is the letter before the number, not the dialog's: Ses01F_impro01_M001 is the man
    row = next(u for u in corpus.rows if u.extras["utterance"] == "Ses01F_impro01_M001")
    assert (row.speaker, row.gender) == ("Ses01M", "male")
    assert row.id == "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M001.wav"
    assert all(u.duration == pytest.approx(0.3) for u in corpus.rows)


def test_iemocap_full_view_keeps_other_and_drops_no_agreement(iemocap_dir):
    corpus = load_corpus(iemocap_dir, view="full")
    counts = Counter(u.label for u in corpus.rows)
    assert counts["happy"] == 5 and counts["excited"] == 10 and counts["other"] == 5 and counts["frustrated"] == 5
    assert sum(counts.values()) == 5 * (sum(IEMOCAP_COUNTS.values()) - IEMOCAP_COUNTS["xxx"])
    assert not any(u.extras["emotion_code"] == "xxx" for u in corpus.rows)


def test_iemocap_missing_wavs_are_named(tmp_path):
    root = make_iemocap(tmp_path, utts_per_session={"neu": 2, "ang": 2}, sessions=2)
    gone = sorted(root.glob("Session2/sentences/wav/*/*.wav"))[:2]
    for f in gone:
        f.unlink()
    with pytest.raises(CorpusError) as error:
        load_corpus(root)
    assert "2 missing audio files" in str(error.value) and all(f.name in str(error.value) for f in gone)


def test_make_iemocap_takes_a_count_and_a_duration_range(tmp_path):
    corpus = load_corpus(make_iemocap(tmp_path, utts_per_session=8, seconds=(0.2, 0.4)))
    assert len(corpus.rows) == 40
    assert all(0.2 <= u.duration <= 0.4 for u in corpus.rows)
    assert len({round(u.duration, 3) for u in corpus.rows}) > 10
    row = corpus.rows[0]
    assert sf.info(row.path).frames / 16000 == pytest.approx(row.duration, abs=1e-3)


