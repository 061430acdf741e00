"""API keys of the serving app: bearer tokens checked against SHA-256 hashes kept in a 0600 YAML file.

The file (``STOREFRONT_SERVING_API_KEYS``) holds no token, only what a token hashes to and what it may call::

    keys:
      - name: checkout-service
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        models: [order_fraud]          # or ["*"] for every model

``mlctl serving-key add NAME --models ...`` adds an entry and prints the token once; a running app reloads the
file when it changes. Without a file the app serves
without authentication (the local profile's default; the stack profile refuses to start that way).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ANY_MODEL = "*"


class ApiKeysError(ValueError):
    """The API keys file is missing, unsafe or malformed."""


class Unauthorized(Exception):
    """401: no bearer token, or one that matches no key."""


class Forbidden(Exception):
    """403: a valid key that may not call this model."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    models: frozenset[str]

    def allows(self, model: str) -> bool:
        return ANY_MODEL in self.models or model in self.models


@dataclass(frozen=True)
class ApiKeys:
    """The keys by hash. ``enabled`` is False when no keys file is configured (no authentication)."""

    by_hash: dict[str, ApiKey]
    enabled: bool = True

    @classmethod
    def disabled(cls) -> ApiKeys:
        return cls({}, enabled=False)

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        """Read and check the keys file: owner-only permissions, a ``keys`` list, each entry named, hashed and
        scoped; errors name the file and the entry."""
        if not path.is_file():
            raise ApiKeysError(f"{path}: API keys file not found; create it with `mlctl serving-key add NAME`")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ApiKeysError(f"{path}: permissions {mode:04o} let others read the key hashes; run chmod 600 {path}")
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ApiKeysError(f"{path}: not valid YAML: {exc}") from exc
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ApiKeysError(f"{path}: expected a top-level 'keys:' list of {{name, sha256, models}} entries")
        by_hash: dict[str, ApiKey] = {}
        for i, entry in enumerate(entries):
            where = f"{path}: keys[{i}]"
            if not isinstance(entry, dict):
                raise ApiKeysError(f"{where}: expected a mapping with name, sha256 and models")
            name, digest, models = entry.get("name"), entry.get("sha256"), entry.get("models")
            if not isinstance(name, str) or not name:
                raise ApiKeysError(f"{where}: 'name' must be a non-empty string")
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ApiKeysError(f"{where} ({name}): 'sha256' must be 64 lowercase hex characters (a token's hash)")
            if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
                raise ApiKeysError(f"{where} ({name}): 'models' must be a non-empty list of model names or '*'")
            if digest in by_hash:
                raise ApiKeysError(f"{where} ({name}): the same token hash as key {by_hash[digest].name!r}")
            by_hash[digest] = ApiKey(name=name, sha256=digest, models=frozenset(models))
        return cls(by_hash)

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The key of an ``Authorization: Bearer <token>`` header (None when authentication is off)."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <api key>'")
        digest = hash_token(token.strip())
        key = self.by_hash.get(digest)
        # Compare in constant time too: the dict lookup already found the candidate by its hash.
        if key is None or not hmac.compare_digest(key.sha256, digest):
            raise Unauthorized("invalid API key")
        return key


class KeyFile:
    """The API keys of a file, reloaded when the file changes (the serving app's refresh loop calls ``refresh``):
    a key added or removed with ``mlctl serving-key`` takes effect without a restart. A file that turns unsafe or
    malformed is refused with a log line and the keys already loaded stay in force."""

    name = "api-keys"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._changed()
        self.keys = ApiKeys.load(path)
        self.enabled = True

    def _changed(self) -> tuple[int, int]:
        info = self.path.stat()
        return info.st_mtime_ns, info.st_size

    def refresh(self) -> None:
        import logging

        try:
            stamp = self._changed()
            if stamp != self._stamp:
                self.keys, self._stamp = ApiKeys.load(self.path), stamp
                logging.getLogger(__name__).info(
                    "API keys reloaded from %s (%d keys)", self.path, len(self.keys.by_hash)
                )
        except (OSError, ApiKeysError) as exc:
            logging.getLogger(__name__).error("API keys not reloaded, the loaded ones stay in force: %s", exc)

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        return self.keys.authenticate(authorization)


def add_key(path: Path, name: str, models: list[str]) -> str:
    """Add (or replace) key ``name`` in the keys file, written 0600 and atomically; returns the new token, which is
    not stored anywhere."""
    if not models:
        raise ApiKeysError("give at least one model (or '*')")
    entries = []
    if path.exists():
        ApiKeys.load(path)  # refuse to rewrite a file that is already unsafe or malformed
        entries = [e for e in yaml.safe_load(path.read_text())["keys"] if e.get("name") != name]
    token = "sfk_" + secrets.token_urlsafe(32)
    entries.append({"name": name, "sha256": hash_token(token), "models": list(models)})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump({"keys": entries}, out, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return token


ADMIN_KEY = "stack-admin"


def ensure_admin_key(keys_path: Path) -> Path:
    """A keys file with an all-models key for the loopback stack, made once: its token is written beside it in
    ``<keys file>.token`` (0600), for the operator and the stack's own tests. Returns the token file."""
    token_path = keys_path.with_name(keys_path.name + ".token")
    if keys_path.exists() and token_path.exists():
        return token_path
    token = add_key(keys_path, ADMIN_KEY, [ANY_MODEL])
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token_path
