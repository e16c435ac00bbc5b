#!/usr/bin/env bash
# Set up (idempotently) and run the test suite: lint, then pytest without the slow suites.
# Usage: bash scripts/test.sh [pytest args]      e.g. bash scripts/test.sh -m slow
# The compiled hot path is rebuilt first when its sources changed (scripts/venv.sh);
# TULLE_PURE_PYTHON=1 bash scripts/test.sh runs the same tests on the uncompiled .py sources.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv "tulle, pytest, hypothesis, ruff"
.venv/bin/ruff check src tests bench
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/pytest -q "$@"
