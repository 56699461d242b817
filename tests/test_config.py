"""Config: TOML + ENGINE_* overrides, clear errors naming the key, secrets masked, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import ConfigError, effective_config, load_config, mask_url

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_valid() -> None:
    config = load_config(env={})
    assert config.persistence.flush_interval_ms == 50.0
    assert [v.name for v in config.venues] == ["paper"]
    assert config.admin_socket_path == Path("./var/admin/engine.sock")


def test_file_then_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(
        'data_dir = "/srv/ct"\n[persistence]\nflush_interval_ms = 20\n[[venues]]\nname = "bn"\nkind = "binance"\n'
    )
    config = load_config(path, env={"ENGINE_PERSISTENCE__FLUSH_INTERVAL_MS": "10", "ENGINE_LOG_LEVEL": "debug"})
    assert config.data_dir == "/srv/ct"
    assert config.persistence.flush_interval_ms == 10.0
    assert config.logging.level == "debug"
    assert config.venues[0].kind == "binance"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ENGINE_PERSISTENCE__FLUSH_INTERVAL_MS": "-5"}, "`persistence.flush_interval_ms`: Expected `float` > 0.0"),
        ({"ENGINE_PERSISTENCE__FLUSH_MS": "5"}, "`persistence`: Object contains unknown field `flush_ms`"),
        ({"ENGINE_LOGGING__LEVEL": "loud"}, "`logging.level`: Invalid enum value 'loud'"),
        ({"ENGINE_RUNTIME__WORKERS": "two"}, "`runtime.workers`: Expected `int`, got `str`"),
        ({"ENGINE_DATABASE__POOL_MAX_SIZE__X": "1"}, "`database.pool_max_size`: Expected `int`, got `object`"),
        ({"ENGINE_PERSISTENCE__BATCHES_IN_FLIGHT": "0"}, "`persistence.batches_in_flight`: Expected `int` >= 1"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert expected in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[persistence\nx=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_unknown_top_level_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text("flush_interval_ms = 5\n")
    with pytest.raises(ConfigError, match="unknown field `flush_interval_ms`"):
        load_config(path, env={})


def test_secrets_are_masked() -> None:
    config = load_config(env={"ENGINE_DATABASE_URL": "postgresql://engine:s3cr3t@db:5432/ct"})
    shown = effective_config(config)
    assert "s3cr3t" not in str(shown)
    assert shown["database"]["url"] == "postgresql://engine:***@db:5432/ct"
    assert mask_url("postgresql://db/ct") == "postgresql://db/ct"


def test_credentials_key_is_not_config() -> None:
    # ENGINE_CREDENTIALS_KEY is the credential store's secret, never a config key (nor logged with the config).
    config = load_config(env={"ENGINE_CREDENTIALS_KEY": "k" * 44})
    assert "k" * 44 not in str(effective_config(config))


def test_bad_config_exits_2_with_the_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "run_engine.py")],
        env={"ENGINE_PERSISTENCE__FLUSH_MAX_ROWS": "0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "persistence.flush_max_rows" in result.stderr
