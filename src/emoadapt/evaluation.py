"""Metrics and reports: UA, WA, macro-F1, weighted-F1, confusion matrix; per fold and mean ± std over folds.

UA (unweighted accuracy) is the mean per-class recall; WA (weighted accuracy) is plain accuracy. All numbers come
from scikit-learn so they mean what the SER literature means by them; percentages throughout.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_write, atomic_write_text

METRICS = ("ua", "wa", "macro_f1", "weighted_f1")


@dataclass
class Scores:
    ua: float
    wa: float
    macro_f1: float
    weighted_f1: float
    confusion: list[list[int]]     # rows = true class, columns = predicted class, in `labels` order
    labels: list[str]
    count: int

    def line(self) -> str:
        return f"UA {self.ua:.2f}  WA {self.wa:.2f}  macro-F1 {self.macro_f1:.2f}  weighted-F1 {self.weighted_f1:.2f}  (n={self.count})"


def score(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> Scores:
    """Scores of integer predictions against integer targets, classes ``0..len(labels)-1``.

    Classes absent from ``y_true`` are left out of UA (sklearn's recall over the present classes would otherwise
    count them as 0); they still appear in the confusion matrix.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score  # 2 s to import: not at start-up
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        raise ValueError("cannot score an empty set of predictions")
    present = sorted(set(y_true.tolist()))
    everything = list(range(len(labels)))
    return Scores(
        ua=100 * float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        wa=100 * float(accuracy_score(y_true, y_pred)),
        macro_f1=100 * float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        weighted_f1=100 * float(f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)),
        confusion=confusion_matrix(y_true, y_pred, labels=everything).tolist(),
        labels=list(labels),
        count=int(len(y_true)),
    )


@dataclass
class CrossValidationReport:
    """Per-fold scores and their mean ± std (population std over folds, as EmoBox reports)."""
    folds: dict[int, Scores] = field(default_factory=dict)

    def summary(self) -> dict[str, tuple[float, float]]:
        return {m: (float(np.mean([getattr(s, m) for s in self.folds.values()])),
                    float(np.std([getattr(s, m) for s in self.folds.values()]))) for m in METRICS}

    def pooled_confusion(self) -> np.ndarray:
        return np.sum([np.asarray(s.confusion) for s in self.folds.values()], axis=0)

    def table(self) -> str:
        head = f"{'fold':>6}  {'UA':>6}  {'WA':>6}  {'macro-F1':>8}  {'w-F1':>6}  {'n':>5}"
        rows = [f"{k:>6}  {s.ua:6.2f}  {s.wa:6.2f}  {s.macro_f1:8.2f}  {s.weighted_f1:6.2f}  {s.count:5d}"
                for k, s in sorted(self.folds.items())]
        mean = self.summary()
        rows.append("  mean  " + "  ".join(f"{mean[m][0]:.2f}±{mean[m][1]:.2f}" for m in METRICS))
        return "\n".join([head, *rows])

    def to_json(self) -> dict:
        return {"folds": {str(k): asdict(s) for k, s in sorted(self.folds.items())},
                "mean_std": {m: {"mean": v[0], "std": v[1]} for m, v in self.summary().items()}}


def compare_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    """Cross-validation runs (folders with ``results.json``, or such files, e.g. ``docs/results/<run>.json``) grouped
    by everything but the seed — corpus, view, recipe, config (settings added since a run at their defaults), shared
    stage-1 adapter — one row per group: mean ± std over every (fold, seed) score, the std of the per-seed means,
    and the mean validation UA (the number settings are chosen on; never the test)."""
    from .config import with_defaults
    groups: dict[str, dict] = {}
    paths = [Path(run) / "results.json" if Path(run).is_dir() else Path(run) for run in run_dirs]
    for path in dict.fromkeys(p.resolve() for p in paths):  # a run named twice (overlapping globs) counts once
        try:
            r = json.loads(path.read_text())
            protocol, config = r["protocol"], with_defaults(r["config"])
        except KeyError as error:
            raise ValueError(f"{path}: not a cross-validation results file (it has no {error} field; `emoadapt cv` "
                             f"writes one, a single finetune run does not)") from None
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"{path}: not a cross-validation results file ({error})") from None
        seed = config.pop("seed", r.get("seed"))
        stage1 = (r.get("shared_stage1") or {}).get("path")
        key = json.dumps([protocol["corpus"], protocol.get("view"), r["recipe"], config, stage1,
                          r.get("unlabeled_stores")], sort_keys=True)
        g = groups.setdefault(key, {"runs": [], "corpus": protocol["corpus"], "view": protocol.get("view"),
                                    "recipe": r["recipe"], "shared_stage1": stage1, "scores": {}, "val_ua": [],
                                    "protocol": protocol_name(protocol)})
        if seed in g["scores"]:
            raise ValueError(f"{path}: two runs with the same settings and seed {seed}")
        g["runs"].append(str(path.parent) if path.name == "results.json" else str(path.with_suffix("")))
        g["scores"][seed] = r["folds"]  # fold -> its scores (ua, wa, ...) and best_val_ua
        g["val_ua"] += [v.get("best_val_ua") for v in r["folds"].values() if v.get("best_val_ua") is not None]
    rows = []
    for g in groups.values():
        row = {k: g[k] for k in ("runs", "corpus", "view", "recipe", "shared_stage1", "protocol")}
        row["seeds"] = sorted(g["scores"])
        row["folds"] = sorted({int(k) for folds in g["scores"].values() for k in folds})
        for m in METRICS:
            every = [folds[k][m] for folds in g["scores"].values() for k in folds]
            per_seed = [float(np.mean([f[m] for f in folds.values()])) for folds in g["scores"].values()]
            row[m] = {"mean": float(np.mean(every)), "std": float(np.std(every)), "n": len(every),
                      "std_of_seed_means": float(np.std(per_seed))}
        row["val_ua"] = float(np.mean(g["val_ua"])) if g["val_ua"] else None
        row["ua_by_seed_and_fold"] = {str(seed): {k: v["ua"] for k, v in folds.items()}
                                      for seed, folds in g["scores"].items()}
        rows.append(row)
    return rows


