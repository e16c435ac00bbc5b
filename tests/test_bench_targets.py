"""bench/targets.py: the configs of the servers under test and how they are started."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import targets  # noqa: E402
from harness import (  # noqa: E402
    CONFIG_DIR,
    Supervisor,
    http_get,
    pick_free_ports,
    render_config,
    render_template,
)
from targets import Bench, body_bytes, parse_admin_stats, summarize_failure_output  # noqa: E402

from tulle.config.loader import load_bootstrap, unpack_any  # noqa: E402

PORTS = {"PORT": 21001, "ADMIN_PORT": 21002, "ORIGIN_PORT": 21003}


@pytest.mark.parametrize("size", sorted(targets.BODY_SIZES.values()))
def test_bodies_have_the_advertised_size_and_do_not_repeat_per_page(size: int) -> None:
    body = body_bytes(size)
    assert len(body) == size
    assert body[:64] != body[4096 : 4096 + 64] or size <= 4096


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_tulle_bootstraps_are_strict_envoy_v3(mode: str, tmp_path: Path) -> None:
    path = render_config(f"tulle_{mode}.yaml.tmpl", tmp_path / f"{mode}.yaml", PORTS)
    bootstrap = load_bootstrap(str(path))
    assert bootstrap.admin.address.socket_address.port_value == PORTS["ADMIN_PORT"]
    (listener,) = bootstrap.static_resources.listeners
    assert listener.address.socket_address.port_value == PORTS["PORT"]
    (cluster,) = bootstrap.static_resources.clusters
    assert cluster.type == cluster.STATIC
    (endpoint,) = cluster.load_assignment.endpoints[0].lb_endpoints
    assert endpoint.endpoint.address.socket_address.port_value == PORTS["ORIGIN_PORT"]
    (network_filter,) = listener.filter_chains[0].filters
    config = unpack_any(network_filter.typed_config)
    if mode == "http":
        assert network_filter.name == "envoy.filters.network.http_connection_manager"
        (virtual_host,) = config.route_config.virtual_hosts
        assert list(virtual_host.domains) == ["*"]
        (route,) = virtual_host.routes
        assert route.match.prefix == "/"
        assert route.route.cluster == cluster.name
        assert [f.name for f in config.http_filters] == ["envoy.filters.http.router"]
        assert not config.access_log
    else:
        assert network_filter.name == "envoy.filters.network.tcp_proxy"
        assert config.cluster == cluster.name


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
@pytest.mark.parametrize("template", ["nginx_origin.conf.tmpl", "nginx_proxy.conf.tmpl"])
def test_nginx_configs_pass_nginx_t(template: str, tmp_path: Path) -> None:
    config = render_config(template, tmp_path / "nginx.conf", {"TMP": tmp_path, "ORIGIN_WORKERS": 1, **PORTS})
    completed = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-e", str(tmp_path / "e.log"), "-c", str(config)],
        capture_output=True, text=True, timeout=30,
    )
    assert completed.returncode == 0, completed.stderr


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_haproxy_configs_pass_haproxy_c(mode: str, tmp_path: Path) -> None:
    config = render_config(f"haproxy_{mode}.cfg.tmpl", tmp_path / "haproxy.cfg", PORTS)
    completed = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"mode {mode}" in config.read_text()


def test_every_template_placeholder_is_known() -> None:
    values = {"TMP": "/tmp/x", "ORIGIN_WORKERS": 1, **PORTS}
    templates = sorted(CONFIG_DIR.glob("*.tmpl"))
    assert len(templates) == 11
    for template in templates:
        assert "{{" not in render_template(template.read_text(), values), template.name


def test_failure_summary_prefers_the_exception_line_of_the_last_traceback() -> None:
    first = 'Traceback (most recent call last):\n  File "a.py", line 1, in <module>\nKeyError: x\n'
    last = ('Traceback (most recent call last):\n  File "x.py", line 3, in main\n    run()\n'
            '  File "y.py", line 9, in run\n    assert ok\nAssertionError\nINFO shutting down\n')
    assert summarize_failure_output(first + last) == 'AssertionError (File "y.py", line 9, in run)'
    assert summarize_failure_output("a\nb\nc\nd\n") == "b | c | d"
    assert summarize_failure_output("") == "no output"


def test_admin_stats_keep_counters_and_skip_histograms() -> None:
    text = "cluster.origin.upstream_cx_total: 64\nhttp.x.downstream_rq_time: P0(nan,1) P25(nan,2)\nserver.live: 1\n"
    assert parse_admin_stats(text) == {"cluster.origin.upstream_cx_total": 64, "server.live": 1}


def test_missing_tulle_marks_the_target_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets, "TULLE_BINARY", tmp_path / "no-such-tulle")
    supervisor = Supervisor(tmp_path)
    bench = Bench(tmp_path, supervisor, pick_free_ports(5))  # origin + (listener, admin) x 2
    for key in ("tulle", "tulle_tcp"):
        target = bench.start_target(key)
        assert not target.available
        assert "no-such-tulle" in (target.error or "")
        assert target.process is None
    assert supervisor.processes == []


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("haproxy") is None,
                    reason="nginx and haproxy are needed")
def test_reference_proxies_serve_the_origin_bodies() -> None:
    # like run.sh: a world-readable dir directly under /tmp, since nginx workers may run as nobody
    work_dir = Path(tempfile.mkdtemp(prefix="tulle-bench-test-"))
    work_dir.chmod(0o755)
    supervisor = Supervisor(work_dir)
    try:
        bench = Bench(work_dir, supervisor, pick_free_ports(4))
        bench.start_origin(workers=1)
        for key in ("nginx", "haproxy", "haproxy_tcp"):
            target = bench.start_target(key)
            assert target.available, target.error
            status, body = http_get(target.port, "/16k")
            assert (status, body) == (200, bench.bodies["/16k"])
    finally:
        supervisor.stop_all()
        shutil.rmtree(work_dir, ignore_errors=True)
