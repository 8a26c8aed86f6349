"""Real peers for tests: the node as a subprocess, dcmtk tools, a PostgreSQL server.

Everything runs on loopback. Missing tools fail the test with a clear message
rather than skipping it: CI installs them (see .ci/run).

Every long-running child is started with :func:`start_process` and stopped with
:func:`stop_process` (or a peer's own stop) in a ``finally`` or fixture; the
``_no_process_left_behind`` fixtures in ``conftest.py`` kill, reap and report any
that a test left running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


# Signals a test uses to stop a child. A shell that runs the suite in the background
# (``nohup python3 -m pytest &`` in a script) starts it with SIGINT and SIGQUIT ignored,
# and an ignored signal stays ignored across fork and exec: without this, a child told
# to stop with SIGINT, as Ctrl-C would, never stops (a Python child does not even get
# its KeyboardInterrupt handler).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)

# Every process start_process started in this test session, oldest first.
STARTED: list[subprocess.Popen[Any]] = []


def _child_default_signals() -> None:
    """In the child between fork and exec: the stop signals back to their default
    action and unblocked, whatever the suite inherited (SIGHUP is left alone, so a
    ``nohup`` run keeps its children through a hangup)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def start_process(args: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **popen_kwargs)`` for a child that outlives one call: it
    starts with SIGINT, SIGQUIT and SIGTERM at their defaults, and is recorded so that
    the conftest fixtures can kill and report it if a test leaves it running.

    The caller stops it in a ``finally`` or fixture (:func:`stop_process`)."""
    # The preexec_fn runs Python in the forked child. It only calls an imported module's
    # signal functions: no import and no lock that another thread could hold at the fork,
    # the hazard the subprocess docs warn of.
    proc = subprocess.Popen(args, preexec_fn=_child_default_signals, **popen_kwargs)
    STARTED.append(proc)
    return proc


def stop_process(
    proc: subprocess.Popen[Any], timeout: float = 30, sig: int = signal.SIGTERM
) -> int:
    """Stop ``proc`` (``sig``, then SIGKILL after ``timeout`` seconds), reap it and close
    its pipes; its exit code (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    code = proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return code


def stop_left_running(since: int = 0) -> list[str]:
    """Kill and reap every process in ``STARTED[since:]`` still running; their command
    lines (a test that left them behind). Finished ones are reaped silently."""
    left: list[str] = []
    for proc in STARTED[since:]:
        if proc.poll() is None:
            left.append(f"pid {proc.pid}: {' '.join(map(str, proc.args))}")
            stop_process(proc, timeout=10, sig=signal.SIGKILL)
    return left


def wait_for(check: Any, what: str, timeout: float = 90, *logs: Any, interval: float = 0.2) -> Any:
    """Poll ``check()`` until it returns something truthy (returned); fail after ``timeout``
    seconds naming ``what``, with the tail of each of ``logs`` (anything with ``log_text``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    text = "\n".join(p.log_text()[-4000:] for p in logs)
    raise AssertionError(f"timed out waiting for {what}\n{text}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_tool(name: str) -> str:
    """Path of a native peer tool (dcmtk, dicom3tools, PostgreSQL) on PATH.

    pynetdicom installs Python apps named storescu, storescp, echoscu... whose
    pyenv shims come first on PATH; a test must talk to dcmtk's, so executables
    that are scripts (``#!``) are passed over when a native one exists.
    """
    path = shutil.which(name)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            with open(candidate, "rb") as f:
                if f.read(2) != b"#!":
                    path = str(candidate)
                    break
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs it (apt-get)")
    return path


def wait_listening(port: int, proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """Wait until ``proc`` accepts TCP connections on loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"peer exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port}")


@contextmanager
def dcmtk_storescp(
    *options: str, port: int | None = None, ae_title: str = "ARCHIVE", out_dir: Path | None = None
) -> Iterator[int]:
    """dcmtk's storescp as ``ae_title`` on loopback ``port`` (a free one by default) with
    ``options``, writing what it receives to ``out_dir`` if given; yields the port and
    kills it after. It accepts every transfer syntax dcmtk knows (``+xa``), as an archive
    does: the heatmap SC is JPEG baseline by default, and storescp's own default takes
    uncompressed objects only. A transfer-syntax option of the caller's (``+x=``: the
    uncompressed ones only, ...) replaces ``+xa``."""
    port = port or free_port()
    syntaxes = [] if any(o.startswith("+x") for o in options) else ["+xa"]
    where: list[str] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        where = ["-od", str(out_dir)]
    proc = start_process(
        [need_tool("storescp"), "-aet", ae_title, *syntaxes, *where, *options, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc)
        yield port
    finally:
        stop_process(proc, sig=signal.SIGKILL)


def start_archive_scp(
    on_store: Any, port: int | None = None, ae_title: str = "ARCHIVE"
) -> tuple[Any, int]:
    """A pynetdicom storage SCP on loopback whose C-STOREs are answered by
    ``on_store(event) -> status`` (a test's misbehaving archive). Returns the running
    server (``shutdown()`` it) and its port. It accepts every transfer syntax pydicom
    knows, compressed ones included (the heatmap SC is JPEG baseline by default)."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    port = port or free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    return server, port


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    """Write a TOML config; tables of lists (peers, destinations) become [[arrays]]."""
    lines: list[str] = []
    for section, body in config.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                lines.append("")
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
            lines.append("")
    path.write_text("\n".join(lines))
    tomllib.loads(path.read_text())  # the test's own config must be valid TOML
    return path


def base_config(data_dir: Path, port: int, **sections: Any) -> dict[str, Any]:
    """A node config for tests: our AE TRIAGE on loopback, peer STORESCU allowed."""
    cfg: dict[str, Any] = {
        "node": {
            "ae_title": "TRIAGE",
            "host": "127.0.0.1",
            "port": port,
            "data_dir": str(data_dir),
            "settle_seconds": 1,
        },
        "receive": {"min_free_disk_mb": 0},
        # Each test node gets its own metrics port, so nodes started side by side never
        # contend for the default one.
        "metrics": {"port": free_port()},
        "worker": {"poll_seconds": 0.2, "retry_base_seconds": 1},
        "peers": [
            {"ae_title": "STORESCU", "host": "127.0.0.1"},
            {"ae_title": "ECHOSCU", "host": "127.0.0.1"},
        ],
        "logging": {"format": "json", "level": "DEBUG"},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(name), dict):
            cfg[name] = {**cfg[name], **value}
        else:
            cfg[name] = value
    return cfg


def run_cli(
    *args: str,
    config: Path | None = None,
    check: bool = True,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `triage-node ARGS` (as `python -m triage_node`) and capture its output."""
    cmd = [sys.executable, "-m", "triage_node", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}"
        )
    return proc


class NodeProcess:
    """`triage-node serve|receive|work` as a real subprocess with its own config."""

    def __init__(self, config_path: Path, log_path: Path, command: str = "serve") -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.command = command
        cfg = tomllib.loads(config_path.read_text())
        self.port = int(cfg["node"]["port"])
        self.data_dir = Path(cfg["node"]["data_dir"])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, timeout: float = 60) -> NodeProcess:
        """Start the process (the previous one must have ended); with ``wait``, return once
        ``serve``/``receive`` listens. A process that does not get there is killed."""
        if self.proc is not None and self.proc.poll() is None:
            raise AssertionError(
                f"node {self.log_path.stem} is still running (pid {self.proc.pid})"
            )
        with open(self.log_path, "ab") as log:
            self.proc = start_process(
                [
                    sys.executable,
                    "-m",
                    "triage_node",
                    self.command,
                    "--config",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        if wait and self.command in ("serve", "receive"):
            try:
                self.wait_listening(timeout)
            except BaseException:
                self.kill()
                raise
        return self

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"node not listening on {self.port}:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGKILL)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and its exit code; SIGKILLed and reaped if it has not ended in
        ``timeout`` seconds (the code is then -9)."""
        assert self.proc is not None
        return stop_process(self.proc, timeout=timeout)

    def restart(self) -> NodeProcess:
        self.kill()
        return self.start()


@contextmanager
def node_running(
    tmp_path: Path, name: str = "node", command: str = "serve", **sections: Any
) -> Iterator[NodeProcess]:
    """Start a node on a free port with ``base_config`` plus overrides; kill it after."""
    port = sections.pop("port", None) or free_port()
    data_dir = sections.pop("data_dir", None) or tmp_path / f"{name}-data"
    cfg_path = write_config(
        tmp_path / f"{name}.toml", base_config(Path(data_dir), port, **sections)
    )
    node = NodeProcess(cfg_path, tmp_path / f"{name}.log", command=command)
    node.start()
    try:
        yield node
    finally:
        node.kill()


def storescu(
    port: int,
    *files: Path | str,
    calling: str = "STORESCU",
    called: str = "TRIAGE",
    extra: tuple[str, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu to the node; returns the finished process (not checked)."""
    exe = need_tool("storescu")
    cmd = [
        exe,
        "-v",
        "-aet",
        calling,
        "-aec",
        called,
        *extra,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def echoscu(
    port: int, calling: str = "ECHOSCU", called: str = "TRIAGE"
) -> subprocess.CompletedProcess[str]:
    exe = need_tool("echoscu")
    return subprocess.run(
        [exe, "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- PostgreSQL -------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for cand in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(cand)
    return None


class PostgresServer:
    """A throwaway PostgreSQL cluster on loopback, owned by the test session."""

    def __init__(self, root: Path) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            pytest.fail("PostgreSQL server binaries not found; .ci/run installs postgresql")
        self.pg_ctl = pg_ctl
        self.root = root
        self.datadir = root / "pgdata"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            root.mkdir(parents=True, exist_ok=True)
            shutil.chown(root, "postgres", "postgres")
            os.chmod(root, 0o755)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *self.prefix,
                initdb,
                "-D",
                str(self.datadir),
                "-A",
                "trust",
                "-U",
                "triage",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *self.prefix,
                pg_ctl,
                "-D",
                str(self.datadir),
                "-l",
                str(root / "pg.log"),
                "-w",
                "-o",
                f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        self._n = 0

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://triage@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        import psycopg

        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=triage dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", str(self.datadir), "-m", "immediate", "stop"],
            capture_output=True,
        )


class OrthancServer:
    """The Debian ``Orthanc`` with deploy/orthanc's config and Lua router, on loopback.

    Paths and ports are templated into a copy of ``deploy/orthanc/orthanc.json``;
    the ``triage-node`` modality points at ``node_port`` (the node, or a stand-in).
    :meth:`stop` and :meth:`start` keep the same storage and ports, so a test can
    take the archive down and bring it back with its contents.
    """

    def __init__(
        self,
        root: Path,
        node_port: int,
        node_aet: str | None = None,
        senders: Mapping[str, str] | None = None,
        router: bool = True,
        dicomweb: bool = False,
    ) -> None:
        """``senders``: extra modalities (name -> AE title on 127.0.0.1) that may store;
        ``router`` False: without the Lua script (a plain archive); ``dicomweb`` True:
        with Debian's DICOMweb plugin (orthanc-dicomweb) serving ``/dicom-web/`` on the
        HTTP port (a web viewer's data source)."""
        import json

        deploy = REPO / "deploy" / "orthanc"
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        config = json.loads((deploy / "orthanc.json").read_text())
        node = config["DicomModalities"]["triage-node"]
        node["Port"] = node_port
        if node_aet is not None:
            node["AET"] = node_aet
        for name, aet in (senders or {}).items():
            config["DicomModalities"][name] = {
                "AET": aet,
                "Host": "127.0.0.1",
                "Port": 104,
                "AllowEcho": True,
                "AllowStore": True,
            }
        config.update(
            StorageDirectory=str(root / "db"),
            IndexDirectory=str(root / "db"),
            HttpPort=free_port(),
            DicomPort=free_port(),
            LuaScripts=[str(deploy / "triage-route.lua")] if router else [],
        )
        if dicomweb:
            config["Plugins"] = [self.dicomweb_plugin()]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}
        self.config_path = root / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.http_port = int(config["HttpPort"])
        self.dicom_port = int(config["DicomPort"])
        self.aet = str(config["DicomAet"])
        self.node_aet = str(node["AET"])
        self.log_path = root / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str:
        found = shutil.which("Orthanc") or (
            "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
        )
        if found is None:
            pytest.fail("Orthanc is not installed; .ci/run installs orthanc (apt-get)")
        return found

    @staticmethod
    def dicomweb_plugin() -> str:
        """The DICOMweb plugin's shared library as Debian's orthanc-dicomweb installs it."""
        for directory in ("/usr/share/orthanc/plugins", "/usr/lib/orthanc"):
            found = sorted(Path(directory).glob("libOrthancDicomWeb.so*"))
            if found:
                return str(found[0])
        pytest.fail("Orthanc's DICOMweb plugin is not installed; .ci/run installs orthanc-dicomweb")

    def start(self, timeout: float = 60) -> OrthancServer:
        if self.proc is not None and self.proc.poll() is None:
            raise AssertionError(f"Orthanc is still running (pid {self.proc.pid})")
        with open(self.log_path, "ab") as log:
            self.proc = start_process(
                [self.binary(), str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        try:
            self._wait_answering(self.proc, time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_answering(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        while True:
            if proc.poll() is not None:
                raise AssertionError("Orthanc exited:\n" + self.log_text())
            try:
                self.get("/system")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError("Orthanc did not start\n" + self.log_text()) from None
                time.sleep(0.2)
        # The REST API answers a moment before the DICOM port listens.
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("Orthanc DICOM port not listening") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 20 s) and reap; nothing if not started."""
        if self.proc is None:
            return
        stop_process(self.proc, timeout=20)
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=10) as rsp:
            return json.load(rsp)

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url(path), timeout=30) as rsp:
            return bytes(rsp.read())

    def post(self, path: str, body: bytes, content_type: str = "application/dicom") -> Any:
        req = urllib.request.Request(
            self.url(path), data=body, method="POST", headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return json.load(rsp)

    def upload_bytes(self, data: bytes) -> str:
        """POST one DICOM file to ``/instances``; Orthanc's id of the instance."""
        answer = self.post("/instances", data)
        assert answer["Status"] == "Success", answer
        return str(answer["ID"])

    def lookup(self, uid: str) -> list[dict[str, Any]]:
        """``/tools/lookup`` of a UID: what Orthanc holds under it (may be empty)."""
        return list(self.post("/tools/lookup", uid.encode(), "text/plain"))

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance Orthanc holds in the study (with MainDicomTags), [] if none."""
        found = [f for f in self.lookup(study_uid) if f["Type"] == "Study"]
        if not found:
            return []
        return list(self.get(f"/studies/{found[0]['ID']}/instances"))
