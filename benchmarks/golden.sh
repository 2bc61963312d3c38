#!/usr/bin/env bash
# Byte-identity check of a change that must not alter output (the structure refactor, README "Development"):
# the Quickstart's four commands, overlay --maps 3 --save-raw, predict jsonl + csv and two --engine ray runs into
# OUT, then the sha256 of every file written (manifests aside: they hold mtimes). Run from the repository root,
# before and after the change, with the same OUT:  bash benchmarks/golden.sh /tmp/golden > before.txt
set -euo pipefail
OUT=$1; rm -rf "$OUT"; mkdir -p "$OUT"
cp -r sample_data "$OUT/data"
D=$OUT/data
camcli train $D --out $OUT/train --exist-ok -q > $OUT/train.stdout
camcli predict $D/val --checkpoint $OUT/train/best.safetensors --format table > $OUT/predict_table.txt
camcli evaluate $D/val --checkpoint $OUT/train/best.safetensors --boxes $D/val_boxes.json --calibrate --out $OUT/evaluate -q > $OUT/evaluate.txt
camcli overlay $D/val --checkpoint $OUT/evaluate/calibrated.safetensors --draw-box --out-dir $OUT/overlay -q > $OUT/overlay.jsonl
camcli overlay $D/val --checkpoint $OUT/train/best.safetensors --maps 3 --save-raw --out-dir $OUT/maps3 -q > $OUT/maps3.jsonl
camcli predict $D/val --checkpoint $OUT/train/best.safetensors --format jsonl --boxes > $OUT/predict.jsonl
camcli predict $D/val --checkpoint $OUT/train/best.safetensors --format csv > $OUT/predict.csv
camcli overlay $D/val --checkpoint $OUT/train/best.safetensors --engine ray --out-dir $OUT/ray -q > $OUT/ray.jsonl
camcli evaluate $D/val --checkpoint $OUT/train/best.safetensors --boxes $D/val_boxes.json --engine ray --out $OUT/evaluate_ray -q --format json > $OUT/evaluate_ray.json
cd $OUT
find . -type f ! -path "./data/*" ! -name ".camcli-outputs.jsonl" -print0 | sort -z | xargs -0 sha256sum | sed "s#$OUT#OUT#g"
