#!/usr/bin/env bash
# The HEI-MED retina experiment (examples/retina/README.md): fit on the healthy retinas, then
# evaluate against the exudate masks and against the all-lesion masks, for each backbone.
#
#   examples/retina/run.sh [DATA [OUT]]
#
# DATA defaults to ../shared/data/hei_med beside the repository, OUT to /tmp/patchcore-retina.
# Environment: PATCHCORE (binary, default build/patchcore), BACKBONES (default
# "inception_v3 mobilenet_v2"), FIT_OPTIONS (extra options for fit, e.g. "--coreset-ratio 0.1").
# A model that already exists in OUT is reused. Runs at low priority (nice 10).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
patchcore=${PATCHCORE:-$root/build/patchcore}
data=$(realpath "${1:-$root/../shared/data/hei_med}")
out=${2:-/tmp/patchcore-retina}
backbones=${BACKBONES:-inception_v3 mobilenet_v2}
mkdir -p "$out"

# eval reads ground_truth/<kind>/: an MVTec-layout folder of symlinks whose ground_truth is the
# all-lesion masks lets the same command score against every annotated lesion.
all=$out/hei_med_all_lesions
rm -rf "$all"
mkdir -p "$all"
ln -s "$data/train" "$all/train"
ln -s "$data/test" "$all/test"
ln -s "$data/ground_truth_all_lesions" "$all/ground_truth"

for b in $backbones; do
  model=$out/$b.patchcore
  if [[ ! -f $model ]]; then
    # shellcheck disable=SC2086
    nice -n 10 "$patchcore" fit --data "$data" --out "$model" --backbone "$b" ${FIT_OPTIONS:-}
  fi
  nice -n 10 "$patchcore" eval --model "$model" --data "$data" --out "$out/eval-$b-exudate"
  nice -n 10 "$patchcore" eval --model "$model" --data "$all" --out "$out/eval-$b-all-lesions"
done

echo
printf '%-40s %s\n' "evaluation" "metrics.json (image AUROC, pixel AUROC, AUPRO, F1)"
for m in "$out"/eval-*/metrics.json; do
  printf '%-40s %s\n' "$(basename "$(dirname "$m")")" \
    "$(grep -E '^  "(image_auroc|pixel_auroc|aupro|image_f1)"' "$m" | tr -d ' \n')"
done
