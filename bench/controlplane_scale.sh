#!/usr/bin/env bash
# Control-plane scale benchmark: one endpoint change -> every affected proxy's ACK, SotW and delta.
# Usage: bash bench/controlplane_scale.sh [controlplane_scale.py options, see --help]
#   e.g. bash bench/controlplane_scale.sh --services 200 --endpoints 2000 --streams 200
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
cd "$REPO_DIR"

# shellcheck source=bench/deps.sh
source "$BENCH_DIR/deps.sh"
ensure_commands python3:python3
ensure_project_venv
# --profile samples the control plane with py-spy (a PyPI wheel with the binary inside)
if [[ " $* " == *" --profile "* && ! -x .venv/bin/py-spy ]]; then
    .venv/bin/pip install -q py-spy
fi

export BENCH_COMMAND="bash bench/controlplane_scale.sh${*:+ $*}"
exec .venv/bin/python "$BENCH_DIR/controlplane_scale.py" "$@"
