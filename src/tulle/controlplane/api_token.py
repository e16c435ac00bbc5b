"""The HTTP API's bearer token: made by ``tulle control-plane``, found by its clients.

The control plane keeps one token in a file only its user can read, ``<state dir>/api-token``
(or the file given to ``--token-file``), and answers every request but ``GET /healthz`` with 401
unless it carries ``Authorization: Bearer <token>`` (docs/control-plane.md, "Authentication").
Clients (the CLI, ``tulle sidecar``, the demo) find it with ``find_client_token``.

Stdlib only: the CLI and the sidecar import this without the control plane's dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass

TOKEN_FILE_NAME = "api-token"
DEFAULT_STATE_DIR = ".tulle-state"
STATE_DIR_ENV = "TULLE_STATE_DIR"
TOKEN_ENV = "TULLE_TOKEN"
TOKEN_FILE_ENV = "TULLE_TOKEN_FILE"
MIN_TOKEN_LENGTH = 32
MAX_TOKEN_FILE_BYTES = 4096
_TOKEN_SYNTAX = re.compile(r"[\x21-\x7e]+")  # visible ASCII: the token travels in an HTTP header
MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class TokenError(Exception):
    """A token file that cannot be used; the message names the file and what to do."""


def token_path(state_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(state_dir), TOKEN_FILE_NAME)


def check_token(text: str, where: str) -> str:
    token = text.strip()
    if not token:
        raise TokenError(f"{where}: the API token is empty")
    if not _TOKEN_SYNTAX.fullmatch(token):
        raise TokenError(f"{where}: the API token must be one word of visible ASCII characters")
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{where}: the API token is {len(token)} characters long, fewer than "
                         f"{MIN_TOKEN_LENGTH}; make one with {MAKE_ONE}")
    return token


# --- the control plane's side -------------------------------------------------------------


def load_or_create(path: str) -> tuple[str, bool]:
    """``(token, created)``: the token in ``path``, or a new one written there when it is missing.

    A new file is created 0600 under a temporary name and linked into place, so that it is never
    readable by others, not even briefly, and never seen half-written by a second starting
    control plane. An existing file that others may read or write is refused, as ssh refuses
    such a private key: whoever can read the token can change the mesh's routing.
    """
    with contextlib.suppress(FileNotFoundError):
        return read_protected(path), False
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    token = secrets.token_urlsafe(32)
    temporary = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # left by a crashed start with the same pid
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as out:
            out.write(token + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)  # atomic; never replaces a token another start just made
        except FileExistsError:
            return read_protected(path), False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return token, True


def read_protected(path: str) -> str:
    """The token in ``path``, which must be a regular file only its owner can access."""
    with open(path, encoding="ascii", errors="replace") as source:
        status = os.fstat(source.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise TokenError(f"{path}: the API token file is not a regular file")
        if status.st_mode & 0o077:
            raise TokenError(
                f"{path}: the API token file is accessible to other users (mode "
                f"{stat.S_IMODE(status.st_mode):04o}); whoever reads it can change the mesh's routing. "
                f"Run `chmod 600 {path}`, or delete it to have a new token made")
        return check_token(source.read(MAX_TOKEN_FILE_BYTES), path)


# --- the clients' side --------------------------------------------------------------------


@dataclass
class ClientToken:
    """The token a client sends, where it came from (for messages) and the file to read it again."""

    value: str | None
    source: str  # "--token-file x", "$TULLE_TOKEN", "x/.tulle-state/api-token", ...
    path: str | None = None
    explicit: bool = False  # named by a flag or the environment: a missing file is an error
    problem: str | None = None  # why no token could be read from ``path``

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"} if self.value else {}

    def reload(self) -> bool:
        """Read the file again (the control plane may have made a new token); True if it changed."""
        if self.path is None:
            return False
        fresh = _read_client_file(self.path, self.source, self.explicit)
        changed = fresh.value != self.value
        self.value, self.problem = fresh.value, fresh.problem
        return changed

    def refused(self) -> str:
        """What to tell the user when the control plane answers 401."""
        if self.value is None:
            looked = f" ({self.problem})" if self.problem else ""
            return (f"no API token was found{looked}; give --token-file PATH (the control plane's "
                    f"<state dir>/{TOKEN_FILE_NAME} or its --token-file), --state-dir DIR, "
                    f"or set {TOKEN_FILE_ENV} or {TOKEN_ENV}")
        return (f"the API token from {self.source} was refused: it is not this control plane's "
                f"(its <state dir>/{TOKEN_FILE_NAME} or the file given to its --token-file)")


def find_client_token(token_file: str | None = None, state_dir: str | None = None,
                      environ: Mapping[str, str] | None = None) -> ClientToken:
    """The first of: ``--token-file``, ``--state-dir``, $TULLE_TOKEN, $TULLE_TOKEN_FILE,
    $TULLE_STATE_DIR, ./.tulle-state (the control plane's own default). Never raises: a
    token that cannot be read comes back with ``problem`` set."""
    environ = os.environ if environ is None else environ
    if token_file:
        return _read_client_file(token_file, f"--token-file {token_file}", explicit=True)
    if state_dir:
        path = token_path(state_dir)
        return _read_client_file(path, f"--state-dir {state_dir} ({path})", explicit=True)
    if environ.get(TOKEN_ENV):
        try:
            return ClientToken(check_token(environ[TOKEN_ENV], f"${TOKEN_ENV}"), f"${TOKEN_ENV}", explicit=True)
        except TokenError as error:
            return ClientToken(None, f"${TOKEN_ENV}", explicit=True, problem=str(error))
    if environ.get(TOKEN_FILE_ENV):
        path = environ[TOKEN_FILE_ENV]
        return _read_client_file(path, f"${TOKEN_FILE_ENV} ({path})", explicit=True)
    path = os.path.abspath(token_path(environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR))
    return _read_client_file(path, path, explicit=False)


def _read_client_file(path: str, source: str, explicit: bool) -> ClientToken:
    try:
        with open(path, encoding="ascii", errors="replace") as token_file:
            value = check_token(token_file.read(MAX_TOKEN_FILE_BYTES), path)
    except FileNotFoundError:
        return ClientToken(None, source, path, explicit, f"{path} does not exist")
    except OSError as error:
        return ClientToken(None, source, path, explicit, f"cannot read {path}: {error.strerror or error}")
    except TokenError as error:
        return ClientToken(None, source, path, explicit, str(error))
    return ClientToken(value, source, path, explicit)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """``--token-file`` and ``--state-dir`` for every command that calls the HTTP API."""
    parser.add_argument("--token-file", metavar="PATH",
                        help=f"the HTTP API's bearer token (default ${TOKEN_ENV}, ${TOKEN_FILE_ENV}, "
                             f"else <state dir>/{TOKEN_FILE_NAME})")
    parser.add_argument("--state-dir", metavar="DIR",
                        help=f"the control plane's state directory, to find its {TOKEN_FILE_NAME} "
                             f"(default ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR})")
