#!/usr/bin/env bash
# Set up (idempotently) and run the main job: a whole local mesh (control plane, bookinfo with a tulle
# sidecar per workload, a canary route), on the embedded store. Ctrl-C stops it.
# Usage: bash scripts/demo.sh [--duration SECONDS] [--delta] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv "tulle"
exec .venv/bin/tulle demo "$@"
