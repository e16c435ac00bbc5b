"""The ``tulle`` command line: ``proxy --mode validate`` and the errors an operator sees
(exit 1, the file and the field path on stderr)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from backends import bootstrap
from proxy_harness import free_port, http_listener, simple_route, static_cluster
from tulle import __version__
from tulle.cli import main

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
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["codec_type"] = "HTTP2"
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
