"""TLS on both sides, against dcmtk over loopback: the node as server and as client.

The certificates are made per test session with ``cryptography``: a site CA, the
node's server certificate (SAN 127.0.0.1 and localhost), a client certificate
from the same CA, a certificate from the site CA for another host name, and a
"rogue" CA with a client and a server certificate of its own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.dicom_files import write_radiograph
from tests.peers import (
    NodeProcess,
    base_config,
    dcmtk_storescp,
    free_port,
    need_tool,
    run_cli,
    write_config,
)
from tests.test_results import add_source, later, node_settings, received_uids, rows, run_jobs
from triage_node.config import DestinationSection, Settings, TlsSection
from triage_node.deliver.scu import DestinationUnavailable, _tls_args, send_objects
from triage_node.receive.scp import tls_server_context
from triage_node.store import Store, open_store
from triage_node.store.models import Delivery, Job, Result, Study
from triage_node.work.study import settle_studies

# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its unencrypted PEM private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the site CA's certificate: what [tls] ca_certificates and dcmtk's +cf get
    server: KeyPair  # from the site CA, for 127.0.0.1 and localhost
    client: KeyPair  # from the site CA
    other_name: KeyPair  # from the site CA, for archive.invalid only
    rogue_ca: Path
    rogue_server: KeyPair  # from the rogue CA, for 127.0.0.1 and localhost
    rogue_client: KeyPair  # from the rogue CA


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "triage-node tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(directory: Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> KeyPair:
    pair = KeyPair(directory / f"{stem}.pem", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return pair


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    names: tuple[str, ...] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if names:
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _authority(directory: Path, stem: str) -> tuple[Path, x509.Name, rsa.RSAPrivateKey]:
    key = _key()
    name = _name(f"{stem} CA")
    pair = _write(directory, stem, _certificate(f"{stem} CA", key, name, key, ca=True), key)
    return pair.cert, name, key


def _issue(
    directory: Path,
    stem: str,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    names: tuple[str, ...] = (),
) -> KeyPair:
    key = _key()
    return _write(directory, stem, _certificate(stem, key, issuer, issuer_key, names=names), key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_name, ca_key = _authority(d, "site")
    rogue_ca, rogue_name, rogue_key = _authority(d, "rogue")
    loopback = ("127.0.0.1", "localhost")
    return Pki(
        ca=ca,
        server=_issue(d, "server", ca_name, ca_key, loopback),
        client=_issue(d, "client", ca_name, ca_key),
        other_name=_issue(d, "other-name", ca_name, ca_key, ("archive.invalid",)),
        rogue_ca=rogue_ca,
        rogue_server=_issue(d, "rogue-server", rogue_name, rogue_key, loopback),
        rogue_client=_issue(d, "rogue-client", rogue_name, rogue_key),
    )


# --- dcmtk peers --------------------------------------------------------------------------


def dcmtk_tls(pair: KeyPair | None, ca: Path) -> tuple[str, ...]:
    """dcmtk's TLS options: our key and certificate (or none), and the CA we trust."""
    own = ("+tls", str(pair.key), str(pair.cert)) if pair else ("+tla",)
    return (*own, "+cf", str(ca))


