#!/usr/bin/env bash
# Every row of docs/RESULTS.md, one command each, on the corpora in ../shared/data with the embedded Whisper-base
# encoder and the packaged CPU-sized config `cpu` (adapter d = 128; stage 1: 8 epochs; stage 2: 10 epochs).
#
#   recipes/results-cpu.sh [ROW ...]      # no ROW: all of them, in this order; `recipes/results-cpu.sh --list`
#
# ROW is features, stage1-pool, ravdess-stats, ravdess-superb, ravdess-emobox, ravdess-adapter, ravdess-full, ravdess-no-mask,
# ravdess-no-sd, ravdess-no-la, ravdess-full-freeze3, ravdess-full-pool-emovo, ravdess-full-stage1-16ep,
# ravdess-lr1e-4, ravdess-superb-no-standardize, emovo-stats, emovo-superb, emovo-emobox, emovo-adapter, emovo-full, probes,
# ravdess-stage1-probes, ravdess-stats-speaker, emovo-stats-speaker, ravdess-stats-utterance, ravdess-superb-speaker,
# emovo-superb-speaker, calibration-curve, calibration-curve-all,
# ravdess-adapter-speaker, emovo-adapter-speaker, ravdess-adapter-input-stats, stage1-pool-speaker, ravdess-full-speaker,
# emovo-full-speaker, regularisation, ravdess-adapter-smooth-fp32, ravdess-adapter-from-stats, emovo-adapter-from-stats,
# ravdess-adapter-from-stats-smooth, ravdess-full-per-fold, cross-corpus;
# SEEDS="0 1 2" (default "0") repeats the adapter, full, full-freeze3 and full-pool-emovo rows over seeds.
# Environment: DATA (default ../shared/data), WORK (default runs), EMOADAPT (the command, default `emoadapt`),
# PYTHON (for bench/linear_probe.py, default python).
# Every command resumes after an interruption and skips what is finished: re-run the same line.
set -euo pipefail
data=${DATA:-../shared/data}
work=${WORK:-runs}
read -r -a emoadapt <<< "${EMOADAPT:-emoadapt}"
read -r -a python <<< "${PYTHON:-python}"
seeds=${SEEDS:-0}
ravdess_store=$work/demo/features/ravdess-whisper-base   # the store `make demo` writes
emovo_store=$work/features/emovo-whisper-base
pool_store=$work/features/unlabeled-whisper-base
out=$work/results
# the rows below were measured with references as they were made then (their own spread, no emotion removed): the
# speaker-calibrated rows keep those settings so that they re-make their figures
before=(--set calibration.spread=reference --set calibration.remove_emotion=false)
ravdess=(--corpus "$data/ravdess" --store "$ravdess_store" --config cpu --no-progress "${before[@]}")
emovo=(--corpus "$data/emovo" --store "$emovo_store" --config cpu --no-progress "${before[@]}")

# the shared stage 1: the unlabeled pool only (no speaker of any RAVDESS / EMOVO fold), one run for every fold
stage1() {  # stage1 NAME [more pretrain flags: an ablation, another --store, --set ...]
    "${emoadapt[@]}" pretrain --store "$pool_store" --config cpu --no-progress "${@:2}" --out "$out/$1"
}

# the full method from a shared stage 1, once per seed in $seeds (seeds=0 full_cv ... for the seed-0-only rows);
# the corpus is the one the run name starts with
full_cv() {  # full_cv RUN STAGE1 [more cv flags]
    local args
    [[ $1 == ravdess-* ]] && args=("${ravdess[@]}") || args=("${emovo[@]}")
    for seed in $seeds; do
        "${emoadapt[@]}" cv "${args[@]}" --recipe full --stage1 "$out/$2" --seed "$seed" "${@:3}" --out "$out/$1-s$seed"
    done
}

