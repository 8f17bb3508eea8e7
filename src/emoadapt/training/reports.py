"""Reports over finished runs: ``emoadapt compare`` (runs grouped by their settings, seeds pooled, protocols tabled
apart, paired differences against a baseline) and the confusion-matrix plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write
from .metrics import METRICS
from ..calibration import protocol_of
from .settings import config_from_record, with_defaults


def compare_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    """Cross-validation runs (folders with ``results.json``, or such files, e.g. ``docs/results/<run>.json``) grouped
    by everything but the seed — corpus, view, recipe, config (settings added since a run at their defaults), shared
    stage-1 adapter, the folds run — one row per group: mean ± std over every (fold, seed) score, the std of the per-seed means,
    and the mean validation UA (the number settings are chosen on; never the test)."""
    groups: dict[str, dict] = {}
    paths = [Path(run) / "results.json" if Path(run).is_dir() else Path(run) for run in run_dirs]
    for path in dict.fromkeys(p.resolve() for p in paths):  # a run named twice (overlapping globs) counts once
        try:
            r = json.loads(path.read_text())
            protocol, config = r["protocol"], with_defaults(r["config"])
            # how test speakers were treated follows from the settings (runs saved before a setting existed too)
            protocol = {**protocol, **protocol_of(config_from_record(r["config"], where=str(path)))}
        except KeyError as error:
            raise ValueError(f"{path}: not a cross-validation results file (it has no {error} field; `emoadapt cv` "
                             f"writes one, a single finetune run does not)") from None
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"{path}: not a cross-validation results file ({error})") from None
        seed = config.pop("seed", r.get("seed"))
        stage1 = (r.get("shared_stage1") or {}).get("path")
        augmentation = {k: v for k, v in (r.get("augmentation") or {}).items() if k != "store"} or None
        # the corpus by its folder when recorded (a link to it is the same corpus, under another name)
        corpus_id = str(Path(protocol["root"]).resolve()) if protocol.get("root") else protocol["corpus"]
        key = json.dumps([corpus_id, protocol.get("view"), protocol.get("kind"), r["recipe"], config,
                          stage1, r.get("unlabeled_stores"), augmentation,
                          sorted(r["folds"])],  # a run of fewer folds (unfinished) is its own row, never pooled
                         sort_keys=True)
        g = groups.setdefault(key, {"runs": [], "corpus": protocol["corpus"], "view": protocol.get("view"),
                                    "recipe": r["recipe"], "shared_stage1": stage1, "scores": {}, "val_ua": [],
                                    "protocol": protocol_name(protocol), "targets": protocol.get("targets"),
                                    "augmentation": augmentation, "corpus_id": corpus_id})
        if seed in g["scores"]:
            raise ValueError(f"{path}: two runs with the same settings and seed {seed}")
        g["runs"].append(str(path.parent) if path.name == "results.json" else str(path.with_suffix("")))
        g["scores"][seed] = r["folds"]  # fold -> its scores (ua, wa, ...) and best_val_ua
        g["val_ua"] += [v.get("best_val_ua") for v in r["folds"].values() if v.get("best_val_ua") is not None]
    rows = []
    for g in groups.values():
        row = {k: g[k] for k in ("runs", "corpus", "corpus_id", "view", "recipe", "shared_stage1", "protocol",
                                 "targets", "augmentation")}
        row["seeds"] = sorted(g["scores"])
        row["folds"] = sorted({int(k) for folds in g["scores"].values() for k in folds})
        for m in METRICS:
            every = [folds[k][m] for folds in g["scores"].values() for k in folds]
            per_seed = [float(np.mean([f[m] for f in folds.values()])) for folds in g["scores"].values()]
            row[m] = {"mean": float(np.mean(every)), "std": float(np.std(every)), "n": len(every),
                      "std_of_seed_means": float(np.std(per_seed))}
            closed = [(folds[k].get("closed") or folds[k])[m] for folds in g["scores"].values() for k in folds]
            row[f"closed_{m}"] = {"mean": float(np.mean(closed)), "std": float(np.std(closed)), "n": len(closed)}
        row["by_fold"] = {k: {kind: float(np.mean([(folds[k].get("closed") or folds[k])["ua"] if kind == "closed"
                                                   else folds[k]["ua"] for folds in g["scores"].values()
                                                   if k in folds]))
                              for kind in ("closed", "open")} for k in map(str, row["folds"])}
        row["val_ua"] = float(np.mean(g["val_ua"])) if g["val_ua"] else None
        # leave-one-corpus-out runs are paired on the closed UA (over the target's classes), their headline figure
        closed_scores = all("closed" in v for folds in g["scores"].values() for v in folds.values())
        row["paired_on"] = "closed UA" if closed_scores else "UA"
        row["ua_by_seed_and_fold"] = {str(seed): {k: (v["closed"] if closed_scores else v)["ua"]
                                                  for k, v in folds.items()}
                                      for seed, folds in g["scores"].items()}
        rows.append(row)
    return rows


def _recipe(row: dict) -> str:
    augmentation = row.get("augmentation")
    return row["recipe"] + (f" + augmentation ×{augmentation['copies']}" if augmentation else "")


def paired_difference(row: dict, baseline: dict) -> dict | None:
    """UA of ``row`` minus UA of ``baseline`` on every (seed, fold) both have: mean ± std, count, wins."""
    a, b = row["ua_by_seed_and_fold"], baseline["ua_by_seed_and_fold"]
    diffs = [a[s][k] - b[s][k] for s in a if s in b for k in a[s] if k in b[s]]
    if not diffs:
        return None
    return {"mean": float(np.mean(diffs)), "std": float(np.std(diffs)), "pairs": len(diffs),
            "better": int(sum(d > 0 for d in diffs)), "worse": int(sum(d < 0 for d in diffs))}


def protocol_name(protocol: dict) -> str:
    """"speaker-independent", or what a speaker-calibrated run used of its test speakers; leave-one-corpus-out
    runs are named so first."""
    if protocol.get("kind") == "leave-one-corpus-out":
        rest = protocol_name({k: v for k, v in protocol.items() if k != "kind"})
        return "leave-one-corpus-out" + ("" if rest == "speaker-independent" else f", {rest}")
    if protocol.get("stage1_test_audio"):
        rest = protocol_name({k: v for k, v in protocol.items() if k != "stage1_test_audio"}
                             | {"speaker_independent": not protocol.get("calibration")})
        # its test speakers were heard (unlabeled), so "speaker-independent" would mislead: say what was not used
        return ("stage 1 on the test utterances' unlabeled audio; "
                + ("no speaker reference" if rest == "speaker-independent" else rest))
    if protocol.get("speaker_independent", True):
        return "speaker-independent"
    calibration = protocol.get("calibration") or {}
    k = calibration.get("clips")
    clips = "all clips" if k is None else f"{k} clip{'s' if k != 1 else ''}"
    label = f" labelled {calibration['only_label']}" if calibration.get("only_label") else ""
    every = "; training speakers alike" if calibration.get("apply_to") == "all" else ""
    whom = "the test set as one reference" if calibration.get("scope") == "corpus" else "each test speaker"
    shrunk = f"; shrunk, τ = {calibration['shrink']:g}" if calibration.get("shrink") else ""
    balanced = "; balance-weighted" if calibration.get("balance") else ""
    spread = "; the population's spread" if calibration.get("spread") == "population" else ""
    emotion = "; its emotion removed" if calibration.get("remove_emotion") else ""
    return f"speaker-calibrated ({clips}{label} of {whom}, unlabeled audio{every}{shrunk}{balanced}{spread}{emotion})"


def compare_table(rows: list[dict]) -> str:
    """Markdown tables of :func:`compare_runs` rows, one per protocol: speaker-calibrated rows are never mixed with
    speaker-independent ones."""
    protocols = list(dict.fromkeys(r.get("protocol", "speaker-independent") for r in rows))
    if protocols == ["speaker-independent"]:
        return _table(rows)
    return "\n\n".join(f"{p}:\n\n" + _table([r for r in rows if r.get("protocol", "speaker-independent") == p])
                       for p in protocols)


def _table(rows: list[dict]) -> str:
    if rows and rows[0].get("targets"):
        return _corpus_table(rows)
    out = ["| run | corpus | recipe | seeds × folds | UA | WA | macro-F1 | weighted-F1 | val UA |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = _run_name(r)
        cells = [f"{r[m]['mean']:.2f} ± {r[m]['std']:.2f}" for m in METRICS]
        val = f"{r['val_ua']:.2f}" if r["val_ua"] is not None else "–"
        out.append(f"| {name} | {r['corpus']} | {_recipe(r)} | {len(r['seeds'])} × {len(r['folds'])} | "
                   + " | ".join(cells) + f" | {val} |")
    return "\n".join(out)


def _corpus_table(rows: list[dict]) -> str:
    """Leave-one-corpus-out rows: UA on each held-out corpus over its classes, closed / open, then the means."""
    targets = rows[0]["targets"]
    out = ["| run | recipe | seeds | " + " | ".join(f"{name} UA closed / open" for name in targets.values())
           + " | mean UA closed | mean UA open | WA closed | macro-F1 closed | val UA |",
           "|---|---|---|" + "---|" * (len(targets) + 5)]
    for r in rows:
        cells = [f"{r['by_fold'][k]['closed']:.2f} / {r['by_fold'][k]['open']:.2f}" if k in r["by_fold"] else "–"
                 for k in targets]
        val = f"{r['val_ua']:.2f}" if r["val_ua"] is not None else "–"
        out.append(f"| {_run_name(r)} | {_recipe(r)} | {len(r['seeds'])} | " + " | ".join(cells)
                   + f" | {r['closed_ua']['mean']:.2f} | {r['ua']['mean']:.2f} | {r['closed_wa']['mean']:.2f} | "
                     f"{r['closed_macro_f1']['mean']:.2f} | {val} |")
    return "\n".join(out)


def _run_name(row: dict) -> str:
    """A row's label: its first run folder's name, "…" when seeds of other runs are pooled into it."""
    return Path(row["runs"][0]).name + (" …" if len(row["runs"]) > 1 else "")


def paired_table(rows: list[dict], baseline: int) -> str:
    """Each row against row ``baseline`` (0-based) on the (seed, fold) pairs both have: UA difference."""
    base = rows[baseline]
    out = [f"{base.get('paired_on', 'UA')} minus that of {_run_name(base)}, paired by seed and fold:"]
    for i, r in enumerate(rows):
        comparable = (r.get("corpus_id", r["corpus"]) == base.get("corpus_id", base["corpus"])
                      and r.get("paired_on") == base.get("paired_on"))
        d = None if i == baseline or not comparable else paired_difference(r, base)
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


def plot_reliability(curves: dict[str, list[dict]], path: str | Path, *, title: str = "") -> Path:
    """A reliability diagram: accuracy against mean confidence per confidence bin, one line per curve (``before``
    and ``after`` temperature scaling), the points sized by their bin's count; the diagonal is calibrated."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    total = max(sum(p["count"] for p in points) for points in curves.values()) or 1
    for name, points in curves.items():
        x, y = [p["confidence"] for p in points], [p["accuracy"] for p in points]
        line, = ax.plot(x, y, marker="", label=name)
        ax.scatter(x, y, s=[4 + 400 * p["count"] / total for p in points], color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return Path(path)