def storescu(
    port: int, path: Path, *tls: str, calling: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            need_tool("storescu"),
            "-v",
            "-aet",
            calling,
            "-aec",
            "TRIAGE",
            *tls,
            "127.0.0.1",
            str(port),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def echoscu(port: int, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            need_tool("echoscu"),
            "-v",
            "-aet",
            "ECHOSCU",
            "-aec",
            "TRIAGE",
            *tls,
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode == 0


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def tls_storescp(
    out_dir: Path, pair: KeyPair, ca: Path, port: int | None = None
) -> AbstractContextManager[int]:
    """dcmtk storescp over TLS (it requires a client certificate from ``ca`` by default),
    each received object in its own file (``+uf``); yields its port."""
    return dcmtk_storescp("+uf", *dcmtk_tls(pair, ca), port=port, out_dir=out_dir)


# --- the node as TLS server ---------------------------------------------------------------


@contextmanager
def tls_receiver(tmp_path: Path, pki: Pki, **tls: Any) -> Iterator[NodeProcess]:
    """`triage-node receive` with [tls] on (server certificate from the site CA)."""
    port = free_port()
    cfg = base_config(
        tmp_path / "data",
        port,
        tls={
            "enabled": True,
            "certificate": str(pki.server.cert),
            "private_key": str(pki.server.key),
            **tls,
        },
    )
    node = NodeProcess(
        write_config(tmp_path / "node.toml", cfg), tmp_path / "node.log", command="receive"
    )
    node.start()
    try:
        yield node
    finally:
        node.kill()


def stored_uids(node: NodeProcess) -> set[str]:
    out = run_cli("worklist", "--json", config=node.config_path).stdout
    return {row["sop_instance_uid"] for row in json.loads(out)}


def test_tls_store_and_echo_succeed_and_plain_tcp_is_refused(tmp_path: Path, pki: Pki) -> None:
    sent = write_radiograph(tmp_path / "tls.dcm", seed=1)
    write_radiograph(tmp_path / "plain.dcm", seed=2)
    after = write_radiograph(tmp_path / "after.dcm", seed=3)
    client = dcmtk_tls(pki.client, pki.ca)
    with tls_receiver(tmp_path, pki) as node:
        assert ok(proc := echoscu(node.port, *client)), explain(proc)
        assert ok(proc := storescu(node.port, tmp_path / "tls.dcm", *client)), explain(proc)
        # Without [tls] ca_certificates a client needs no certificate of its own.
        assert ok(proc := echoscu(node.port, *dcmtk_tls(None, pki.ca))), explain(proc)

        assert not ok(proc := storescu(node.port, tmp_path / "plain.dcm")), explain(proc)
        assert not ok(proc := echoscu(node.port)), explain(proc)
        # dcmtk checks the node's certificate: a client trusting another CA gives up.
        assert not ok(proc := echoscu(node.port, *dcmtk_tls(pki.client, pki.rogue_ca)))

        # ...and the node keeps serving TLS clients after the failed handshakes.
        assert ok(proc := storescu(node.port, tmp_path / "after.dcm", *client)), explain(proc)
        assert node.proc is not None and node.proc.poll() is None
        # the plain-TCP store is not among them
        assert stored_uids(node) == {sent.SOPInstanceUID, after.SOPInstanceUID}
        # Each failed handshake is one warning naming the peer, not a traceback.
        log = node.log_text()
        assert "TLS handshake with 127.0.0.1:" in log, log[-3000:]
        assert "Traceback" not in log and "Connection closed before" not in log, log[-3000:]


def test_client_certificates_are_checked_when_ca_certificates_is_set(
    tmp_path: Path, pki: Pki
) -> None:
    files = {
        name: write_radiograph(tmp_path / f"{name}.dcm", seed=n)
        for n, name in enumerate(("none", "rogue", "site"))
    }
    with tls_receiver(tmp_path, pki, ca_certificates=str(pki.ca)) as node:
        without = storescu(node.port, tmp_path / "none.dcm", *dcmtk_tls(None, pki.ca))
        assert not ok(without), explain(without)
        rogue = storescu(node.port, tmp_path / "rogue.dcm", *dcmtk_tls(pki.rogue_client, pki.ca))
        assert not ok(rogue), explain(rogue)
        assert not ok(echoscu(node.port, *dcmtk_tls(pki.rogue_client, pki.ca)))
        site = storescu(node.port, tmp_path / "site.dcm", *dcmtk_tls(pki.client, pki.ca))
        assert ok(site), explain(site)
        assert stored_uids(node) == {files["site"].SOPInstanceUID}


def test_an_idle_connection_does_not_hold_up_the_tls_receiver(tmp_path: Path, pki: Pki) -> None:
    write_radiograph(tmp_path / "a.dcm", seed=4)
    with tls_receiver(tmp_path, pki) as node:
        # A client (port scanner, stuck peer) that connects and never starts the handshake.
        with socket.create_connection(("127.0.0.1", node.port)):
            proc = storescu(node.port, tmp_path / "a.dcm", *dcmtk_tls(pki.client, pki.ca))
            assert ok(proc), explain(proc)


def test_server_context_requires_client_certificates_only_with_ca_certificates(pki: Pki) -> None:
    base = {"enabled": True, "certificate": pki.server.cert, "private_key": pki.server.key}
    assert tls_server_context(Settings()) is None
    open_ctx = tls_server_context(Settings(tls=TlsSection(**base)))
    assert open_ctx is not None and open_ctx.verify_mode == ssl.CERT_NONE
    checked = tls_server_context(Settings(tls=TlsSection(**base, ca_certificates=pki.ca)))
    assert checked is not None and checked.verify_mode == ssl.CERT_REQUIRED
    assert checked.minimum_version >= ssl.TLSVersion.TLSv1_2
    # The CAs only for checking destinations: the receiver asks no client certificate.
    outgoing_only = tls_server_context(
        Settings(tls=TlsSection(**base, ca_certificates=pki.ca, require_client_certificate=False))
    )
    assert outgoing_only is not None and outgoing_only.verify_mode == ssl.CERT_NONE
    with pytest.raises(ValueError, match="needs tls.ca_certificates"):
        TlsSection(**base, require_client_certificate=True)
    with pytest.raises(ValueError, match="certificate and private_key"):
        tls_server_context(Settings(tls=TlsSection(enabled=True)))


# --- the node as TLS client ---------------------------------------------------------------


def client_tls(pki: Pki) -> TlsSection:
    return TlsSection(
        ca_certificates=pki.ca,
        client_certificate=pki.client.cert,
        client_private_key=pki.client.key,
    )


def tls_archive(port: int) -> dict[str, Any]:
    return {
        "name": "archive",
        "ae_title": "ARCHIVE",
        "host": "127.0.0.1",
        "port": port,
        "tls": True,
    }


def deliver_settings(tmp_path: Path, pki: Pki, port: int) -> Settings:
    """In-process worker settings (SQLite) delivering to one TLS archive, mutual TLS."""
    settings = node_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'triage.db'}",
        [tls_archive(port)],
        retry_base_seconds=0.05,
        retry_max_seconds=0.1,
    )
    return settings.model_copy(update={"tls": client_tls(pki)})


