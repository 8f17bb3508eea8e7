"""Tiny corpora in each official layout, generated into a temporary folder (no real audio).

Every file is a short 16 kHz mono WAV: faint noise plus a tone whose pitch depends on the 4-class emotion
(neutral, happy, angry, sad, other), so an end-to-end test on a fixture has something learnable.
``make_iemocap`` is the one the pipeline tests reuse: 5 sessions, label counts you choose.
"""
from __future__ import annotations

import csv
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000
TONE_HZ = {"neutral": 220.0, "happy": 330.0, "angry": 440.0, "sad": 550.0}  # anything else: 660 Hz


def write_audio(path: Path, seconds: float = 0.2, *, emotion: str | None = None, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".wav": "WAV", ".flac": "FLAC"}[path.suffix.lower()]
    path.write_bytes(_audio_bytes(round(seconds, 6), TONE_HZ.get(emotion, 660.0), seed, fmt))
    return path


@lru_cache(maxsize=512)
def _audio_bytes(seconds: float, tone_hz: float, seed: int, fmt: str) -> bytes:
    """Encoded once per (length, tone, seed, format): fixtures write hundreds of files."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SR))) / SR
    wave = 0.01 * rng.standard_normal(t.size) + 0.2 * np.sin(2 * np.pi * tone_hz * t)
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), SR, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


# --- RAVDESS: Actor_NN/03-01-EE-II-SS-RR-AA.wav -----------------------------------------------------------
RAVDESS_4CLASS = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry"}


def make_ravdess(root: Path, *, actors: int = 24, emotions=range(1, 9), statements=(1,), ext: str = "wav",
                 seconds: float = 0.1) -> Path:
    """One file per actor x emotion x statement (normal intensity, repetition 1)."""
    for a in range(1, actors + 1):
        for e in emotions:
            for s in statements:
                name = f"03-01-{e:02d}-01-{s:02d}-01-{a:02d}.{ext}"
                write_audio(root / f"Actor_{a:02d}" / name, seconds, emotion=RAVDESS_4CLASS.get(f"{e:02d}"), seed=a)
    return root


# --- EMOVO: <speaker>/<emo>-<speaker>-<sentence>.wav --------------------------------------------------------
EMOVO_CODES = ("dis", "gio", "neu", "pau", "rab", "sor", "tri")
EMOVO_4CLASS = {"neu": "neutral", "gio": "happy", "rab": "angry", "tri": "sad"}


def make_emovo(root: Path, *, speakers=("f1", "f2", "f3", "m1", "m2", "m3"), sentences=("b1", "l1"),
               seconds: float = 0.1) -> Path:
    for s in speakers:
        for code in EMOVO_CODES:
            for b in sentences:
                write_audio(root / s / f"{code}-{s}-{b}.wav", seconds, emotion=EMOVO_4CLASS.get(code))
    return root


# --- CREMA-D: AudioWAV/1001_DFA_ANG_XX.wav (+ VideoDemographics.csv) ---------------------------------------
CREMAD_CODES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
CREMAD_4CLASS = {"NEU": "neutral", "HAP": "happy", "ANG": "angry", "SAD": "sad"}


def make_cremad(root: Path, *, actors: int = 10, sentences=("DFA", "IEO"), demographics: bool = True,
                seconds: float = 0.1) -> Path:
    ids = [str(1001 + i) for i in range(actors)]
    for actor in ids:
        for sentence in sentences:
            for code in CREMAD_CODES:
                level = "XX" if sentence == "DFA" else "HI"
                write_audio(root / "AudioWAV" / f"{actor}_{sentence}_{code}_{level}.wav", seconds,
                            emotion=CREMAD_4CLASS.get(code))
    if demographics:
        with open(root / "VideoDemographics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ActorID", "Age", "Sex", "Race", "Ethnicity"])
            w.writerows([a, 30, "Female" if i % 3 == 0 else "Male", "Unknown", "Not Hispanic"]
                        for i, a in enumerate(ids))
    return root


# --- EmoDB: wav/03a01Fa.wav -------------------------------------------------------------------------------
EMODB_SPEAKERS = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")
EMODB_4CLASS = {"N": "neutral", "F": "happy", "W": "angry", "T": "sad"}


def make_emodb(root: Path, *, speakers=EMODB_SPEAKERS, texts=("a01", "b02"), seconds: float = 0.1) -> Path:
    for s in speakers:
        for text in texts:
            for letter in "WLEAFTN":
                write_audio(root / "wav" / f"{s}{text}{letter}a.wav", seconds, emotion=EMODB_4CLASS.get(letter))
    return root


# --- IEMOCAP: Session{n}/dialog/EmoEvaluation/*.txt + Session{n}/sentences/wav/<dialog>/<utt>.wav ------------
IEMOCAP_COUNTS = {"neu": 3, "hap": 1, "exc": 2, "ang": 2, "sad": 2, "fru": 1, "sur": 1, "oth": 1, "xxx": 1}
IEMOCAP_4CLASS = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}


def make_iemocap(root: Path, *, utts_per_session: int | dict[str, int] = IEMOCAP_COUNTS,
                 seconds: float | tuple[float, float] = 0.3, sessions: int = 5, seed: int = 0) -> Path:
    """An IEMOCAP-shaped folder. ``utts_per_session``: {code: count} per session (codes as in EmoEvaluation:
    neu hap exc ang sad fru sur fea dis oth xxx), or an int n = n utterances cycling neu, hap, ang, sad, exc
    (all in the 4-class set). ``seconds``: every utterance's length, or a (min, max) range drawn per utterance.
    Utterances alternate between the session's female and male speaker and between an improvised and a
    scripted dialog; a Categorical/ annotator file is written too (a loader must ignore it)."""
    rng = np.random.default_rng(seed)
    if isinstance(utts_per_session, int):
        cycle = ("neu", "hap", "ang", "sad", "exc")
        codes = [cycle[i % len(cycle)] for i in range(utts_per_session)]
    else:
        codes = [c for c, n in utts_per_session.items() for _ in range(n)]
    for n in range(1, sessions + 1):
        session = root / f"Session{n}"
        dialogs = [f"Ses{n:02d}F_impro01", f"Ses{n:02d}M_script01_1"]
        lines: dict[str, list[str]] = {d: [] for d in dialogs}
        for i, code in enumerate(codes):
            dialog, who = dialogs[(i // 2) % 2], "FM"[i % 2]
            utt = f"{dialog}_{who}{i:03d}"
            length = float(rng.uniform(*seconds)) if isinstance(seconds, tuple) else float(seconds)
            start = 0.5 + 3.0 * i
            write_audio(session / "sentences" / "wav" / dialog / f"{utt}.wav", length,
                        emotion=IEMOCAP_4CLASS.get(code), seed=seed * 1000 + n * 100 + i)
            lines[dialog].append(f"[{start:.4f} - {start + length:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 2.5000]\n"
                                 f"C-E1:\tNeutral state;\t()\nC-E2:\tNeutral state;\t()\n"
                                 f"A-E1:\tval 3; act 3; dom  2;\t()\n")
        evaluation = session / "dialog" / "EmoEvaluation"
        (evaluation / "Categorical").mkdir(parents=True, exist_ok=True)
        for dialog, blocks in lines.items():
            header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
            (evaluation / f"{dialog}.txt").write_text(header + "\n".join(blocks))
            # annotator votes live in sub-folders, with a different line format: not labels
            (evaluation / "Categorical" / f"{dialog}_e1_cat.txt").write_text(
                "".join(f"{dialog}_F{i:03d} :Neutral state; ()\n" for i in range(3)))
    return root


def iemocap_expected(utts_per_session: dict[str, int] = IEMOCAP_COUNTS, sessions: int = 5) -> dict[str, int]:
    """4-class label counts the loader must find in make_iemocap(..., utts_per_session)."""
    out = {"neutral": 0, "happy": 0, "angry": 0, "sad": 0}
    for code, n in utts_per_session.items():
        if code in IEMOCAP_4CLASS:
            out[IEMOCAP_4CLASS[code]] += n * sessions
    return out


# --- generic layouts --------------------------------------------------------------------------------------
def make_label_folders(root: Path, counts: dict[str, int] = {"angry": 2, "calm": 3}) -> Path:
    for label, n in counts.items():
        for i in range(n):
            write_audio(root / label / f"{label}_{i}.wav", 0.1, emotion=label)
    return root


def make_unlabeled(root: Path, n: int = 5) -> Path:
    """Audio at several depths (a loader must walk recursively) plus a non-audio file it must ignore."""
    for i in range(n):
        folder = root if i == 0 else root / ("deep/er" if i % 2 else "top")
        write_audio(folder / f"clip{i}.flac", 0.1, seed=i)
    (root / "notes.txt").write_text("not audio")
    return root


# --- ASED as ../shared/data/ased lays it out: NNLabel/<file>.flac and a manifest (path,label,speaker) ------------
ASED_FOLDERS = {"neutral": "01Neutral", "fearful": "02Fearful", "happy": "03Happy", "sad": "04Sad", "angry": "05Angry"}
ASED_4CLASS = {"fearful": None}


def make_ased(root: Path, *, speakers: int = 8, seconds: float = 0.1) -> Path:
    """One clip per speaker x label (spk01 ... spkNN), listed in manifest.csv."""
    rows = []
    for s in range(1, speakers + 1):
        for label, folder in ASED_FOLDERS.items():
            path = f"{folder}/{label[0]}-{s:02d}.wav"
            write_audio(root / path, seconds, emotion=ASED_4CLASS.get(label, label), seed=100 + s)
            rows.append({"path": path, "label": label, "speaker": f"spk{s:02d}"})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return root
