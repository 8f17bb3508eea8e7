"""Corpora as data: each official layout -> rows, views, folds read as data, speaker-disjoint splits, manifests."""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
from corpus_fixtures import (IEMOCAP_COUNTS, iemocap_expected, make_cremad, make_emodb, make_emovo, make_iemocap,
                             make_label_folders, make_ravdess, make_unlabeled, write_audio)

from emoadapt.corpora import (Folds, Utterance, detect_kind, load_corpus, read_folds, read_manifest, summarize,
                              write_emobox, write_folds, write_manifest)
from emoadapt.corpora.splits import PACKAGED
from emoadapt.errors import CorpusError

RAVDESS_8 = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def speaker_table(path: Path) -> dict[str, int]:
    with open(path, newline="") as f:
        return {r["speaker"]: int(r["fold"]) for r in csv.DictReader(f)}


def assert_proper_split(folds: Folds, split, fold: int) -> None:
    groups = lambda ids: {folds.group(i) for i in ids}
    assert sorted(split.test) == sorted(i for i, f in folds.assignments.items() if f == fold)
    assert not groups(split.train) & groups(split.val)
    assert not groups(split.train) & groups(split.test)
    assert not groups(split.val) & groups(split.test)
    assert sorted(split.train + split.val + split.test) == sorted(folds.assignments)
    assert split.val and split.train


# --- RAVDESS ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ravdess_dir(tmp_path_factory):
    """24 actors x 8 emotions, shared by the tests that only read it."""
    return make_ravdess(tmp_path_factory.mktemp("ravdess"))


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
@pytest.fixture(scope="module")
def iemocap_dir(tmp_path_factory):
    """5 sessions with IEMOCAP_COUNTS utterances each, shared by the tests that only read it."""
    return make_iemocap(tmp_path_factory.mktemp("iemocap"))


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


# --- the real shared copies ---------------------------------------------------------------------------------
def source_counts(folder: Path) -> dict[str, int]:
    """The class-distribution table of a corpus's SOURCE.md (| label | files |)."""
    text = (folder / "SOURCE.md").read_text()
    table = text.split("Class distribution", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^\| (\w+) \| (\d+) \|$", table, re.M)}


def fold_file(folder: Path) -> dict[str, int]:
    with open(folder / "folds.csv", newline="") as f:
        return {r["path"]: int(r["fold"]) for r in csv.DictReader(f)}


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
