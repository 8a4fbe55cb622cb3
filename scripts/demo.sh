#!/usr/bin/env bash
# The main job. Set up (if needed), then on an SST-2 subset with the offline MiniLM:
#   1. fine-tune two multi-exit models (joint cross-entropy, and SWEET's gradient separation);
#   2. calibrate each one's exit threshold for a 2x layer-count speed-up on the validation split
#      held out from train (never the dev split);
#   3. evaluate every exit policy on SST-2 dev (speed-accuracy curves, reports with plots);
#   4. compare the two schemes, and time real early exit against the full model.
# Everything lands in runs/demo (OFFRAMP_DEMO_OUT), replaced on a re-run; open runs/demo/*/report/report.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
venv="${OFFRAMP_VENV:-$root/.venv}"
cd "$root"
glue="${OFFRAMP_GLUE_DIR:-$root/../shared/data/glue}"
out="${OFFRAMP_DEMO_OUT:-runs/demo}"
offramp() { "$venv/bin/offramp" "$@"; }
data=(--task sst2 --data-dir "$glue")

for scheme in joint sweet; do
  echo "== training: $scheme" >&2
  offramp train "${data[@]}" --backbone minilm-l6 --scheme "$scheme" --train-size 2000 --epochs 1 \
    --max-length 64 --overwrite --out "$out/$scheme"  # the demo owns its folder: a re-run replaces it
  echo "== calibrating $scheme for a 2x speed-up (max-prob threshold, validation split)" >&2
  offramp calibrate "$out/$scheme" --target-speedup 2.0 --policy maxprob
  echo "== evaluating every policy of $scheme on SST-2 dev" >&2
  offramp evaluate "$out/$scheme" "${data[@]}" --grid-size 100 --report "$out/$scheme/report"
done
echo "== comparing joint and sweet" >&2
offramp compare "$out/joint" "$out/sweet" --report "$out/compare"
echo "== timing calibrated early exit (joint) against the full model, batch 1 and 64" >&2
offramp bench "$out/joint" "${data[@]}" --batch-sizes 1,64 --max-samples 256 --json "$out/bench.json"
echo "reports: $out/joint/report/report.md, $out/sweet/report/report.md, $out/compare/report.md" >&2
