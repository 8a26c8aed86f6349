"""The console's users: password hashes, logins, idle expiry, CSRF tokens, and the config
keys that hold them (unit tests: no server, a movable clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers import base_config, free_port, write_config
from triage_node.config import ConfigError, WebUserSection, load_settings
from triage_node.web.auth import Sessions, csrf_ok, hash_password, verify_password


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_hash_checks_its_password_only_and_is_salted() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert hash_password("correct horse") != stored  # a fresh salt each time
    assert not verify_password("x", "scrypt$garbage")


def test_logins_expire_when_idle_and_carry_their_own_csrf_token() -> None:
    clock = Clock()
    users = [
        WebUserSection(name="ada", password_hash=hash_password("pw-a"), role="admin"),
        WebUserSection(name="vic", password_hash=hash_password("pw-v")),
    ]
    sessions = Sessions(users, idle_seconds=60, clock=clock)
    assert sessions.required
    assert sessions.login("ada", "wrong") is None
    assert sessions.login("nobody", "pw-a") is None
    token, login = sessions.login("ada", "pw-a") or ("", None)
    assert login is not None and login.admin
    other_token, other = sessions.login("vic", "pw-v") or ("", None)
    assert other is not None and not other.admin
    assert csrf_ok(login, login.csrf) and not csrf_ok(login, other.csrf)
    assert not csrf_ok(None, login.csrf) and not csrf_ok(login, None)
    clock.now += 59
    assert sessions.get(token) == login  # a request restarts the idle time
    clock.now += 59
    assert sessions.get(token) == login
    assert sessions.get(other_token) is None  # 118 s idle
    clock.now += 61
    assert sessions.get(token) is None
    sessions.logout(token)


def test_config_takes_hashes_never_passwords(tmp_path: Path) -> None:
    web = {"users": [{"name": "ada", "password_hash": "hunter2", "role": "admin"}]}
    config = write_config(tmp_path / "c.toml", base_config(tmp_path, free_port(), web=web))
    with pytest.raises(
        ConfigError, match=r"key 'web\.users\.0\.password_hash'.*not a password hash"
    ):
        load_settings(config)
    web["users"][0]["password_hash"] = hash_password("hunter2")
    assert load_settings(write_config(config, base_config(tmp_path, free_port(), web=web)))


def test_https_needs_the_consoles_own_port_and_a_key_that_loads(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("not a certificate")
    web = {"certificate": str(cert), "private_key": str(cert)}
    config = write_config(tmp_path / "c.toml", base_config(tmp_path, free_port(), web=web))
    with pytest.raises(ConfigError, match=r"key 'web\.certificate'.*own port"):
        load_settings(config)
    web["port"] = free_port()
    config = write_config(tmp_path / "c.toml", base_config(tmp_path, free_port(), web=web))
    with pytest.raises(ConfigError, match=r"key 'web\.certificate'.*cannot load certificate"):
        load_settings(config)
