"""A one-command look at the Tulle proxy: two service versions behind a canary route.

Starts two echo backends (reviews v1 and v2), runs ``tulle proxy`` on
``samples/front_proxy.yaml``, drives traffic through it, and shows which
version served how much, the status codes, and the proxy's own Envoy stats.
The control-plane issue turns this into ``tulle demo`` on a whole mesh.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from tulle.samples.echo_server import start_in_thread

CONFIG = Path(__file__).with_name("front_proxy.yaml")
PROXY_PORT, TCP_PORT, ADMIN_PORT = 10000, 10001, 19901


def _wait_ready(deadline: float) -> None:
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("tulle proxy did not become ready in time (see the log above)")


def _stats(names: list[str]) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/stats?format=json", timeout=5) as response:
        data = json.load(response)
    values = {s["name"]: s["value"] for s in data.get("stats", []) if "value" in s}
    return {name: values.get(name, 0) for name in names}


def _drive(seconds: float, headers: dict[str, str], path: str = "/") -> tuple[Counter, Counter]:
    served: Counter = Counter()
    codes: Counter = Counter()
    connection = http.client.HTTPConnection("127.0.0.1", PROXY_PORT, timeout=5)
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
    backends = [start_in_thread("v1", 18081), start_in_thread("v2", 18082)]
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "tulle-demo-access.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - lives as long as the proxy
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tulle", "proxy", "-c", str(CONFIG), "--log-level", "warning"],
        stdout=log_file, stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(time.time() + 20)
        print(f"tulle proxy is up: http://127.0.0.1:{PROXY_PORT}/ (admin http://127.0.0.1:{ADMIN_PORT}/)")
        print(f"config: {CONFIG}\naccess log: {log_path}")
        phase = max(1.0, (args.duration or 9) / 3)
        _report("weighted canary 80/20 (GET /)", *_drive(phase, {}))
        _report("header match x-canary: yes -> v2", *_drive(phase / 2, {"x-canary": "yes"}))
        _report("prefix /v2/ rewritten to / on v2", *_drive(phase / 2, {}, "/v2/anything"))
        stats = _stats([
            "http.ingress_http.downstream_rq_total", "http.ingress_http.downstream_rq_2xx",
            "cluster.reviews_v1.upstream_rq_total", "cluster.reviews_v2.upstream_rq_total",
            "cluster.reviews_v1.upstream_cx_total", "cluster.reviews_v2.upstream_cx_total",
        ])
        print("\n== the proxy's own stats (Envoy names, from /stats)")
        for name, value in stats.items():
            print(f"  {name}: {value}")
        print("\nTry it yourself:")
        print(f"  curl -s localhost:{PROXY_PORT}/ -H 'x-canary: yes'      # pinned to v2")
        print(f"  curl -s localhost:{ADMIN_PORT}/stats/prometheus | grep upstream_rq_total")
        print(f"  curl -s localhost:{ADMIN_PORT}/clusters")
        print("  edit the weights in the config above, then restart this demo")
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


if __name__ == "__main__":
    raise SystemExit(main())
