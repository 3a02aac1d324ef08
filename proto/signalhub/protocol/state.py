"""Local state that signalhub's tools and SDK command lines share on one machine: the ``.signalhub``
folder (development master key, embedded servers' data, demo credentials), written owner-only, and the
one way the command lines find who they act as (a device's or producer's secret, a user's API token)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from signalhub.protocol.secret import Secret
from signalhub.protocol.signing import parse_secret

STATE_DIR = Path(".signalhub")
DEMO_FILE = "demo.json"  # what `signalhub up` hands the SDK command lines: addresses, ids, secrets
DEFAULT_CREDENTIALS = STATE_DIR / DEMO_FILE  # what an SDK command line reads when told no other file


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never world-readable even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


class CredentialsError(ValueError):
    """Who to act as could not be found, or is malformed; the message never holds the secret."""


@dataclass(frozen=True)
class Credentials:
    """Who an SDK command line acts as: an id and its secret (the key bytes, never shown); the address
    and the path of the credentials file, when they came from one."""

    key_id: str
    secret: Secret
    address: str | None = None
    path: Path | None = None


def load_credentials(
    role: str, key_id: str | None, path: Path | None, environ: Mapping[str, str], *, secret_env: str, address_key: str
) -> Credentials:
    """The credentials of a ``role`` ("device", "producer"): ``key_id`` (``--<role>-id``) with its secret
    in the environment variable ``secret_env``, else a JSON file holding ``<role>_id``, ``<role>_secret``
    and optionally an address under ``address_key``: ``path``, or the demo.json that `signalhub up` writes.

    A secret is never taken from an argument, where anyone on the machine could read it (``ps``), and no
    error message repeats it."""
    if key_id:
        shown = environ.get(secret_env, "").strip()
        if not shown:
            raise CredentialsError(f"--{role}-id needs the {role}'s secret in the environment variable {secret_env}")
        if path is not None:
            raise CredentialsError(f"give either --credentials or --{role}-id, not both")
        return Credentials(key_id, _secret(role, shown))
    path, data = _file_or_demo(
        path, f"no {role} credentials: pass --credentials FILE, or --{role}-id with {secret_env} set"
    )
    found_id, found_secret = _text(data, f"{role}_id"), _text(data, f"{role}_secret")
    if found_id is None or found_secret is None:
        raise CredentialsError(f"{path} must have {role}_id and {role}_secret")
    return Credentials(found_id, _secret(role, found_secret), _text(data, address_key), path)


API_TOKEN_KEY = "api_token"  # noqa: S105 - a key's name: what `signalhub admin create-user` prints the token under


@dataclass(frozen=True)
class ApiToken:
    """Who a user command acts as: an API token (``sht_...``, never shown), and the addresses the credentials
    file gave (the back office's, a gateway's), when one was read."""

    token: Secret
    backoffice: str | None = None
    gateway: str | None = None


def load_token(path: Path | None, environ: Mapping[str, str], *, token_env: str, admin: bool = False) -> ApiToken:
    """The one way a user command finds its API token: the environment variable ``token_env``, else a JSON
    file (``path``, or the demo.json that `signalhub up` wrote here): its ``api_token`` (what `signalhub
    admin create-user` prints), or in a demo file, which holds two, its ``admin_token`` for an ``admin``
    command and its ``user_token`` otherwise. The file's addresses are read even when the token comes from
    the environment.

    Never from an argument (anyone on the machine could read it in ``ps``), and never repeated in an error."""
    if path is None and DEFAULT_CREDENTIALS.is_file():
        path = DEFAULT_CREDENTIALS
    data = _read_json(path) if path is not None else {}
    demo_key = "admin_token" if admin else "user_token"
    token = environ.get(token_env, "").strip() or _text(data, API_TOKEN_KEY) or _text(data, demo_key)
    if not token:
        if path is None:
            raise CredentialsError(
                f"no API token: set {token_env}, or pass --credentials FILE "
                f"(or run `signalhub up` here, which writes {DEFAULT_CREDENTIALS})"
            )
        raise CredentialsError(f"{path} has no API token: it needs {API_TOKEN_KEY} (or a demo file's {demo_key})")
    return ApiToken(Secret(token.encode()), _text(data, "backoffice"), _text(data, "gateway"))


def _file_or_demo(path: Path | None, missing: str) -> tuple[Path, dict[str, object]]:
    """The JSON object in ``path``, else in the demo.json `signalhub up` wrote here; ``missing`` says what
    to do when there is neither."""
    if path is None:
        if not DEFAULT_CREDENTIALS.is_file():
            raise CredentialsError(f"{missing} (or run `signalhub up` here, which writes {DEFAULT_CREDENTIALS})")
        path = DEFAULT_CREDENTIALS
    return path, _read_json(path)


def _text(data: dict[str, object], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CredentialsError(f"no credentials file at {path}") from None
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except ValueError:  # not JSON, or not UTF-8
        raise CredentialsError(f"{path} is not a JSON file") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"{path} must hold a JSON object")
    return data


def _secret(role: str, shown: str) -> Secret:
    try:
        return Secret(parse_secret(shown))
    except ValueError as exc:  # parse_secret never echoes the text
        raise CredentialsError(f"the {role} secret is malformed: {exc}") from None
