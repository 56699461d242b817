"""CredentialStore: each source, the 0600 rule, and secrets never leaking into reprs, errors or logs."""

from __future__ import annotations

import asyncio
import os
import pickle
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import structlog
from cryptography.fernet import Fernet

from adapters.ccxt_errors import CredentialRejected
from adapters.ccxt_venue import CcxtVenue
from adapters.credentials import (
    ENCRYPTION_KEY_ENV,
    Credential,
    CredentialError,
    CredentialStore,
    encrypt_credential,
)
from adapters.emulator import EmulatorServer
from engine.clock import SYSTEM_CLOCK
from engine.messages import OrderRequest, Side, TradeType

API_KEY = "AKIA-very-long-api-key-1234567890"
SECRET = "s3cr3t-value-that-must-never-leak-42"
PASSPHRASE = "pass-phrase-never-leak-7"


def _write(path: Path, mode: int) -> Path:
    path.write_bytes(orjson.dumps({"api_key": API_KEY, "secret": SECRET, "passphrase": PASSPHRASE}))
    os.chmod(path, mode)
    return path


def _assert_clean(text: str) -> None:
    for secret in (SECRET, PASSPHRASE, API_KEY):
        assert secret not in text


def test_file_source_with_mode_0600(tmp_path: Path) -> None:
    path = _write(tmp_path / "key.json", 0o600)
    credential = CredentialStore({}).resolve(f"file:{path}")
    assert (credential.api_key, credential.secret, credential.passphrase) == (API_KEY, SECRET, PASSPHRASE)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "key.json", mode)
    with structlog.testing.capture_logs() as logs, pytest.raises(CredentialError, match="0600") as info:
        CredentialStore({}).resolve(f"file:{path}")
    _assert_clean(str(info.value) + repr(logs))


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    store = CredentialStore({})
    with pytest.raises(CredentialError):
        store.resolve(f"file:{tmp_path / 'absent.json'}")
    bad = tmp_path / "bad.json"
    bad.write_text(f"{{not json {SECRET}")
    os.chmod(bad, 0o600)
    with pytest.raises(CredentialError) as info:
        store.resolve(f"file:{bad}")
    _assert_clean(str(info.value))


def test_env_source() -> None:
    env = {"ALICE_API_KEY": API_KEY, "ALICE_SECRET": SECRET, "ALICE_PASSPHRASE": PASSPHRASE}
    credential = CredentialStore(env).resolve("env:ALICE")
    assert (credential.api_key, credential.secret, credential.passphrase) == (API_KEY, SECRET, PASSPHRASE)
    assert CredentialStore({"BOB_API_KEY": API_KEY, "BOB_SECRET": SECRET}).resolve("env:BOB").passphrase is None
    with pytest.raises(CredentialError, match="CAROL_API_KEY"):
        CredentialStore(env).resolve("env:CAROL")


def test_encrypted_source_round_trip() -> None:
    key = Fernet.generate_key().decode()
    ref = encrypt_credential(Credential(API_KEY, SECRET, PASSPHRASE), key)
    assert ref.startswith("enc:")
    _assert_clean(ref)
    credential = CredentialStore({ENCRYPTION_KEY_ENV: key}).resolve(ref)
    assert (credential.api_key, credential.secret, credential.passphrase) == (API_KEY, SECRET, PASSPHRASE)


def test_encrypted_source_with_wrong_or_missing_key() -> None:
    ref = encrypt_credential(Credential(API_KEY, SECRET), Fernet.generate_key())
    with pytest.raises(CredentialError) as info:
        CredentialStore({ENCRYPTION_KEY_ENV: Fernet.generate_key().decode()}).resolve(ref)
    assert ref[4:] not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(CredentialError, match=ENCRYPTION_KEY_ENV):
        CredentialStore({}).resolve(ref)


def test_unknown_or_empty_reference() -> None:
    with pytest.raises(CredentialError):
        CredentialStore({}).resolve(None)
    with pytest.raises(CredentialError, match="kind"):
        CredentialStore({}).resolve("vault:x")


def test_repr_and_str_mask_everything() -> None:
    credential = Credential(API_KEY, SECRET, PASSPHRASE)
    _assert_clean(repr(credential) + str(credential) + f"{credential}" + repr([credential]))
    with pytest.raises(TypeError):
        pickle.dumps(credential)


def test_secret_never_reaches_logs_or_errors_on_venue_auth_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ccxt raises an auth error (bad signature, unknown key): no message and no log holds a secret."""

    async def main() -> None:
        emu = EmulatorServer(("binance",))
        await emu.start()
        emu.add_account("binance", API_KEY, "the-real-secret-on-the-venue")
        store = CredentialStore({"U1_API_KEY": API_KEY, "U1_SECRET": SECRET, "U2_API_KEY": SECRET, "U2_SECRET": SECRET})
        venue = CcxtVenue(
            "binance",
            trade_type=TradeType.SPOT,
            api_base_url=emu.url_for("binance"),
            credentials=store,
            clock=SYSTEM_CLOCK,
            credential_refs={1: "env:U1", 2: "env:U2"},
        )
        try:
            with structlog.testing.capture_logs() as logs:
                for user_id in (1, 2):  # wrong secret; unknown key
                    request = OrderRequest(
                        client_order_id=f"c1u{user_id}k",
                        user_id=user_id,
                        venue="binance",
                        symbol="BTC/USDT",
                        trade_type=TradeType.SPOT,
                        side=Side.BUY,
                        qty=Decimal("0.01"),
                        price_hint=Decimal(50000),
                    )
                    with pytest.raises(CredentialRejected) as info:
                        await venue.create_order(request)
                    _assert_clean(str(info.value) + repr(info.value) + repr(info.value.args))
                    with pytest.raises(CredentialRejected) as info:
                        await venue.fetch_balance(user_id=user_id, trade_type=TradeType.SPOT)
                    _assert_clean(str(info.value))
            _assert_clean(repr(logs))
        finally:
            await venue.close()
            await emu.stop()

    asyncio.run(main())
    captured = capsys.readouterr()
    _assert_clean(captured.out + captured.err)
