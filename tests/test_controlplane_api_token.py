"""The HTTP API's token file: made private by the control plane, found by its clients."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tulle.controlplane import api_token
from tulle.controlplane.api_token import TokenError, find_client_token, load_or_create

TOKEN = "file-test-token-0123456789abcdefghijklmnop"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_token_is_private_from_the_first_byte_even_under_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "api-token"
    previous = os.umask(0)
    try:
        token, created = load_or_create(str(path))
    finally:
        os.umask(previous)
    assert created
    assert len(token) >= 43 and path.read_text() == token + "\n"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700  # the state directory it had to make
    assert [p.name for p in path.parent.iterdir()] == ["api-token"]  # no temporary file left behind
    assert load_or_create(str(path)) == (token, False)  # the next start reads the same one


def test_two_control_planes_get_two_tokens(tmp_path: Path) -> None:
    first, _ = load_or_create(str(tmp_path / "a" / "api-token"))
    second, _ = load_or_create(str(tmp_path / "b" / "api-token"))
    assert first != second


def test_a_token_file_others_can_access_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text(TOKEN)
    for loose in (0o644, 0o640, 0o620, 0o604):
        path.chmod(loose)
        with pytest.raises(TokenError) as refused:
            load_or_create(str(path))
        assert str(refused.value) == (
            f"{path}: the API token file is accessible to other users (mode {loose:04o}); whoever reads it can "
            f"change the mesh's routing. Run `chmod 600 {path}`, or delete it to have a new token made")
    assert path.read_text() == TOKEN  # never replaced behind the operator's back
    path.chmod(0o400)
    assert load_or_create(str(path)) == (TOKEN, False)


@pytest.mark.parametrize(("text", "complaint"), [
    ("", "the API token is empty"),
    ("  \n", "the API token is empty"),
    ("short", "the API token is 5 characters long, fewer than 32; make one with python3 -c"),
    ("two words " + "x" * 40, "the API token must be one word of visible ASCII characters"),
    ("caf\u00e9" + "x" * 40, "the API token must be one word of visible ASCII characters"),
])
def test_an_unusable_token_is_refused_with_the_file_named(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "api-token"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(TokenError) as refused:
        load_or_create(str(path))
    assert str(refused.value).startswith(f"{path}: {complaint}")


def test_a_directory_is_not_a_token_file(tmp_path: Path) -> None:
    (tmp_path / "api-token").mkdir(mode=0o700)
    with pytest.raises(IsADirectoryError):  # `tulle control-plane: error: [Errno 21] Is a directory: '...'`
        load_or_create(str(tmp_path / "api-token"))


def test_a_token_made_by_another_start_meanwhile_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "api-token"
    real_link = os.link

    def racing_link(source: str, destination: str) -> None:
        path.write_text(TOKEN)  # the other control plane won the race
        path.chmod(0o600)
        real_link(source, destination)

    monkeypatch.setattr(os, "link", racing_link)
    assert load_or_create(str(path)) == (TOKEN, False)
    assert [p.name for p in tmp_path.iterdir()] == ["api-token"]


# --- clients ----------------------------------------------------------------------------------


def write(path: Path, token: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return str(path)


def test_clients_look_in_a_fixed_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tokens = {name: name * 40 for name in "abcdef"}
    flag_file = write(tmp_path / "flag" / "api-token", tokens["a"])
    write(tmp_path / "flag-state" / "api-token", tokens["b"])
    env_file = write(tmp_path / "env" / "api-token", tokens["d"])
    write(tmp_path / "env-state" / "api-token", tokens["e"])
    write(tmp_path / ".tulle-state" / "api-token", tokens["f"])
    environ = {"TULLE_TOKEN": tokens["c"], "TULLE_TOKEN_FILE": env_file, "TULLE_STATE_DIR": str(tmp_path / "env-state")}

    found = find_client_token(flag_file, str(tmp_path / "flag-state"), environ)
    assert (found.value, found.source, found.explicit) == (tokens["a"], f"--token-file {flag_file}", True)
    assert find_client_token(None, str(tmp_path / "flag-state"), environ).value == tokens["b"]
    assert find_client_token(None, None, environ).source == "$TULLE_TOKEN"
    del environ["TULLE_TOKEN"]
    assert find_client_token(None, None, environ).value == tokens["d"]
    del environ["TULLE_TOKEN_FILE"]
    assert find_client_token(None, None, environ).value == tokens["e"]
    del environ["TULLE_STATE_DIR"]
    found = find_client_token(None, None, environ)
    assert (found.value, found.source, found.explicit) == (tokens["f"], f"{tmp_path}/.tulle-state/api-token", False)
    assert found.headers() == {"Authorization": f"Bearer {tokens['f']}"}


def test_a_missing_or_bad_token_is_reported_not_raised(tmp_path: Path) -> None:
    missing = find_client_token(str(tmp_path / "none"), None, {})
    assert (missing.value, missing.explicit, missing.problem) == (None, True, f"{tmp_path}/none does not exist")
    assert missing.headers() == {}
    bad = find_client_token(None, None, {"TULLE_TOKEN": "tiny"})
    assert bad.value is None and "4 characters long" in (bad.problem or "")
    quiet = find_client_token(None, None, {"TULLE_STATE_DIR": str(tmp_path / "empty")})
    assert (quiet.value, quiet.explicit) == (None, False)
    assert quiet.refused().startswith(f"no API token was found ({tmp_path}/empty/api-token does not exist); "
                                      "give --token-file PATH")


def test_reload_picks_up_a_new_token(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    found = find_client_token(str(path), None, {})
    assert not found.reload() and found.value is None
    write(path, TOKEN)
    assert found.reload() and found.value == TOKEN and found.problem is None
    assert not found.reload()
    assert not api_token.ClientToken("x" * 40, "$TULLE_TOKEN").reload()  # nothing to read again
