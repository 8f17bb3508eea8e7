"""A reference point for the trained recipes: logistic regression on pooled statistics of the cached features.

    python bench/linear_probe.py --corpus ../shared/data/ravdess --store runs/demo/features/ravdess-whisper-base
                                 [--out docs/results/ravdess-whisper-base-linear-probe.json]

Per utterance: the mean and standard deviation over time of every cached hidden state, concatenated
([L+1] x 2D values). Per fold: standardised with the training speakers' statistics, then scikit-learn's
LogisticRegression; its inverse regularisation C is chosen among 0.01, 0.1, 1 on the fold's validation speakers
(the same split the trained recipes pick checkpoints on), refitted on training + validation speakers, and
tested once. Nothing is trained by gradient descent through frames and no test speaker informs any choice.

It answers one question: how much of what the trained recipes reach is already in utterance-level statistics of
the frozen features. Prints per-fold and mean ± std UA / WA / macro-F1, writes JSON with the protocol and commit.
The fitting is the ``stats`` recipe's (:mod:`emoadapt.closed_form`); ``emoadapt cv --recipe stats`` is the
first-class model of the plain probe (a model folder that predicts), and this script's own job is ``--adapter``.

``--adapter RUN`` probes a stage-1 adapter instead: the statistics are those of its frames Z (whole utterances,
eval mode) rather than of the cached hidden states; ``--random-adapter`` probes an untrained adapter of the same
shape with the same input standardisation (a control: what stage 1 added over random weights). Only valid for a
stage-1 adapter that never saw the corpus's test speakers (e.g. one trained on the unlabeled pool).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from emoadapt.training.closed_form import choose_and_fit
from emoadapt.corpora import load_corpus
from emoadapt.errors import EmoadaptError
from emoadapt.atomic import atomic_write_json as write_json
from emoadapt.training.metrics import CrossValidationReport, score
from emoadapt.store.features import FeatureStore
from emoadapt.model import StatsConfig
from emoadapt.provenance import git_commit, versions

C_GRID = StatsConfig().c_grid  # the stats recipe's grid


def pooled_statistics(store: FeatureStore, ids, adapter=None) -> np.ndarray:
    """[N, (L+1) * 2D]: per utterance, mean and std over time of every stored hidden state; with ``adapter``
    [N, 2d]: mean and std over time of the adapter's Z."""
    out = []
    for i in ids:
        x = store.get(i).astype(np.float32)                 # (L+1, T, D)
        if adapter is not None:
            with torch.inference_mode():
                z = adapter(torch.from_numpy(x)[None], torch.zeros(1, x.shape[1], dtype=torch.bool))[0]
            x = z.numpy()[None]                              # (1, T, d)
        out.append(np.concatenate([x.mean(1), x.std(1)], axis=-1).ravel())
    return np.stack(out)


def load_adapter(run: str, random: bool, corpus):
    """The teacher adapter of a stage-1 run (or, with ``random``, a fresh one of its shape and standardisation);
    refused when it saw any of the corpus's test utterances or speakers (it is probed on every fold)."""
    from emoadapt.modelfolder import load_model, read_stage1_adapter
    from emoadapt.modelfolder.seen import read_seen, refuse_on_folds
    from emoadapt.model import WAPTransformer
    folder, info = read_stage1_adapter(run)
    refuse_on_folds(read_seen(folder, info), corpus, corpus.folds.fold_ids(), model=str(folder),
                    advice=" (probe a stage 1 trained on other audio, e.g. the unlabeled pool)")
    trained = load_model(folder).model.eval()
    if not random:
        return trained
    torch.manual_seed(0)
    fresh = WAPTransformer(trained.config).eval()
    fresh.standardize.load_state_dict(trained.standardize.state_dict())
    return fresh


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation-speaker draw (as emoadapt cv)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--adapter", help="probe this stage-1 adapter's frames Z instead of the cached features")
    parser.add_argument("--random-adapter", action="store_true", help="with --adapter: an untrained one of its shape")
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    corpus, store = load_corpus(args.corpus), FeatureStore(args.store)
    index = {label: k for k, label in enumerate(corpus.labels)}
    rows = [r for r in corpus.rows if r.id in store]
    ids = [r.id for r in rows]
    position = {i: n for n, i in enumerate(ids)}
    adapter = load_adapter(args.adapter, args.random_adapter, corpus) if args.adapter else None
    features = pooled_statistics(store, ids, adapter)
    labels = np.array([index[r.label] for r in rows])
    report, chosen = CrossValidationReport(), {}
    for k in corpus.folds.fold_ids():
        split = corpus.folds.split(k, val_fraction=args.val_fraction, seed=args.seed)
        train, val, test = ([position[i] for i in part if i in position] for part in (split.train, split.val, split.test))
        scaler, model, record = choose_and_fit((features[train], labels[train]), (features[val], labels[val]),
                                               corpus.labels, C_GRID)
        report.folds[k] = score(labels[test], model.predict(scaler.transform(features[test])), corpus.labels)
        best, val_ua = record["C"], {float(c): v for c, v in record["val_ua"].items()}
        chosen[k] = {"C": best, "val_ua": val_ua}
        print(f"fold {k}: C={best} (val UA {val_ua[best]:.2f})  {report.folds[k].line()}", flush=True)
    print(report.table())
    if args.out:
        what = ("logistic regression on per-utterance mean+std of every cached hidden state" if adapter is None else
                f"logistic regression on per-utterance mean+std of the frames Z of "
                f"{'an untrained adapter shaped like ' if args.random_adapter else 'the stage-1 adapter '}{args.adapter}")
        write_json({"what": what,
                    "corpus": corpus.name, "view": corpus.view, "store": str(store.root),
                    "encoder": store.meta.get("fingerprint"), "seed": args.seed, "c_grid": list(C_GRID),
                    "chosen_on_validation": {str(k): v for k, v in chosen.items()}, **report.to_json(),
                    "seconds": round(time.perf_counter() - t0, 1), "commit": git_commit(), "versions": versions()},
                   args.out)
        print(f"written: {args.out}")
    return 0


def run(argv=None) -> int:
    """main() with emoadapt's errors as one line and exit code 2, as the `emoadapt` command gives them."""
    try:
        return main(argv)
    except EmoadaptError as error:
        print(f"linear_probe: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
