#!/usr/bin/env bash
# Leave-one-corpus-out (LOCO) rows of docs/RESULTS.md: train on two of RAVDESS, EMOVO and ASED (mapped onto the
# shared7 classes), test on the third; the embedded Whisper-base encoder, the stats recipe, on a CPU.
#
#   recipes/loco-cpu.sh [ROW ...]      # no ROW: all of them, in this order; `recipes/loco-cpu.sh --list`
#
# ROW is loco-features, loco-stats, loco-stats-choose-corpus, loco-stats-layers, loco-stats-balanced,
# loco-stats-balanced-wide, loco-stats-balanced-wider, loco-stats-speaker, loco-references,
# loco-stats-speaker-balanced, loco-references-balanced, loco-stats-speaker-shrunk, loco-references-shrunk,
# loco-stats-speaker-shrink-chosen, loco-references-shrink-chosen, loco-adapter,
# loco-stage1-pairs (not in the default list: 9 stage-1 and 18 stage-2 runs, hours on a CPU; SEEDS, default "0 1 2"),
# loco-stage1-frozen, loco-stage1-slowed, loco-stage1-stats-start (stage-2 variants on the pairs' stage 1),
# loco-stage1-calibrated (both sides of the pair on speaker-normalised inputs), loco-stage1-sources (the pairs'
# control), loco-stage1-calibrated-sources (the calibrated pairs' control) and loco-stage1-target-share (the
# calibrated pairs' stage 1 with half its draws the target's audio); none of these is in the default list either.
# Environment: DATA (default ../shared/data), WORK (default runs), EMOADAPT (default `emoadapt`), PYTHON (default
# python). Every command resumes after an interruption and skips what is finished: re-run the same line.
set -euo pipefail
data=${DATA:-../shared/data}
work=${WORK:-runs}
read -r -a emoadapt <<< "${EMOADAPT:-emoadapt}"
read -r -a python <<< "${PYTHON:-python}"
corpus=$work/loco/ravdess-emovo-ased          # the merged corpus (a manifest with a corpus column)
store=$work/loco/features-whisper-base
out=$work/loco
loco=(--corpus "$corpus" --store "$store" --protocol corpus --recipe stats --no-progress)
grid=(--set choose_by=corpus --set "head.c_grid=[0.001,0.01]")   # C chosen with each training corpus held out
# the speaker-normalised rows' shared settings: balanced weights, the wide C grid chosen with each training corpus held
# out, tested without a reference
speaker_balanced=(--set choose_by=corpus --set "head.c_grid=[0.001,0.003,0.01,0.03,0.1]" --set head.class_weight=balanced
                  --normalize speaker --set calibration.scope=none)

