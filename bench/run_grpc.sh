#!/usr/bin/env bash
# gRPC unary benchmark: h2load gRPC calls direct, through nginx (grpc_pass) and through tulle.
# Usage: bash bench/run_grpc.sh [--pinned] [--duration S] [--runs N]
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
cd "$REPO_DIR"

# shellcheck source=bench/deps.sh
source "$BENCH_DIR/deps.sh"
ensure_commands nginx:nginx h2load:nghttp2-client python3:python3
ensure_project_venv

exec python3 "$BENCH_DIR/grpc_unary.py" "$@"