row() {
    case "$1" in
        features)
            "${emoadapt[@]}" extract "$data/ravdess" --store "$ravdess_store" --no-progress
            "${emoadapt[@]}" extract "$data/emovo" --store "$emovo_store" --no-progress
            "${emoadapt[@]}" extract "$data/unlabeled" --store "$pool_store" --no-progress ;;
        stage1-pool) stage1 stage1-pool ;;
        ravdess-superb|ravdess-emobox|ravdess-stats|emovo-superb|emovo-emobox|emovo-stats)
            local corpus=${1%%-*} recipe=${1#*-} args
            [[ $corpus == ravdess ]] && args=("${ravdess[@]}") || args=("${emovo[@]}")
            "${emoadapt[@]}" cv "${args[@]}" --recipe "$recipe" --seed 0 --out "$out/$1-s0" ;;
        ravdess-adapter|emovo-adapter)
            local args
            [[ $1 == ravdess-* ]] && args=("${ravdess[@]}") || args=("${emovo[@]}")
            for seed in $seeds; do
                "${emoadapt[@]}" cv "${args[@]}" --recipe adapter --seed "$seed" --out "$out/$1-s$seed"
            done ;;
        ravdess-full|emovo-full)
            stage1 stage1-pool
            full_cv "$1" stage1-pool ;;
        ravdess-no-mask|ravdess-no-sd|ravdess-no-la)
            local term=${1#ravdess-no-}
            stage1 "stage1-pool-no-$term" "--no-$term-loss"
            seeds=0 full_cv "ravdess-full-no-$term" "stage1-pool-no-$term" ;;
        ravdess-full-freeze3)  # stage 2 with the stage-1 adapter frozen for its first 3 of 10 epochs (LP-FT)
            stage1 stage1-pool
            full_cv "$1" stage1-pool --set stage2.freeze_adapter_epochs=3 ;;
        ravdess-full-pool-emovo)  # more unlabeled audio, and emotional: stage 1 on the pool + EMOVO (no RAVDESS)
            stage1 stage1-pool-emovo --store "$emovo_store"
            full_cv "$1" stage1-pool-emovo ;;
        ravdess-full-stage1-16ep)  # more updates: the shared stage 1 for 16 epochs (1024 updates) instead of 8
            stage1 stage1-pool-16ep --set pretrain.epochs=16
            seeds=0 full_cv "$1" stage1-pool-16ep ;;
        ravdess-lr1e-4)  # the other stage-2 learning rate of the sweep (validation UA decides), both rows
            stage1 stage1-pool
            "${emoadapt[@]}" cv "${ravdess[@]}" --recipe adapter --seed 0 --set stage2.lr=1e-4 \
                --out "$out/ravdess-adapter-lr1e-4-s0"
            seeds=0 full_cv ravdess-full-lr1e-4 stage1-pool --set stage2.lr=1e-4 ;;
        ravdess-stats-speaker|emovo-stats-speaker|ravdess-stats-utterance|ravdess-superb-speaker|emovo-superb-speaker)
            # speaker-calibrated (all clips of each test speaker, unlabeled) and per-utterance normalisation
            local corpus=${1%%-*} recipe mode=${1##*-} args
            recipe=${1#*-}; recipe=${recipe%-*}
            [[ $corpus == ravdess ]] && args=("${ravdess[@]}") || args=("${emovo[@]}")
            "${emoadapt[@]}" cv "${args[@]}" --recipe "$recipe" --normalize "$mode" --seed 0 --out "$out/$1-s0" ;;
        calibration-curve)  # stats recipe, speaker-calibrated from k random clips / the neutral clips of each
            # test speaker (training speakers always use all of theirs)
            for corpus in ravdess emovo; do
                local args
                [[ $corpus == ravdess ]] && args=("${ravdess[@]}") || args=("${emovo[@]}")
                for k in 1 5 10 20; do
                    "${emoadapt[@]}" cv "${args[@]}" --recipe stats --normalize speaker --seed 0 \
                        --set calibration.clips=$k --out "$out/$corpus-stats-speaker-k$k-s0"
                done
                "${emoadapt[@]}" cv "${args[@]}" --recipe stats --normalize speaker --seed 0 \
                    --set calibration.only_label=neutral --out "$out/$corpus-stats-speaker-neutral-s0"
            done ;;
        calibration-curve-all)  # the same curve with calibration.apply_to=all: training and validation speakers
            # normalised by the same k random clips / neutral clips as the test speakers (the model learns the
            # condition it is used in, and validation sees it)
            for corpus in ravdess emovo; do
                local args
                [[ $corpus == ravdess ]] && args=("${ravdess[@]}") || args=("${emovo[@]}")
                for k in 1 5 10; do
                    "${emoadapt[@]}" cv "${args[@]}" --recipe stats --normalize speaker --seed 0 \
                        --set calibration.clips=$k --set calibration.apply_to=all \
                        --out "$out/$corpus-stats-speaker-k$k-all-s0"
                done
                "${emoadapt[@]}" cv "${args[@]}" --recipe stats --normalize speaker --seed 0 \
                    --set calibration.only_label=neutral --set calibration.apply_to=all \
                    --out "$out/$corpus-stats-speaker-neutral-all-s0"
            done ;;
        ravdess-adapter-input-stats)  # the head also sees the input's utterance statistics beside SAP(Z)
            "${emoadapt[@]}" cv "${ravdess[@]}" --recipe adapter --seed 0 --set head.input_statistics=true \
                --out "$out/$1-s0" ;;
        ravdess-adapter-speaker|emovo-adapter-speaker)
            local args
            [[ $1 == ravdess-* ]] && args=("${ravdess[@]}") || args=("${emovo[@]}")
            for seed in $seeds; do
                "${emoadapt[@]}" cv "${args[@]}" --recipe adapter --normalize speaker --seed "$seed" --out "$out/$1-s$seed"
            done ;;
        stage1-pool-speaker)  # the shared stage 1 on speaker-calibrated inputs: each pool speaker standardised
            # with their own frame statistics (the pool's manifest names the speakers)
            stage1 stage1-pool-speaker --corpus "$data/unlabeled" --normalize speaker ;;
        ravdess-full-speaker|emovo-full-speaker)  # the full method, both stages on speaker-calibrated inputs
            stage1 stage1-pool-speaker --corpus "$data/unlabeled" --normalize speaker
            full_cv "$1" stage1-pool-speaker --normalize speaker ;;
        regularisation)  # the regularised stage 2, one option at a time against the same fast settings (bf16
            # autocast, batches bucketed by length); validation UA picks (RAVDESS, seed 0)
            local fast=(--set trainer.precision=bf16-mixed --set stage2.bucket_by_length=true)
            local -A options=([fast]="" [tmask]="head.time_mask_prob=0.2" [cmask]="head.channel_mask_prob=0.1"
                              [mixup]="stage2.mixup_alpha=0.4" [smooth]="stage2.label_smoothing=0.1"
                              [wd]="stage2.weight_decay=0.1"
                              [smooth-mixup]="stage2.label_smoothing=0.1 stage2.mixup_alpha=0.4")
            for name in fast tmask cmask mixup smooth wd smooth-mixup; do
                local extra=() setting
                for setting in ${options[$name]}; do extra+=(--set "$setting"); done
                "${emoadapt[@]}" cv "${ravdess[@]}" --recipe adapter --seed 0 "${fast[@]}" "${extra[@]}" \
                    --out "$out/ravdess-adapter-$name-s0"
            done ;;
        ravdess-adapter-smooth-fp32)  # the setting validation chose in the row above, in fp32 without buckets
            for seed in $seeds; do
                "${emoadapt[@]}" cv "${ravdess[@]}" --recipe adapter --seed "$seed" --set stage2.label_smoothing=0.1 \
                    --out "$out/$1-s$seed"
            done ;;
        ravdess-adapter-from-stats|emovo-adapter-from-stats|ravdess-adapter-from-stats-smooth)  # the head starts
            # as the stats recipe's logistic regression on the input statistics, the SAP(Z) columns at zero;
            # -smooth: with label smoothing 0.1, which leaves a gradient where the regression fits the training clips;
            # FOLDS="1,2" runs those folds only
            local args extra=()
            [[ $1 == ravdess-* ]] && args=("${ravdess[@]}") || args=("${emovo[@]}")
            [[ $1 == *-smooth ]] && extra=(--set stage2.label_smoothing=0.1)
            for seed in $seeds; do
                "${emoadapt[@]}" cv "${args[@]}" --recipe adapter --seed "$seed" --set head.input_statistics=true \
                    --set head.start_from_statistics=true "${extra[@]}" ${FOLDS:+--folds "$FOLDS"} --out "$out/$1-s$seed"
            done ;;
        ravdess-full-per-fold)  # stage 1 per fold on the fold's own training audio (its training speakers only,
            # never a validation or test speaker) plus the unlabeled pool; FOLDS="1,2" runs those folds only
            "${emoadapt[@]}" extract "$data/unlabeled" --store "$pool_store" --no-progress
            for seed in $seeds; do
                "${emoadapt[@]}" cv "${ravdess[@]}" --recipe full --unlabeled-store "$pool_store" --seed "$seed" \
                    ${FOLDS:+--folds "$FOLDS"} --out "$out/$1-s$seed"
            done ;;
        cross-corpus)  # train on every RAVDESS speaker, test on every EMOVO clip, both mapped to the 7 classes
            # they share (label map shared7: RAVDESS calm dropped); both protocols, the stats and adapter recipes
            for recipe in stats adapter; do
                for mode in global speaker; do
                    local run=$out/cross-ravdess-$recipe-$mode-s0
                    "${emoadapt[@]}" finetune "${ravdess[@]}" --label-map shared7 --fold all --recipe "$recipe" \
                        --normalize "$mode" --seed 0 --out "$run"
                    "${emoadapt[@]}" evaluate --model "$run" --corpus "$data/emovo" --label-map shared7 \
                        --store "$emovo_store" --out "$out/cross-ravdess-to-emovo-$recipe-$mode-s0.json"
                done
            done ;;
        ravdess-superb-no-standardize)
            "${emoadapt[@]}" cv "${ravdess[@]}" --recipe superb --seed 0 --set standardize=false --out "$out/$1-s0" ;;
        probes)  # logistic regression on pooled statistics: of the cached features, of the frozen stage-1
                 # adapter's Z, of an untrained adapter's Z (the control)
            stage1 stage1-pool
            for corpus in ravdess emovo; do
                local store=$ravdess_store
                [[ $corpus == emovo ]] && store=$emovo_store
                local probe=("${python[@]}" bench/linear_probe.py --corpus "$data/$corpus" --store "$store")
                "${probe[@]}" --out "$out/$corpus-linear-probe.json"
                "${probe[@]}" --adapter "$out/stage1-pool" --out "$out/$corpus-probe-stage1-pool.json"
                "${probe[@]}" --adapter "$out/stage1-pool" --random-adapter --out "$out/$corpus-probe-random-adapter.json"
            done ;;
        ravdess-stage1-probes)  # the RAVDESS linear probe on the Z of every other stage 1 above that was run
            for run in stage1-pool-no-mask stage1-pool-no-sd stage1-pool-no-la stage1-pool-emovo stage1-pool-16ep; do
                if [[ -d $out/$run ]]; then
                    "${python[@]}" bench/linear_probe.py --corpus "$data/ravdess" --store "$ravdess_store" \
                        --adapter "$out/$run" --out "$out/ravdess-probe-$run.json"
                else
                    echo "skipped $run: run its row first" >&2
                fi
            done ;;
        *) echo "unknown row $1 (see recipes/results-cpu.sh --list)" >&2; return 2 ;;
    esac
}

