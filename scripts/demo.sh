#!/usr/bin/env bash
# The main job: set up (if needed), fine-tune a multi-exit MiniLM on an SST-2 subset, and print
# every exit's dev accuracy. Extra arguments go to `offramp train`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
venv="${OFFRAMP_VENV:-$root/.venv}"
cd "$root"
glue="${OFFRAMP_GLUE_DIR:-$root/../shared/data/glue}"
out="${OFFRAMP_DEMO_OUT:-runs/demo}"
"$venv/bin/offramp" train --task sst2 --data-dir "$glue" --backbone minilm-l6 \
  --train-size 2000 --epochs 1 --out "$out" "$@"
"$venv/bin/offramp" evaluate "$out" --task sst2 --data-dir "$glue"
