"""The ``tulle`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from tulle import __version__
from tulle.config.errors import ConfigError


def _proxy_parser(sub: argparse._SubParsersAction) -> None:
    proxy = sub.add_parser(
        "proxy", help="run the data-plane proxy on an Envoy v3 bootstrap (same contract as `envoy -c`)"
    )
    proxy.add_argument("-c", "--config-path", required=True, help="Envoy v3 bootstrap, YAML or JSON")
    proxy.add_argument("--mode", choices=("serve", "validate"), default="serve",
                       help="validate: check the config (everything but binding sockets) and exit")
    proxy.add_argument("--concurrency", type=int, default=1,
                       help="worker processes sharing the listeners (default 1)")
    proxy.add_argument("-l", "--log-level", default="info",
                       choices=("trace", "debug", "info", "warning", "warn", "error", "critical", "off"))
    proxy.add_argument("--drain-time-s", type=float, default=0.0,
                       help="graceful drain period for /drain_listeners?graceful")
    proxy.set_defaults(func=run_proxy)


def run_proxy(args: argparse.Namespace) -> int:
    from tulle.server.server import LOG_LEVELS, ProxyServer

    logging.basicConfig(
        level=LOG_LEVELS[args.log_level], stream=sys.stderr,
        format="[%(asctime)s][%(process)d][%(levelname)s][%(name)s] %(message)s",
    )
    if args.concurrency < 1:
        print("tulle proxy: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        if args.mode == "validate":
            from tulle.config.loader import load_bootstrap
            from tulle.server.context import ServerState
            from tulle.server.worker import Worker

            Worker(load_bootstrap(args.config_path), ServerState())
            print(f"configuration '{args.config_path}' OK")
            return 0
        return ProxyServer(args.config_path, args.concurrency, args.log_level, args.drain_time_s).run()
    except ConfigError as exc:
        if not exc.source:
            exc.with_source(args.config_path)
        print(f"tulle proxy: error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tulle", description="Tulle service mesh")
    parser.add_argument("--version", action="version", version=f"tulle {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _proxy_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
