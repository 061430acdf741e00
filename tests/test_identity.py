"""Personal identities (issue 13 finding 1): nobody's password is read on their behalf, a login is the user's own
0600 file, ``--as`` only confirms it. No Airflow here (tests/test_governance_cli.py logs in through it)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from pipelines.orchestration.airflow_client import AirflowAPIError, _password_for
from pipelines.registry.identity import (
    Identity,
    IdentityError,
    api_label,
    clear_identity,
    identity_path,
    load_identity,
    require_identity,
    save_identity,
    token_expiry,
)
from pipelines.settings import Settings

LATER = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


def identity(settings: Settings, user: str = "alice", expires: dt.datetime = LATER) -> Identity:
    return Identity(user, "header.payload.signature", expires, api_label(settings))


def test_no_password_is_read_for_anyone_but_the_engineer_account(settings: Settings) -> None:
    """Finding 1: `--as alice` read alice's password from the shared passwords.json."""
    assert settings.airflow_home is not None
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    (settings.airflow_home / "passwords.json").write_text(json.dumps({"engineer": "e-pw", "alice": "a-pw"}))
    assert _password_for(settings, settings.airflow_username) == "e-pw"
    with pytest.raises(AirflowAPIError, match="no password is read on behalf of 'alice'.*mlctl login --user alice"):
        _password_for(settings, "alice")


def test_login_file_is_private_and_a_readable_one_is_refused(settings: Settings, config: Path) -> None:
    path = save_identity(identity(settings))
    assert path == identity_path() == config / "storefront" / "identity.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_identity() == identity(settings)
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="readable by group or others \\(mode 644\\)"):
        load_identity()
    assert clear_identity() and load_identity() is None


def test_as_only_confirms_the_logged_in_name(settings: Settings, config: Path) -> None:
    with pytest.raises(IdentityError, match="not logged in: `mlctl login --user YOUR_NAME`"):
        require_identity(settings)
    save_identity(identity(settings))
    assert require_identity(settings, "alice").user == "alice"
    assert require_identity(settings).user == "alice"
    with pytest.raises(IdentityError, match="--as 'bob' but you are logged in as 'alice'"):
        require_identity(settings, "bob")


def test_an_expired_login_or_one_for_another_airflow_is_refused(settings: Settings, config: Path) -> None:
    save_identity(identity(settings, expires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    with pytest.raises(IdentityError, match="expired .* `mlctl login` again"):
        require_identity(settings)
    save_identity(Identity("alice", "a.b.c", LATER, "http://elsewhere:8080"))
    with pytest.raises(IdentityError, match="to http://elsewhere:8080, but these settings use in-process:"):
        require_identity(settings)


def test_token_expiry_comes_from_the_jwt() -> None:
    import base64

    payload = base64.urlsafe_b64encode(json.dumps({"sub": "alice", "exp": 1_900_000_000}).encode()).rstrip(b"=")
    assert token_expiry(f"h.{payload.decode()}.s") == dt.datetime.fromtimestamp(1_900_000_000, dt.UTC)
    with pytest.raises(IdentityError, match="not a JWT"):
        token_expiry("not-a-token")
