"""A reviewer's personal login: ``mlctl login`` keeps ``{user, token, expires_at, api}`` in the user's own config
directory (``$XDG_CONFIG_HOME/storefront/identity.json``, default ``~/.config/storefront``, mode 0600).

The token is the JWT Airflow's auth manager issued to that person; Airflow checks it on every call, so holding
the file is what acting as that reviewer takes, and nobody else's password is ever read on their behalf.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pipelines.settings import Settings

IDENTITY_FILE = "identity.json"


class IdentityError(RuntimeError):
    """No usable personal login: the message says why and which command fixes it."""


@dataclass(frozen=True)
class Identity:
    user: str
    token: str
    expires_at: dt.datetime
    api: str

    def to_dict(self) -> dict[str, str]:
        return {"user": self.user, "token": self.token, "expires_at": self.expires_at.isoformat(), "api": self.api}


def identity_path() -> Path:
    """Where this OS user's login lives (their own config directory, never the shared Storefront home)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "storefront" / IDENTITY_FILE


def api_label(settings: Settings) -> str:
    """The Airflow a token belongs to: the REST URL, or the local profile's in-process API over its Airflow home."""
    return settings.airflow_api_url.rstrip("/") or f"in-process:{settings.airflow_home}"


def token_claims(token: str) -> dict:
    """The JWT's payload, unverified: only to show who and until when; Airflow verifies the signature."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise IdentityError(
            "the token is not a JWT (three dot-separated parts); paste the token Airflow issued"
        ) from exc


def token_expiry(token: str) -> dt.datetime:
    exp = token_claims(token).get("exp")
    if not isinstance(exp, int | float):
        raise IdentityError("the token carries no 'exp' claim; ask Airflow for a fresh one (`mlctl login`)")
    return dt.datetime.fromtimestamp(exp, dt.UTC)


def save_identity(identity: Identity, path: Path | None = None) -> Path:
    """Write the login file 0600 (created with that mode, never readable by others even for an instant)."""
    path = path or identity_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(identity.to_dict(), out)
    tmp.replace(path)
    return path


def load_identity(path: Path | None = None) -> Identity | None:
    """The stored login, or None; refuses a file group or others can read (a token there is anyone's)."""
    path = path or identity_path()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(mode):o}); the token in it would let them "
            f"act as you: delete it (`mlctl logout`) and `mlctl login` again, or `chmod 600 {path}`"
        )
    try:
        data = json.loads(path.read_text())
        return Identity(data["user"], data["token"], dt.datetime.fromisoformat(data["expires_at"]), data["api"])
    except (ValueError, KeyError) as exc:
        raise IdentityError(f"{path} is not a login file ({exc}); `mlctl logout` then `mlctl login`") from exc


def clear_identity(path: Path | None = None) -> bool:
    """Forget the login; True when there was one."""
    path = path or identity_path()
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def require_identity(settings: Settings, asserted: str | None = None, now: dt.datetime | None = None) -> Identity:
    """The logged-in reviewer for this profile's Airflow; ``asserted`` (``--as``) must name that same person."""
    identity = load_identity()
    if identity is None:
        raise IdentityError("not logged in: `mlctl login --user YOUR_NAME` first (your Airflow password is asked)")
    if identity.api != api_label(settings):
        raise IdentityError(
            f"logged in as {identity.user!r} to {identity.api}, but these settings use {api_label(settings)}; "
            "`mlctl login` again for this Airflow"
        )
    if identity.expires_at <= (now or dt.datetime.now(dt.UTC)):
        raise IdentityError(
            f"the login of {identity.user!r} expired at {identity.expires_at:%Y-%m-%d %H:%M} UTC; `mlctl login` again"
        )
    if asserted is not None and asserted != identity.user:
        raise IdentityError(
            f"--as {asserted!r} but you are logged in as {identity.user!r}; `--as` only confirms who you are: "
            f"log in as {asserted!r} yourself (`mlctl login --user {asserted}`) or drop --as"
        )
    return identity
