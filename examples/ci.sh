#!/usr/bin/env bash
# Gate a model in CI with camcli (docs/ci.md): train a head, evaluate it on held-out data with
# requirements, compare it with the model in production, and let the exit status decide. 0: every requirement holds; 4: one failed (each
# printed as PASS/FAIL on stderr, all in OUT/evaluate/metrics.json); anything else: the run itself
# did not finish (2: a mistake, 3: the environment, 130: interrupted).
#
#   bash examples/ci.sh DATA OUT [PREVIOUS]
#   DATA: an ImageFolder with train/ and val/ (and val_boxes.json); PREVIOUS: the checkpoint in
#   production, which the new one must still agree with (rankings and maps)
set -uo pipefail
DATA=${1:-sample_data}
OUT=${2:-runs/ci}
PREVIOUS=${3:-}
MIN_ACCURACY=${MIN_ACCURACY:-0.95}
MIN_POINTING_GAME=${MIN_POINTING_GAME:-0.8}

camcli train "$DATA" --out "$OUT/train" --exist-ok -q || exit $?
camcli evaluate "$DATA/val" --checkpoint "$OUT/train/best.safetensors" --boxes "$DATA/val_boxes.json" \
    --out "$OUT/evaluate" -q --format json \
    --require "accuracy >= $MIN_ACCURACY" --require "pointing_game >= $MIN_POINTING_GAME" > "$OUT/evaluate.json"
status=$?
if [ "$status" -eq 0 ] && [ -n "$PREVIOUS" ]; then
    camcli compare "$DATA/val" --base "$PREVIOUS" --candidate "$OUT/train/best.safetensors" --out "$OUT/compare" -q \
        --output "$OUT/compare.jsonl" --require "top1_agreement >= ${MIN_AGREEMENT:-0.9}" --require "map_spearman_median >= ${MIN_MAP_SPEARMAN:-0.8}"
    status=$?
fi
case $status in
    0) echo "gate passed: the model may ship" ;;
    4) echo "gate failed: see the FAIL lines above ($OUT/evaluate/metrics.json, $OUT/compare/report.html)" >&2 ;;
    *) echo "a step did not finish, or inputs failed (exit $status)" >&2 ;;
esac
exit $status
