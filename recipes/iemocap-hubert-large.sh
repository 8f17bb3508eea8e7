#!/usr/bin/env bash
# The paper's setting (arXiv 2509.23795): IEMOCAP, 4 classes (excited merged into happy, 5531 utterances),
# leave-one-session-out over 5 folds, frozen HuBERT-large, full method (stage 1 -> stage 2), METHOD.md defaults
# (packaged config `iemocap-hubert-large`). Paper: 78.32 UA, 77.56 WA, 75.63 F1; about 2 points less without stage 1.
#
#   recipes/iemocap-hubert-large.sh /data/IEMOCAP_full_release [WORKDIR] [extra `emoadapt cv` flags ...]
#
# Environment: ENCODER (default hf:facebook/hubert-large-ll60k), DEVICE for extraction (default cuda),
# EMOADAPT (the command, default `emoadapt`). Every step resumes: re-run the same line after an interruption.
set -euo pipefail
iemocap=${1:?usage: recipes/iemocap-hubert-large.sh IEMOCAP_DIR [WORKDIR] [extra emoadapt cv flags]}
work=${2:-runs/iemocap-hubert-large}
shift $(( $# >= 2 ? 2 : 1 ))
encoder=${ENCODER:-hf:facebook/hubert-large-ll60k}
device=${DEVICE:-cuda}
read -r -a emoadapt <<< "${EMOADAPT:-emoadapt}"
corpus=(--kind iemocap --view 4class)

"${emoadapt[@]}" corpus "$iemocap" "${corpus[@]}"
"${emoadapt[@]}" extract "$iemocap" "${corpus[@]}" --encoder "$encoder" --device "$device" --store "$work/features"
"${emoadapt[@]}" cv --corpus "$iemocap" "${corpus[@]}" --store "$work/features" --recipe full \
    --config iemocap-hubert-large --out "$work/cv-full" "$@"