def report_one_study(settings: Settings, store: Store) -> str:
    study_uid = pydicom.uid.generate_uid()
    add_source(store, settings, study_uid, 1)
    settle_studies(settings, store, now=later(settings))
    return study_uid


def deliver_until_done(settings: Settings, store: Store, timeout: float = 30) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run_jobs(settings, store)
        job = rows(store, Job, Job.kind == "deliver")[0]
        if job.state in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"delivery not finished: {job.state} {job.last_error}")


def test_results_are_delivered_to_a_tls_storescp(tmp_path: Path, pki: Pki) -> None:
    with tls_storescp(tmp_path / "archive", pki.server, pki.ca) as port:
        settings = deliver_settings(tmp_path, pki, port)
        store = open_store(settings)
        try:
            study_uid = report_one_study(settings, store)
            job = deliver_until_done(settings, store)
            assert (job.state, job.attempts) == ("done", 1), job.last_error
            results = rows(store, Result)
            assert len(results) == 2  # the SR and one heatmap
            assert received_uids(tmp_path / "archive") == sorted(
                r.sop_instance_uid for r in results
            )
            assert {d.state for d in rows(store, Delivery)} == {"delivered"}
            assert (
                rows(store, Study, Study.study_instance_uid == study_uid)[0].delivery_state
                == "delivered"
            )
        finally:
            store.dispose()


