#!/usr/bin/env bash
# Set up (idempotently) and run the test suite: lint, then pytest without the slow suites.
# Usage: bash scripts/test.sh [pytest args]      e.g. bash scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv >/dev/null 2>&1 || python3 -m venv .venv
if ! .venv/bin/python -c "import tulle, pytest, hypothesis, ruff" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
  touch .venv/.installed
fi
.venv/bin/ruff check src tests bench
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/pytest -q "$@"
