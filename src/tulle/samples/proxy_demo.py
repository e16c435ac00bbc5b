"""A one-command look at the Tulle proxy: two service versions behind a canary route.

Starts two echo backends (reviews v1 and v2), runs ``tulle proxy`` on
``samples/front_proxy.yaml``, drives traffic through it, and shows which
version served how much, the status codes, and the proxy's own Envoy stats.
``tulle demo`` does the same on a whole mesh. A port of front_proxy.yaml that is
taken (the quick tour's proxy still running?) is replaced by a free one in a copy.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from tulle.listener.claim import claim, unavailable
from tulle.samples.echo_server import start_in_thread

CONFIG = Path(__file__).with_name("front_proxy.yaml")
PROXY_PORT, TCP_PORT, ADMIN_PORT = 10000, 10001, 19901
V1_PORT, V2_PORT = 18081, 18082
PORTS = {PROXY_PORT: "the proxy's HTTP listener", TCP_PORT: "the proxy's TCP listener",
         ADMIN_PORT: "the proxy's admin", V1_PORT: "the v1 backend", V2_PORT: "the v2 backend"}


def free_ports() -> dict[int, int]:
    """front_proxy.yaml's ports, each replaced by a free one if it is taken (and saying so)."""
    ports = {}
    for port, what in PORTS.items():
        reason = unavailable("127.0.0.1", port)
        if reason is None:
            ports[port] = port
            continue
        with claim("127.0.0.1", 0) as sock:
            ports[port] = sock.getsockname()[1]
        print(f"127.0.0.1:{port} ({what}) is taken: {reason}; this demo uses {ports[port]}")
    return ports


def with_ports(node: Any, ports: dict[int, int]) -> Any:
    """A copy of a config with every ``port_value`` mapped through ``ports``."""
    if isinstance(node, dict):
        return {key: ports.get(value, value) if key == "port_value" else with_ports(value, ports)
                for key, value in node.items()}
    if isinstance(node, list):
        return [with_ports(item, ports) for item in node]
    return node


def _wait_ready(admin_port: int, deadline: float) -> None:
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("tulle proxy did not become ready in time (see the log above)")


def _stats(admin_port: int, names: list[str]) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats?format=json", timeout=5) as response:
        data = json.load(response)
    values = {s["name"]: s["value"] for s in data.get("stats", []) if "value" in s}
    return {name: values.get(name, 0) for name in names}


def _drive(port: int, seconds: float, headers: dict[str, str], path: str = "/") -> tuple[Counter, Counter]:
    served: Counter = Counter()
    codes: Counter = Counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    end = time.time() + seconds
    while time.time() < end:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        codes[response.status] += 1
        served[response.getheader("x-served-by", "-")] += 1
    connection.close()
    return served, codes


def _report(title: str, served: Counter, codes: Counter) -> None:
    total = sum(served.values()) or 1
    print(f"\n== {title}: {total} requests")
    for version, count in sorted(served.items()):
        bar = "#" * int(40 * count / total)
        print(f"  {version:<6} {count:>6}  {100 * count / total:5.1f}%  {bar}")
    print("  status codes: " + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=0.0,
                        help="run unattended for this many seconds, print the summary and exit")
    args = parser.parse_args(argv)
    ports = free_ports()
    proxy_port, admin_port = ports[PROXY_PORT], ports[ADMIN_PORT]
    config = CONFIG
    workdir = Path(tempfile.mkdtemp(prefix="tulle-proxy-demo-"))
    if any(old != new for old, new in ports.items()):
        config = workdir / CONFIG.name
        config.write_text(yaml.safe_dump(with_ports(yaml.safe_load(CONFIG.read_text()), ports), sort_keys=False))
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stop like Ctrl-C: the proxy child goes too
        signal.signal(sig, signal.default_int_handler)
    backends = [start_in_thread("v1", ports[V1_PORT]), start_in_thread("v2", ports[V2_PORT])]
    log_path = Path(tempfile.gettempdir()) / "tulle-demo-access.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - lives as long as the proxy
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tulle", "proxy", "-c", str(config), "--log-level", "warning"],
        stdout=log_file, stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(admin_port, time.time() + 20)
        print(f"tulle proxy is up: http://127.0.0.1:{proxy_port}/ (admin http://127.0.0.1:{admin_port}/)")
        print(f"config: {config}\naccess log: {log_path}")
        phase = max(1.0, (args.duration or 9) / 3)
        _report("weighted canary 80/20 (GET /)", *_drive(proxy_port, phase, {}))
        _report("header match x-canary: yes -> v2", *_drive(proxy_port, phase / 2, {"x-canary": "yes"}))
        _report("prefix /v2/ rewritten to / on v2", *_drive(proxy_port, phase / 2, {}, "/v2/anything"))
        stats = _stats(admin_port, [
            "http.ingress_http.downstream_rq_total", "http.ingress_http.downstream_rq_2xx",
            "cluster.reviews_v1.upstream_rq_total", "cluster.reviews_v2.upstream_rq_total",
            "cluster.reviews_v1.upstream_cx_total", "cluster.reviews_v2.upstream_cx_total",
        ])
        print("\n== the proxy's own stats (Envoy names, from /stats)")
        for name, value in stats.items():
            print(f"  {name}: {value}")
        print("\nTry it yourself:")
        print(f"  curl -s localhost:{proxy_port}/ -H 'x-canary: yes'      # pinned to v2")
        print(f"  curl -s localhost:{admin_port}/stats/prometheus | grep upstream_rq_total")
        print(f"  curl -s localhost:{admin_port}/clusters")
        print(f"  edit the weights in {CONFIG}, then restart this demo")
        if not args.duration:
            print("\nRunning until Ctrl-C ...")
            while proxy.poll() is None:
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        for backend in backends:
            backend.shutdown()
        log_file.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
