"""Settings: env vars, mounted secrets, and secrets that never show in logs."""
from __future__ import annotations

import logging

import pytest

from shared.config import ConfigError, Secret, env_bool, env_int, env_list, read_secret


def test_secret_files_win_over_env_vars(tmp_path):
    (tmp_path / "db-password").write_text("from-file\n")
    environ = {"SECRETS_DIR": str(tmp_path), "DB_PASSWORD": "from-env"}
    assert read_secret("db-password", environ=environ).reveal() == "from-file"


def test_secret_falls_back_to_env_var(tmp_path):
    environ = {"SECRETS_DIR": str(tmp_path), "DB_PASSWORD": "from-env"}
    assert read_secret("db-password", environ=environ).reveal() == "from-env"


def test_missing_required_secret_fails_at_boot(tmp_path):
    with pytest.raises(ConfigError, match="db-password"):
        read_secret("db-password", environ={"SECRETS_DIR": str(tmp_path)})


def test_secrets_are_redacted_in_repr_and_logs(caplog):
    secret = Secret("hunter2-very-secret")
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings: %s %r", secret, {"key": secret})
    assert "hunter2" not in caplog.text
    assert "hunter2" not in repr(secret)


def test_typed_env_values_and_errors():
    assert env_int("N", environ={"N": "5"}) == 5
    assert env_int("N", 3, environ={}) == 3
    assert env_bool("B", environ={"B": "yes"}) is True
    assert env_list("L", environ={"L": "a, b,,c"}) == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="N must be an integer"):
        env_int("N", environ={"N": "five"})
    with pytest.raises(ConfigError, match="required"):
        env_int("N", environ={})


def test_function_urls_prefer_direct_urls_then_the_gateway():
    from shared.config import function_url

    assert function_url("users", environ={}) == "http://127.0.0.1:8080/function/users"
    assert function_url("users", environ={"GATEWAY_URL": "http://gw:8080/"}) == "http://gw:8080/function/users"
    assert function_url("chat-results", environ={"FUNCTION_URL_CHAT_RESULTS": "http://cr.svc/",
                                                 "GATEWAY_URL": "http://gw"}) == "http://cr.svc"
