"""The ``tulle`` command line: ``proxy --mode validate`` and the errors an operator sees
(exit 1, the file and the field path on stderr)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from backends import bootstrap
from proxy_harness import free_port, http_listener, simple_route, static_cluster
from tulle import __version__
from tulle.cli import _control_plane_parser, main

HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
TULLE = Path(sys.executable).parent / "tulle"


def valid_config(port: int | None = None) -> dict[str, Any]:
    return bootstrap([http_listener("ingress", port or free_port(), simple_route("backend"))],
                     [static_cluster("backend", [free_port()])])


def write(tmp_path: Path, config: Any, name: str = "bootstrap.yaml") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["proxy", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def validate(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    return run(capsys, "-c", str(path), "--mode", "validate")


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, valid_config())
    code, out, err = validate(capsys, path)
    assert (code, out) == (0, f"configuration '{path}' OK\n")
    assert "error" not in err


def test_validate_does_not_bind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        path = write(tmp_path, valid_config(taken.getsockname()[1]))
        assert validate(capsys, path)[0] == 0


def test_proxy_does_not_load_the_control_plane_or_the_agent(tmp_path: Path) -> None:
    """A proxy runs beside every workload: its process holds the data plane only (RSS), while the
    other commands still get their parsers."""
    path = write(tmp_path, valid_config())
    probe = ("import sys; from tulle.cli import main; code = main(['proxy', '-c', sys.argv[1], '--mode', 'validate']); "
             "print(code, sorted({m for m in sys.modules if m.startswith(('tulle.controlplane', 'tulle.sidecar'))}))")
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0 []"
    help_text = subprocess.run([str(TULLE), "--help"], capture_output=True, text=True, timeout=60).stdout
    for command in ("control-plane", "sidecar", "apply", "proxy-status"):
        assert command in help_text, command


def test_json_bootstrap_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, json.dumps(valid_config()), "bootstrap.json")
    assert validate(capsys, path)[0] == 0


def test_bad_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "static_resources: [unclosed\n")
    code, out, err = validate(capsys, path)
    assert code == 1
    assert out == ""
    assert str(path) in err
    assert "YAML" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    code, _, err = validate(capsys, path)
    assert code == 1
    assert str(path) in err
    assert "cannot read" in err


def test_unknown_field_names_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = valid_config()
    config["static_resources"]["listeners"][0]["bogus_field"] = 1
    path = write(tmp_path, config)
    code, _, err = validate(capsys, path)
    assert code == 1
    assert str(path) in err
    assert "static_resources.listeners[0]" in err
    assert "bogus_field" in err


def test_wrong_type_names_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = valid_config()
    config["static_resources"]["clusters"][0]["connect_timeout"] = "soon"
    code, _, err = validate(capsys, write(tmp_path, config))
    assert code == 1
    assert "static_resources.clusters[0].connect_timeout" in err


def test_bad_type_url_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = valid_config()
    typed = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    typed["@type"] = "type.googleapis.com/envoy.extensions.filters.network.nothing.v3.Nothing"
    path = write(tmp_path, config)
    code, _, err = validate(capsys, path)
    assert code == 1
    assert str(path) in err
    assert "envoy.extensions.filters.network.nothing.v3.Nothing" in err


def test_unsupported_feature_is_refused_with_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = valid_config()
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["codec_type"] = "HTTP3"
    path = write(tmp_path, config)
    code, _, err = validate(capsys, path)
    assert code == 1
    assert "unsupported by Tulle" in err
    assert f"{HCM_PATH}.codec_type" in err
    assert str(path) in err


def test_unsupported_bootstrap_section_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = valid_config()
    config["dynamic_resources"] = {"ads_config": {"api_type": "GRPC"}}
    code, _, err = validate(capsys, write(tmp_path, config))
    assert code == 1
    assert "unsupported by Tulle" in err
    assert "dynamic_resources" in err


def test_route_to_unknown_cluster_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = valid_config()
    config["static_resources"]["clusters"][0]["name"] = "other"
    config["static_resources"]["clusters"][0]["load_assignment"]["cluster_name"] = "other"
    code, _, err = validate(capsys, write(tmp_path, config))
    assert code == 1
    assert "'backend'" in err
    assert f"{HCM_PATH}.route_config" in err


def test_concurrency_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-c", str(write(tmp_path, valid_config())), "--concurrency", "0")
    assert code == 2
    assert "--concurrency" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"tulle {__version__}"


def test_installed_entry_point_validates(tmp_path: Path) -> None:
    good = write(tmp_path, valid_config(), "good.yaml")
    result = subprocess.run([str(TULLE), "proxy", "--mode", "validate", "-c", str(good)],
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, f"configuration '{good}' OK\n")
    bad_config = valid_config()
    bad_config["static_resources"]["listeners"][0]["address"]["socket_address"]["bogus"] = 1
    bad = write(tmp_path, bad_config, "bad.yaml")
    result = subprocess.run([str(TULLE), "proxy", "--mode", "validate", "-c", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "static_resources.listeners[0].address.socket_address" in result.stderr
    assert str(bad) in result.stderr


def test_serve_mode_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    config = valid_config()
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["tracing"] = {}
    path = write(tmp_path, config)
    result = subprocess.run([sys.executable, "-m", "tulle", "proxy", "-c", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"{HCM_PATH}.tracing" in result.stderr


# --- tulle control-plane: the HTTP API's token ------------------------------------------------


def test_control_plane_addresses_default_to_loopback() -> None:
    parser = argparse.ArgumentParser()
    _control_plane_parser(parser.add_subparsers())
    args = parser.parse_args(["control-plane"])
    assert (args.xds_address, args.http_address) == (("127.0.0.1", 15010), ("127.0.0.1", 15014))


@pytest.mark.integration
def test_in_memory_control_plane_names_its_private_token_and_removes_it(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen([sys.executable, "-m", "tulle", "control-plane", "--in-memory",
                                "--xds-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0",
                                "--ready-file", str(ready)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text().endswith("}"):
            assert process.poll() is None and time.monotonic() < deadline, "the control plane did not start"
            time.sleep(0.05)
        started = json.loads(ready.read_text())
        token_file = Path(started["token_file"])
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        url = f"http://127.0.0.1:{started['http_port']}/apis/v1/services"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert json.loads(answer.read()) == {"items": []}
    finally:
        os.kill(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert f"API token created in {token_file}" in err
    assert not token_file.exists()


def test_control_plane_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("r" * 40)
    token_file.chmod(0o644)
    result = subprocess.run([sys.executable, "-m", "tulle", "control-plane", "--in-memory",
                             "--token-file", str(token_file), "--xds-address", "127.0.0.1:0",
                             "--http-address", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == (f"tulle control-plane: error: {token_file}: the API token file is accessible to other "
                             "users (mode 0644); whoever reads it can change the mesh's routing. "
                             f"Run `chmod 600 {token_file}`, or delete it to have a new token made\n")


def test_control_plane_takes_the_xds_message_limit(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import tulle.controlplane.server as control_plane_server

    passed: list[Any] = []

    async def fake_serve(*args: Any) -> int:
        passed.append(args)
        return 0

    monkeypatch.setattr(control_plane_server, "serve", fake_serve)
    assert main(["control-plane", "--in-memory", "--xds-max-message-bytes", "128Mi"]) == 0
    assert main(["control-plane", "--in-memory"]) == 0
    from tulle.controlplane.xds.server import DEFAULT_MAX_XDS_MESSAGE_BYTES

    assert [args[-1] for args in passed] == [128 * 1024 * 1024, DEFAULT_MAX_XDS_MESSAGE_BYTES]
    with pytest.raises(SystemExit) as exited:
        main(["control-plane", "--in-memory", "--xds-max-message-bytes", "12"])
    assert exited.value.code == 2
    assert "--xds-max-message-bytes: expected a byte count from 1024 to 2 GiB" in capsys.readouterr().err
