#!/usr/bin/env bash
# Data-plane benchmark: direct vs nginx vs HAProxy vs tulle, HTTP/1.1 and L4, on loopback.
# Usage: bash bench/run.sh [--quick] [run_matrix.py options, see --help]
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
cd "$REPO_DIR"

# shellcheck source=bench/deps.sh
source "$BENCH_DIR/deps.sh"
ensure_commands wrk:wrk nginx:nginx haproxy:haproxy h2load:nghttp2-client python3:python3
ensure_project_venv

export BENCH_COMMAND="bash bench/run.sh${*:+ $*}"
exec python3 "$BENCH_DIR/run_matrix.py" "$@"
