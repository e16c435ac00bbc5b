#!/usr/bin/env bash
# Set up (idempotently) and run the main job: a whole local mesh (control plane, bookinfo with a tulle
# sidecar per workload, a canary route), on the embedded store. Ctrl-C stops it.
# Usage: bash scripts/demo.sh [--duration SECONDS] [--delta] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv >/dev/null 2>&1 || python3 -m venv .venv
if ! .venv/bin/python -c "import tulle" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
  touch .venv/.installed
fi
exec .venv/bin/tulle demo "$@"
