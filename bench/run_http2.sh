#!/usr/bin/env bash
# HTTP/2 benchmark: h2load (h2c) through nginx vs through tulle, 1 and 100 streams per connection.
# Usage: bash bench/run_http2.sh [--pinned] [--duration S] [--runs N] [--body 1k|16k]
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
cd "$REPO_DIR"

# shellcheck source=bench/deps.sh
source "$BENCH_DIR/deps.sh"
ensure_commands nginx:nginx h2load:nghttp2-client python3:python3
ensure_project_venv

exec python3 "$BENCH_DIR/http2.py" "$@"