def paired_difference(row: dict, baseline: dict) -> dict | None:
    """UA of ``row`` minus UA of ``baseline`` on every (seed, fold) both have: mean ± std, count, wins."""
    a, b = row["ua_by_seed_and_fold"], baseline["ua_by_seed_and_fold"]
    diffs = [a[s][k] - b[s][k] for s in a if s in b for k in a[s] if k in b[s]]
    if not diffs:
        return None
    return {"mean": float(np.mean(diffs)), "std": float(np.std(diffs)), "pairs": len(diffs),
            "better": int(sum(d > 0 for d in diffs)), "worse": int(sum(d < 0 for d in diffs))}


def protocol_name(protocol: dict) -> str:
    """"speaker-independent", or what a speaker-calibrated run used of its test speakers."""
    if protocol.get("speaker_independent", True):
        return "speaker-independent"
    calibration = protocol.get("calibration") or {}
    k = calibration.get("clips")
    clips = "all clips" if k is None else f"{k} clip{'s' if k != 1 else ''}"
    label = f" labelled {calibration['only_label']}" if calibration.get("only_label") else ""
    every = "; training speakers alike" if calibration.get("apply_to") == "all" else ""
    return f"speaker-calibrated ({clips}{label} of each test speaker, unlabeled audio{every})"


def compare_table(rows: list[dict]) -> str:
    """Markdown tables of :func:`compare_runs` rows, one per protocol: speaker-calibrated rows are never mixed with
    speaker-independent ones."""
    protocols = list(dict.fromkeys(r.get("protocol", "speaker-independent") for r in rows))
    if protocols == ["speaker-independent"]:
        return _table(rows)
    return "\n\n".join(f"{p}:\n\n" + _table([r for r in rows if r.get("protocol", "speaker-independent") == p])
                       for p in protocols)


def _table(rows: list[dict]) -> str:
    out = ["| run | corpus | recipe | seeds × folds | UA | WA | macro-F1 | weighted-F1 | val UA |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = _run_name(r)
        cells = [f"{r[m]['mean']:.2f} ± {r[m]['std']:.2f}" for m in METRICS]
        val = f"{r['val_ua']:.2f}" if r["val_ua"] is not None else "–"
        out.append(f"| {name} | {r['corpus']} | {r['recipe']} | {len(r['seeds'])} × {len(r['folds'])} | "
                   + " | ".join(cells) + f" | {val} |")
    return "\n".join(out)


def _run_name(row: dict) -> str:
    """A row's label: its first run folder's name, "…" when seeds of other runs are pooled into it."""
    return Path(row["runs"][0]).name + (" …" if len(row["runs"]) > 1 else "")


def paired_table(rows: list[dict], baseline: int) -> str:
    """Each row against row ``baseline`` (0-based) on the (seed, fold) pairs both have: UA difference."""
    base = rows[baseline]
    out = [f"UA minus that of {_run_name(base)}, paired by seed and fold:"]
    for i, r in enumerate(rows):
        d = None if i == baseline or r["corpus"] != base["corpus"] else paired_difference(r, base)
        if d:
            out.append(f"  {_run_name(r)}: {d['mean']:+.2f} ± {d['std']:.2f} over {d['pairs']} pairs "
                       f"(better in {d['better']}, worse in {d['worse']})")
    return "\n".join(out)


def plot_confusion(confusion, labels: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Row-normalised confusion matrix (recall per true class) with counts, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{100 * rates[i, j]:.0f}\n({counts[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="recall")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return Path(path)


def write_json(data: dict, path: str | Path) -> Path:
    """Atomic JSON write: a reader never sees half a results file."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