all=(features stage1-pool ravdess-stats ravdess-superb ravdess-emobox ravdess-adapter ravdess-full ravdess-no-mask ravdess-no-sd
     ravdess-no-la ravdess-full-freeze3 ravdess-full-pool-emovo ravdess-full-stage1-16ep ravdess-lr1e-4
     ravdess-superb-no-standardize emovo-stats emovo-superb emovo-emobox emovo-adapter emovo-full probes ravdess-stage1-probes
     ravdess-stats-speaker emovo-stats-speaker ravdess-stats-utterance ravdess-superb-speaker emovo-superb-speaker calibration-curve calibration-curve-all ravdess-adapter-speaker
     emovo-adapter-speaker ravdess-adapter-input-stats stage1-pool-speaker ravdess-full-speaker emovo-full-speaker regularisation
     ravdess-adapter-smooth-fp32 ravdess-adapter-from-stats emovo-adapter-from-stats ravdess-adapter-from-stats-smooth
     ravdess-full-per-fold cross-corpus)
if [[ ${1:-} == --list ]]; then printf '%s\n' "${all[@]}"; exit 0; fi
if (( $# )); then rows=("$@"); else rows=("${all[@]}"); fi
for r in "${rows[@]}"; do row "$r"; done
runs=()
for run in "$out"/*-s[0-9]; do  # cross-validation runs (the cross-corpus rows are single models: their JSON is apart)
    [[ -f $run/results.json && $(basename "$run") != cross-* ]] && runs+=("$run")
done
"${emoadapt[@]}" compare "${runs[@]}"