def test_untrusted_destination_certificate_fails_clearly_then_retries_without_loss(
    tmp_path: Path, pki: Pki
) -> None:
    archive, port = tmp_path / "archive", free_port()
    settings = deliver_settings(tmp_path, pki, port)
    store = open_store(settings)
    try:
        # The archive presents a certificate from another CA than [tls] ca_certificates.
        with tls_storescp(archive, pki.rogue_server, pki.ca, port):
            study_uid = report_one_study(settings, store)
            assert run_jobs(settings, store, limit=2) == 2  # report, first delivery attempt
            job = rows(store, Job, Job.kind == "deliver")[0]
            assert (job.state, job.attempts) == ("queued", 1)
            assert "'archive'" in job.last_error and f"127.0.0.1:{port}" in job.last_error
            assert "TLS handshake failed" in job.last_error, job.last_error
            assert "certificate" in job.last_error and "ca_certificates" in job.last_error
            assert {d.state for d in rows(store, Delivery)} == {"retrying"}
            study = rows(store, Study, Study.study_instance_uid == study_uid)[0]
            assert study.delivery_state == "retrying"
            assert "TLS handshake failed" in study.last_error
            assert received_uids(archive) == []
        # The archive gets its proper certificate: the queued delivery goes through, all of it.
        with tls_storescp(archive, pki.server, pki.ca, port):
            job = deliver_until_done(settings, store)
            assert job.state == "done" and job.attempts >= 2, job.last_error
        assert received_uids(archive) == sorted(r.sop_instance_uid for r in rows(store, Result))
        assert {d.state for d in rows(store, Delivery)} == {"delivered"}
    finally:
        store.dispose()


def _destination(port: int, host: str) -> DestinationSection:
    return DestinationSection(name="archive", ae_title="ARCHIVE", host=host, port=port, tls=True)


def test_a_destination_named_by_host_name_must_match_its_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    settings = Settings(tls=client_tls(pki))
    image = write_radiograph(tmp_path / "x.dcm", seed=5)
    with tls_storescp(tmp_path / "wrong", pki.other_name, pki.ca) as port:
        with pytest.raises(DestinationUnavailable, match="TLS handshake failed.*localhost"):
            send_objects(_destination(port, "localhost"), [tmp_path / "x.dcm"], settings=settings)
        # By address the certificate is checked against the CA only (DICOM devices'
        # certificates seldom name their addresses).
        outcomes = send_objects(
            _destination(port, "127.0.0.1"), [tmp_path / "x.dcm"], settings=settings
        )
        assert [o.stored for o in outcomes] == [True]
    with tls_storescp(tmp_path / "right", pki.server, pki.ca) as port:
        outcomes = send_objects(
            _destination(port, "localhost"), [tmp_path / "x.dcm"], settings=settings
        )
        assert [o.stored for o in outcomes] == [True]
    assert received_uids(tmp_path / "right") == [image.SOPInstanceUID]


def test_client_context_checks_the_ca_and_host_names_not_addresses(pki: Pki) -> None:
    settings = Settings(tls=client_tls(pki))
    assert (
        _tls_args(_destination(104, "127.0.0.1").model_copy(update={"tls": False}), settings)
        is None
    )
    by_name = _tls_args(_destination(104, "pacs.example"), settings)
    by_address = _tls_args(_destination(104, "10.0.0.7"), settings)
    assert by_name is not None and by_address is not None
    assert by_name[1] == "pacs.example"
    assert by_name[0].verify_mode == by_address[0].verify_mode == ssl.CERT_REQUIRED
    assert by_name[0].check_hostname and not by_address[0].check_hostname
    assert by_name[0].minimum_version >= ssl.TLSVersion.TLSv1_2


def test_a_destination_that_refuses_our_client_certificate_says_so(
    tmp_path: Path, pki: Pki
) -> None:
    write_radiograph(tmp_path / "x.dcm", seed=6)
    without = Settings(tls=TlsSection(ca_certificates=pki.ca))
    rogue = Settings(
        tls=TlsSection(
            ca_certificates=pki.ca,
            client_certificate=pki.rogue_client.cert,
            client_private_key=pki.rogue_client.key,
        )
    )
    with tls_storescp(tmp_path / "in", pki.server, pki.ca) as port:
        for settings, ours in ((without, "none configured"), (rogue, "rogue-client.pem")):
            with pytest.raises(
                DestinationUnavailable, match="did not accept our client certificate"
            ) as info:
                send_objects(
                    _destination(port, "127.0.0.1"), [tmp_path / "x.dcm"], settings=settings
                )
            assert ours in str(info.value)
    assert received_uids(tmp_path / "in") == []
