"""The ``tulle`` command line."""

from __future__ import annotations

import argparse
import logging
import os
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


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _message_bytes(text: str) -> int:
    """A byte count: ``67108864``, or with a binary suffix ``64Mi``, ``512Ki``."""
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    number, scale = text, 1
    if text[-2:] in units:
        number, scale = text[:-2], units[text[-2:]]
    if not number.isdigit() or not 1024 <= int(number) * scale < 2**31:
        raise argparse.ArgumentTypeError(
            f"expected a byte count from 1024 to 2 GiB (e.g. 67108864 or 64Mi), got {text!r}")
    return int(number) * scale


def _control_plane_parser(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser("control-plane", help="run the control plane: Istio's API in, xDS out")
    cp.add_argument("--state-dir", default=os.environ.get("TULLE_STATE_DIR", ".tulle-state"),
                    help="where config is kept across restarts (default .tulle-state, or $TULLE_STATE_DIR)")
    cp.add_argument("--in-memory", action="store_true", help="keep nothing across restarts")
    cp.add_argument("--xds-address", type=_address, default=("127.0.0.1", 15010),
                    help="gRPC xDS (ADS) listen address (Istio's 15010)")
    cp.add_argument("--http-address", type=_address, default=("127.0.0.1", 15014),
                    help="HTTP API and debug views (default 127.0.0.1:15014)")
    cp.add_argument("--token-file", metavar="PATH",
                    help="the HTTP API's bearer token, created 0600 if missing (default <state dir>/api-token; "
                         "with --in-memory a private temporary file, named in the log and the ready file)")
    cp.add_argument("--api-allowed-host", dest="api_allowed_hosts", action="append", default=[], metavar="NAME",
                    help="a Host name the HTTP API answers to besides its address and localhost "
                         "(NAME or NAME:PORT, repeatable)")
    cp.add_argument("--ready-file", help="write the bound ports and the token file here as JSON once serving")
    # the default is xds/server.py's DEFAULT_MAX_XDS_MESSAGE_BYTES (not imported: it would load gRPC here)
    cp.add_argument("--xds-max-message-bytes", type=_message_bytes, default=64 * 1024 * 1024, metavar="BYTES",
                    help="largest xDS message sent or received (default 64 MiB; gRPC's own default is 4 MiB); "
                         "a larger update is not sent and shows as TOO LARGE in proxy-status")
    cp.add_argument("-l", "--log-level", default="info",
                    choices=("debug", "info", "warning", "error", "critical"))
    cp.set_defaults(func=run_control_plane)


def run_control_plane(args: argparse.Namespace) -> int:
    import asyncio

    from tulle.controlplane.api_token import TokenError
    from tulle.controlplane.server import serve
    from tulle.server.server import install_event_loop_policy

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="[%(asctime)s][%(process)d][%(levelname)s][%(name)s] %(message)s")
    install_event_loop_policy()
    state_dir = None if args.in_memory else args.state_dir
    try:
        return asyncio.run(serve(state_dir, args.xds_address, args.http_address, args.ready_file,
                                 args.token_file, args.api_allowed_hosts, args.xds_max_message_bytes))
    except (OSError, TokenError) as exc:
        print(f"tulle control-plane: error: {exc}", file=sys.stderr)
        return 1


def _run_demo(args: argparse.Namespace) -> int:
    from tulle.samples.mesh_demo import run

    return run(args.duration, args.delta, args.keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tulle", description="Tulle service mesh")
    parser.add_argument("--version", action="version", version=f"tulle {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _proxy_parser(sub)
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["proxy"]:
        # A proxy is one per workload: it does not load the control plane's and the agent's modules
        # (the Istio model, the store, sqlite, the CA) just to build their command lines (~6 MiB RSS).
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    from tulle.controlplane.cli import register as register_controlplane_commands
    from tulle.sidecar.agent import add_sidecar_parser

    _control_plane_parser(sub)
    demo = sub.add_parser("demo", help="a whole local mesh: control plane, bookinfo with sidecars, a canary")
    demo.add_argument("--duration", type=float, default=0.0,
                      help="run unattended for this many seconds, print the summary and exit 0")
    demo.add_argument("--delta", action="store_true", help="sidecars use delta xDS")
    demo.add_argument("--keep", action="store_true", help="keep the work directory (logs, state) afterwards")
    demo.set_defaults(func=_run_demo)
    add_sidecar_parser(sub)
    register_controlplane_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
