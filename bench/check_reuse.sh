#!/usr/bin/env bash
# Counts the proxy's upstream connect() calls per request under keep-alive load (expect ~0).
# Usage: bash bench/check_reuse.sh [--target tulle|nginx|haproxy|haproxy_tcp|tulle_tcp] [--duration S]
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
cd "$REPO_DIR"

# shellcheck source=bench/deps.sh
source "$BENCH_DIR/deps.sh"
ensure_commands wrk:wrk nginx:nginx haproxy:haproxy strace:strace python3:python3
ensure_project_venv

exec python3 "$BENCH_DIR/check_reuse.py" "$@"
