"""The config contract: wrong key, type or value exits 2 naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers import free_port, run_cli
from triage_node.config import ConfigError, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[node]\nportt = 104\n", "node.portt", "unknown key"),
        ("[node]\nport = 'high'\n", "node.port", "integer"),
        ("[node]\nport = 70000\n", "node.port", "65535"),
        ("[node]\nae_title = 'THIS_AE_TITLE_IS_TOO_LONG'\n", "node.ae_title", "16"),
        ("[[peers]]\nae_title = 'PACS'\nhost = 'not a host'\n", "peers.0.host", "IP address"),
        ("[receive]\nmin_free_disk_mb = -1\n", "receive.min_free_disk_mb", "greater"),
        ("[modle]\nbundle = 'x'\n", "modle", "unknown key"),
        ("[logging]\nlevel = 'LOUD'\n", "logging.level", "INFO"),
    ],
)
def test_bad_config_exits_2_naming_key_and_file(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = _write(tmp_path, text)
    proc = run_cli("status", config=path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"key '{key}'" in proc.stderr
    assert str(path) in proc.stderr
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_toml_and_missing_file_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path, "[node\nport = 1\n")
    proc = run_cli("worklist", config=path, check=False)
    assert proc.returncode == 2 and str(path) in proc.stderr and "TOML" in proc.stderr
    proc = run_cli("status", config=tmp_path / "nope.toml", check=False)
    assert proc.returncode == 2 and "nope.toml" in proc.stderr and "does not exist" in proc.stderr


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[node]\nport = 104\nae_title = 'FROMFILE'\n")
    settings = load_settings(
        path,
        environ={
            "TRIAGE_NODE__NODE__PORT": "11113",
            "TRIAGE_NODE__NODE__AE_TITLE": "FROMENV",
            "TRIAGE_NODE__RECEIVE__FSYNC": "false",
        },
    )
    assert settings.node.port == 11113
    assert settings.node.ae_title == "FROMENV"
    assert settings.receive.fsync is False
    assert "TRIAGE_NODE__NODE__PORT" in settings.source


def test_bad_environment_override_names_variable(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    with pytest.raises(ConfigError, match="node.port"):
        load_settings(path, environ={"TRIAGE_NODE__NODE__PORT": "'x'"})
    with pytest.raises(ConfigError, match="TRIAGE_NODE__PORT"):
        load_settings(path, environ={"TRIAGE_NODE__PORT": "1"})
    proc = run_cli("status", config=path, check=False, env={"TRIAGE_NODE__NODE__WORKERS": "0"})
    assert proc.returncode == 2 and "node.workers" in proc.stderr
    assert "TRIAGE_NODE__NODE__WORKERS" in proc.stderr


def test_config_found_through_environment_variable(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"[node]\nae_title = 'ENVFILE'\ndata_dir = '{tmp_path}/d'\n"
        f"[metrics]\nport = {free_port()}\n",
    )
    # No node runs for this config: status exits 3 (no answer), and still reports.
    proc = run_cli("status", "--json", env={"TRIAGE_NODE_CONFIG": str(path)}, check=False)
    assert proc.returncode == 3, proc.stderr
    assert '"ae_title": "ENVFILE"' in proc.stdout


def test_defaults_are_valid() -> None:
    settings = load_settings(None, environ={})
    assert settings.node.port == 11112
    assert settings.peers == []  # empty allow-list: nobody may send
    assert settings.database_url.startswith("sqlite:///")