row() {
    case "$1" in
        loco-features)
            [[ -f $corpus/manifest.csv ]] || "${emoadapt[@]}" merge "$data/ravdess" "$data/emovo" "$data/ased" \
                --label-map shared7 --out "$corpus"
            "${emoadapt[@]}" extract "$corpus" --store "$store" --no-progress ;;
        loco-stats)  # the stats recipe as it is within a corpus: C on validation speakers of the training corpora
            "${emoadapt[@]}" cv "${loco[@]}" --out "$out/stats" ;;
        loco-stats-choose-corpus)  # C chosen by holding each training corpus out in turn
            "${emoadapt[@]}" cv "${loco[@]}" "${grid[@]}" --out "$out/stats-choose-corpus" ;;
        loco-stats-layers)  # which hidden states generalise: each set tried with every C, chosen like C (each
            # training corpus held out in turn); the set chosen per target and every set's inner UA are in the fold JSON
            "${emoadapt[@]}" cv "${loco[@]}" "${grid[@]}" \
                --set "head.layer_grid=[[0,1,2,3,4,5,6],[4,5,6],[2,3,4],[0,1,2],[6],[5],[4]]" \
                --out "$out/stats-layers" ;;
        loco-stats-balanced)  # every class weighs the same in the fit (disgust and surprise come from RAVDESS alone)
            "${emoadapt[@]}" cv "${loco[@]}" "${grid[@]}" --set head.class_weight=balanced --out "$out/stats-balanced" ;;
        loco-stats-balanced-wide)  # the same with C from a wider grid (still chosen on the training corpora)
            "${emoadapt[@]}" cv "${loco[@]}" --set choose_by=corpus --set "head.c_grid=[0.001,0.003,0.01,0.03,0.1]" \
                --set head.class_weight=balanced --out "$out/stats-balanced-wide" ;;
        loco-stats-balanced-wider)  # the wide grid put C at its upper edge for one target: up to 1
            "${emoadapt[@]}" cv "${loco[@]}" --set choose_by=corpus \
                --set "head.c_grid=[0.001,0.003,0.01,0.03,0.1,0.3,1.0]" --set head.class_weight=balanced \
                --out "$out/stats-balanced-wider" ;;
        loco-stats-speaker)  # speaker-normalised; tested without a reference (the training population's statistics)
            "${emoadapt[@]}" cv "${loco[@]}" "${grid[@]}" --normalize speaker --set calibration.scope=none \
                --out "$out/stats-speaker" ;;
        loco-references)  # every reference condition x setting on the speaker model; the setting chosen per target
            "${python[@]}" tools/reference_conditions.py --corpus "$corpus" --store "$store" --run "$out/stats-speaker" \
                --settings tau0 tau5 tau5-balance tau20-balance --json "$out/references.json" ;;  # its grid then
        loco-stats-speaker-balanced)  # speaker-normalised with the best settings without a reference: balanced weights,
            # the wide C grid chosen with each training corpus held out
            "${emoadapt[@]}" cv "${loco[@]}" "${speaker_balanced[@]}" --out "$out/stats-speaker-balanced" ;;
        loco-references-balanced)  # every reference condition x setting on that model
            "${python[@]}" tools/reference_conditions.py --corpus "$corpus" --store "$store" \
                --run "$out/stats-speaker-balanced" --json "$out/references-balanced.json" ;;
        loco-stats-speaker-shrunk)  # the same, each training speaker's statistics moved toward the population's by
            # n / (n + 50) (calibration.train_shrink), nearer to how a speaker is read without a reference
            "${emoadapt[@]}" cv "${loco[@]}" "${speaker_balanced[@]}" --set calibration.train_shrink=50 \
                --out "$out/stats-speaker-shrunk" ;;
        loco-references-shrunk)  # every reference condition x setting on that model
            "${python[@]}" tools/reference_conditions.py --corpus "$corpus" --store "$store" \
                --run "$out/stats-speaker-shrunk" --json "$out/references-shrunk.json" ;;
        loco-stats-speaker-shrink-chosen)  # the same with τ chosen per target from a grid, each training corpus
            # held out in turn and read without a reference (calibration.train_shrink_grid)
            "${emoadapt[@]}" cv "${loco[@]}" "${speaker_balanced[@]}" \
                --set "calibration.train_shrink_grid=[0,10,50,200,1000]" --out "$out/stats-speaker-shrink-chosen" ;;
        loco-references-shrink-chosen)  # every reference condition x setting on that model
            "${python[@]}" tools/reference_conditions.py --corpus "$corpus" --store "$store" \
                --run "$out/stats-speaker-shrink-chosen" --json "$out/references-shrink-chosen.json" ;;
        loco-adapter)  # the trained adapter (stage 2 alone, the CPU-sized config), epochs chosen on validation speakers
            "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe adapter --config cpu \
                --seed 0 --no-progress --out "$out/adapter-s0" ;;
        loco-stage1-pairs)  # the paper's stage 1 on the target's unlabeled audio (+ the sources'), then stage 2 on the
            # sources' labels, against the same stage 2 without stage 1; paired by seed and target (compare --baseline)
            for seed in ${SEEDS:-0 1 2}; do
                "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe adapter --config cpu \
                    --seed "$seed" --no-progress --out "$out/adapter-s$seed"
                "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe full --config cpu \
                    --set pretrain.test_audio=true --seed "$seed" --no-progress --out "$out/full-test-audio-s$seed"
            done ;;
        loco-stage1-frozen|loco-stage1-slowed)  # stage-2 variants that keep more of that stage 1: the adapter frozen
            # for the first 3 of 10 epochs, or at a third of the learning rate; each on the pair's own stage 1
            # (--stage1-from), so it is paired with the same adapter-s<seed> run; SEEDS as above
            if [[ $1 == loco-stage1-frozen ]]; then variant=(--set stage2.freeze_adapter_epochs=3); name=frozen
            else variant=(--set stage2.lr=1e-4); name=slowed; fi
            for seed in ${SEEDS:-0 1 2}; do
                "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe full --config cpu \
                    --set pretrain.test_audio=true "${variant[@]}" --seed "$seed" --no-progress \
                    --stage1-from "$out/full-test-audio-s$seed" --out "$out/full-test-audio-$name-s$seed"
            done ;;
        loco-stage1-stats-start)  # both sides of the pair with the head started as the stats recipe's regression
            # (head.start_from_statistics): adapter-stats-start-s<seed> without stage 1, and on the pair's stage 1
            local start=(--set head.input_statistics=true --set head.start_from_statistics=true)
            for seed in ${SEEDS:-0 1 2}; do
                "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe adapter --config cpu \
                    "${start[@]}" --seed "$seed" --no-progress --out "$out/adapter-stats-start-s$seed"
                "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe full --config cpu \
                    --set pretrain.test_audio=true "${start[@]}" --seed "$seed" --no-progress \
                    --stage1-from "$out/full-test-audio-s$seed" --out "$out/full-test-audio-stats-start-s$seed"
            done ;;
        loco-stage1-calibrated)  # stage 1 on calibrated inputs: both sides of the pair speaker-normalised, each target
            # speaker read with its own clips as the reference (the default calibration), the training speakers with
            # theirs; adapter-speaker-s<seed> without stage 1, full-test-audio-speaker-s<seed> with it; SEEDS as above
            for seed in ${SEEDS:-0 1 2}; do
                "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe adapter --config cpu \
                    --normalize speaker --seed "$seed" --no-progress --out "$out/adapter-speaker-s$seed"
                "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe full --config cpu \
                    --normalize speaker --set pretrain.test_audio=true --seed "$seed" --no-progress \
                    --out "$out/full-test-audio-speaker-s$seed"
            done ;;
        loco-stage1-sources)  # the control for those pairs: the same stage 1 on the sources' audio alone (it separates
            # "pre-training" from "pre-training on the target"); SEEDS as above
            for seed in ${SEEDS:-0 1 2}; do
                "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe full --config cpu \
                    --seed "$seed" --no-progress --out "$out/full-sources-s$seed"
            done ;;
        loco-stage1-target-share)  # loco-stage1-calibrated's stage 1 with half of every epoch's draws the target's
            # audio, whatever its clip count (15-60 % when each clip is drawn once); paired with adapter-speaker-s<seed>.
            # 0.5 is fixed beforehand, not chosen on any target; SEEDS as above, FOLDS (default "1,2,3") the targets
            for seed in ${SEEDS:-0 1 2}; do
                "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe full --config cpu \
                    --normalize speaker --set pretrain.test_audio=true --set pretrain.test_audio_share=0.5 \
                    --seed "$seed" --folds "${FOLDS:-1,2,3}" --no-progress --out "$out/full-test-audio-share-speaker-s$seed"
            done ;;
        loco-stage1-calibrated-sources)  # the control for the calibrated pairs: stage 1 on the sources' audio alone,
            # speaker-normalised as in loco-stage1-calibrated; SEEDS as above
            for seed in ${SEEDS:-0 1 2}; do
                "${emoadapt[@]}" cv --corpus "$corpus" --store "$store" --protocol corpus --recipe full --config cpu \
                    --normalize speaker --seed "$seed" --no-progress --out "$out/full-sources-speaker-s$seed"
            done ;;
        *) echo "unknown row $1 (see recipes/loco-cpu.sh --list)" >&2; return 2 ;;
    esac
}

all=(loco-features loco-stats loco-stats-choose-corpus loco-stats-layers loco-stats-balanced loco-stats-balanced-wide loco-stats-balanced-wider loco-stats-speaker loco-references loco-stats-speaker-balanced loco-references-balanced loco-stats-speaker-shrunk loco-references-shrunk loco-stats-speaker-shrink-chosen loco-references-shrink-chosen loco-adapter)
if [[ ${1:-} == --list ]]; then printf '%s\n' "${all[@]}"; exit 0; fi
if (( $# )); then rows=("$@"); else rows=("${all[@]}"); fi
for r in "${rows[@]}"; do row "$r"; done
runs=()
for run in "$out"/stats* "$out"/adapter-s* "$out"/full-test-audio-* "$out"/full-sources-s*; do [[ -f $run/results.json ]] && runs+=("$run"); done
if (( ${#runs[@]} )); then "${emoadapt[@]}" compare "${runs[@]}"; fi
