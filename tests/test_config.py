"""The config contract: wrong key, type or value exits 2 naming the key and the file."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.peers import (
    NodeProcess,
    base_config,
    free_port,
    node_running,
    run_cli,
    wait_for,
    write_config,
)
from tests.test_tls import KeyPair, _authority, _issue
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
        ("[drift]\nlevel = 1.5\n", "drift.level", "less than 1"),
        ("[drift]\nmin_images = 0\n", "drift.min_images", "greater than or equal to 1"),
        ("[drift]\nwindow_days = 0\n", "drift.window_days", "greater than 0"),
        ("[node]\nworkers = '2'\n", "node.workers", "without quotes"),
        (
            "[report]\nheatmap_transfer_syntax = 'jpeg2000'\n",
            "report.heatmap_transfer_syntax",
            "'jpeg-baseline', 'jpeg-ls-lossless' or 'explicit-little-endian'",
        ),
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


# --- checked at start: `serve` exits 2 before anything listens ------------------------------


def _serve_with(tmp_path: Path, **sections: Any) -> tuple[Path, str]:
    """``serve`` on a config that is valid except for ``sections``; (config path, stderr).

    The config has its own free ports and data directory, so a check that let the
    bad key through would start a node that harms nothing (and run_cli's timeout ends it).
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_config(
        tmp_path / "bad.toml", base_config(tmp_path / "data", free_port(), **sections)
    )
    proc = run_cli("serve", config=path, check=False, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert str(path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing started: no store, no spool
    return path, proc.stderr


def test_eligibility_keyword_typo_exits_2_instead_of_refusing_every_image(
    tmp_path: Path,
) -> None:
    _, err = _serve_with(tmp_path, eligibility={"require": {"BodyPartExamind": "HIP"}})
    assert "key 'eligibility.require.BodyPartExamind'" in err
    assert "not a DICOM keyword" in err and "did you mean 'BodyPartExamined'" in err


def test_eligibility_keywords_and_tags_that_exist_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(
        "[eligibility]\nrequire = { Laterality = 'L', '(0018,5101)' = 'AP', 00080060 = 'DX' }\n"
    )
    assert load_settings(path, environ={}).eligibility.require == {
        "Laterality": "L",
        "(0018,5101)": "AP",
        "00080060": "DX",
    }


def test_tls_enabled_without_certificate_exits_2(tmp_path: Path) -> None:
    _, err = _serve_with(tmp_path, tls={"enabled": True})
    assert "key 'tls.certificate'" in err and "needs certificate and private_key" in err


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, KeyPair, KeyPair]:
    """A CA and two certificates it signed, each with its own key."""
    d = tmp_path_factory.mktemp("keys")
    ca, name, key = _authority(d, "ca")
    return ca, _issue(d, "one", name, key), _issue(d, "two", name, key)


def test_tls_files_that_are_missing_or_do_not_load_exit_2(
    tmp_path: Path, keys: tuple[Path, KeyPair, KeyPair]
) -> None:
    ca, one, two = keys
    enabled = {"enabled": True, "certificate": str(one.cert), "private_key": str(one.key)}
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({**enabled, "certificate": str(tmp_path / "gone.pem")}, "tls.certificate", "gone.pem"),
        # the key of another certificate
        ({**enabled, "private_key": str(two.key)}, "tls.certificate", "belongs to"),
        ({"ca_certificates": str(one.key)}, "tls.ca_certificates", "PEM certificates"),
        (
            {"client_certificate": str(two.cert), "client_private_key": str(tmp_path / "k")},
            "tls.client_private_key",
            "does not exist",
        ),
    ]
    for n, (tls, key, words) in enumerate(cases):
        _, err = _serve_with(tmp_path / str(n), tls=tls)
        assert f"key '{key}'" in err and words in err, err
    # The same files, matched up, load.
    good = tmp_path / "good.toml"
    write_config(good, {"tls": {**enabled, "ca_certificates": str(ca)}})
    assert load_settings(good, environ={}).tls.certificate == one.cert


@pytest.mark.parametrize("threshold", [0, 1, 1.5, -0.2])
def test_threshold_outside_0_1_exits_2(tmp_path: Path, threshold: float) -> None:
    _, err = _serve_with(tmp_path, model={"threshold": threshold})
    assert "key 'model.threshold'" in err and "between 0 and 1" in err


def test_threshold_empty_is_the_bundles_and_a_probability_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[model]\nthreshold = ''\n")
    assert load_settings(path, environ={}).model.threshold is None
    path.write_text("[model]\nthreshold = 0.35\n")
    assert load_settings(path, environ={}).model.threshold == 0.35


def test_heatmap_transfer_syntax_defaults_to_jpeg_baseline_and_takes_the_lossless_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("")
    assert load_settings(path, environ={}).report.heatmap_transfer_syntax == "jpeg-baseline"
    for name in ("jpeg-ls-lossless", "explicit-little-endian"):
        path.write_text(f"[report]\nheatmap_transfer_syntax = '{name}'\n")
        assert load_settings(path, environ={}).report.heatmap_transfer_syntax == name


def test_duplicate_destination_names_exit_2(tmp_path: Path) -> None:
    archive = {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 4242}
    _, err = _serve_with(
        tmp_path, destinations=[archive, {**archive, "ae_title": "BACKUP", "port": 4243}]
    )
    assert "key 'destinations.1.name'" in err
    assert "'archive' is already the name of destinations.0" in err


@pytest.mark.parametrize(
    ("sections", "key", "words"),
    [
        ({"node": {"workers": "2"}}, "node.workers", "got text ('2')"),
        ({"node": {"settle_seconds": "10"}}, "node.settle_seconds", "without quotes"),
        ({"receive": {"fsync": "false"}}, "receive.fsync", "true or false"),
        ({"receive": {"max_associations": 2.5}}, "receive.max_associations", "integer"),
        ({"node": {"ae_title": 7}}, "node.ae_title", "text in quotes"),
    ],
)
def test_strict_types_exit_2(
    tmp_path: Path, sections: dict[str, Any], key: str, words: str
) -> None:
    _, err = _serve_with(tmp_path, **sections)
    assert f"key '{key}'" in err and words in err, err


def test_integers_are_taken_where_numbers_with_decimals_are_expected(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[node]\nsettle_seconds = 5\n[deliver]\nretry_base_seconds = 30\n")
    settings = load_settings(path, environ={})
    assert settings.node.settle_seconds == 5.0 and settings.deliver.retry_base_seconds == 30.0


def test_environment_overrides_of_text_keys_stay_text(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    settings = load_settings(
        path, environ={"TRIAGE_NODE__NODE__AE_TITLE": "1234", "TRIAGE_NODE__NODE__WORKERS": "3"}
    )
    assert settings.node.ae_title == "1234" and settings.node.workers == 3


# --- listening: a port that cannot be had is named with its key and file ----------------------


@contextmanager
def _port_in_use() -> Iterator[int]:
    """A loopback port another process (this test) listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def test_a_dicom_port_in_use_exits_1_naming_the_port_its_key_and_the_file(
    tmp_path: Path,
) -> None:
    with _port_in_use() as port:
        path = write_config(tmp_path / "node.toml", base_config(tmp_path / "data", port))
        node = NodeProcess(path, tmp_path / "node.log").start(wait=False)
        try:
            assert node.proc is not None and node.proc.wait(120) == 1, node.log_text()
        finally:
            node.kill()
    log = node.log_text()
    assert (
        f"cannot listen on 127.0.0.1:{port} (node.port in {path}): address already in use" in log
    ), log[-3000:]
    assert "Traceback" not in log and "Errno" not in log


def test_a_metrics_port_in_use_is_named_with_its_key_and_the_node_runs_on(
    tmp_path: Path,
) -> None:
    with _port_in_use() as port, node_running(tmp_path, metrics={"port": port}) as node:
        expected = (
            f"cannot listen on 127.0.0.1:{port} (metrics.port in {node.config_path}): "
            "address already in use"
        )
        wait_for(lambda: expected in node.log_text(), "the metrics.port error", 60, node)
        assert node.proc is not None and node.proc.poll() is None  # still receiving
