"""Venue API credentials: resolved from a reference, never stored or shown in plain text.

A ``users`` row holds a *credential reference*, never the secret. References:

* ``file:/path/key.json``  a JSON file ``{"api_key": ..., "secret": ..., "passphrase": ...}`` with mode 0600
  (refused when group or world can read it);
* ``env:PREFIX``           ``PREFIX_API_KEY``, ``PREFIX_SECRET`` and optional ``PREFIX_PASSPHRASE``;
* ``enc:<token>``          a Fernet token (``cryptography``) of the same JSON, keyed by the environment
                           variable ``ENGINE_CREDENTIALS_KEY``.

``Credential``'s ``repr``/``str`` mask every field, and no error message here ever contains a secret.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken

from engine.logs import get_logger

__all__ = ["Credential", "CredentialError", "CredentialStore", "encrypt_credential"]

ENCRYPTION_KEY_ENV = "ENGINE_CREDENTIALS_KEY"

_log = get_logger("adapters.credentials")


class CredentialError(Exception):
    """A credential reference could not be resolved. The message names the reference kind, never a secret."""


def _mask(value: str | None) -> str:
    if not value:
        return "<none>"
    return "***" + value[-2:] if len(value) >= 12 else "***"


class Credential:
    """An API key, secret and optional passphrase. Masked in ``repr``/``str``; compared by identity only."""

    __slots__ = ("_api_key", "_passphrase", "_secret")

    def __init__(self, api_key: str, secret: str, passphrase: str | None = None) -> None:
        if not api_key or not secret:
            raise CredentialError("credential needs both an api key and a secret")
        self._api_key = api_key
        self._secret = secret
        self._passphrase = passphrase or None

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def secret(self) -> str:
        return self._secret

    @property
    def passphrase(self) -> str | None:
        return self._passphrase

    def ccxt_config(self) -> dict[str, str]:
        """The ``apiKey``/``secret``/``password`` entries of a ccxt constructor config."""
        config = {"apiKey": self._api_key, "secret": self._secret}
        if self._passphrase is not None:
            config["password"] = self._passphrase
        return config

    def __repr__(self) -> str:
        return f"Credential(api_key={_mask(self._api_key)}, secret=***, passphrase=***)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("Credential is not picklable")  # keeps secrets out of caches and queues


def _from_mapping(data: object, kind: str) -> Credential:
    if not isinstance(data, Mapping):
        raise CredentialError(f"{kind} credential is not a JSON object")
    api_key, secret, passphrase = data.get("api_key"), data.get("secret"), data.get("passphrase")
    if not isinstance(api_key, str) or not isinstance(secret, str):
        raise CredentialError(f"{kind} credential lacks api_key/secret strings")
    if passphrase is not None and not isinstance(passphrase, str):
        raise CredentialError(f"{kind} credential passphrase is not a string")
    return Credential(api_key, secret, passphrase)


def encrypt_credential(credential: Credential, key: bytes | str) -> str:
    """An ``enc:`` reference for ``credential`` (what the admin tooling stores in the users row)."""
    payload = {
        "api_key": credential.api_key,
        "secret": credential.secret,
        "passphrase": credential.passphrase,
    }
    return "enc:" + Fernet(key).encrypt(orjson.dumps(payload)).decode("ascii")


class CredentialStore:
    """Resolves credential references. Runs wherever the venue adapter builds a client (the I/O loop)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ
        self._static: dict[str, Credential] = {}

    def register(self, ref: str, credential: Credential) -> None:
        """Bind ``ref`` to an in-memory credential (tests, and the emulator's accounts)."""
        self._static[ref] = credential

    def resolve(self, ref: str | None) -> Credential:
        if not ref:
            raise CredentialError("no credential reference")
        if ref in self._static:
            return self._static[ref]
        kind, _, rest = ref.partition(":")
        if kind == "file":
            return self._from_file(Path(rest))
        if kind == "env":
            return self._from_env(rest)
        if kind == "enc":
            return self._from_token(rest)
        raise CredentialError(f"unknown credential reference kind {kind!r}")

    def _from_file(self, path: Path) -> Credential:
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise CredentialError(f"credential file {path} is not readable: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            _log.warning("credentials.file_mode_refused", path=str(path), mode=oct(stat.S_IMODE(mode)))
            raise CredentialError(f"credential file {path} must have mode 0600, has {oct(stat.S_IMODE(mode))}")
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            raise CredentialError(f"credential file {path} is not valid JSON") from None
        return _from_mapping(data, "file")

    def _from_env(self, prefix: str) -> Credential:
        if not prefix:
            raise CredentialError("env credential reference needs a prefix")
        api_key = self._environ.get(f"{prefix}_API_KEY")
        secret = self._environ.get(f"{prefix}_SECRET")
        if not api_key or not secret:
            raise CredentialError(f"environment lacks {prefix}_API_KEY or {prefix}_SECRET")
        return Credential(api_key, secret, self._environ.get(f"{prefix}_PASSPHRASE"))

    def _from_token(self, token: str) -> Credential:
        key = self._environ.get(ENCRYPTION_KEY_ENV)
        if not key:
            raise CredentialError(f"{ENCRYPTION_KEY_ENV} is not set")
        try:
            plain = Fernet(key).decrypt(token.encode("ascii"))
        except (InvalidToken, ValueError):
            # `from None`: the token and the key must not ride along in a traceback.
            raise CredentialError("encrypted credential cannot be decrypted with the configured key") from None
        return _from_mapping(orjson.loads(plain), "encrypted")
