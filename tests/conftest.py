"""Shared fixtures: a real Redis server, a real Redis Cluster and a real
Kafka-protocol broker, started by the tests on free loopback ports and stopped
at the end of the session."""

from __future__ import annotations

import pytest
import redis as redis_lib

from lab.embedded import Broker, RedisCluster, RedisServer
from streams.redis_clients import sync_client


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_client(redis_server):
    client = redis_lib.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """Three primaries, no replicas; append-only with fsync, so a killed node restarts with its data."""
    cluster = RedisCluster(shards=3, data_dir=tmp_path_factory.mktemp("redis-cluster"), persistent=True).start()
    yield cluster
    cluster.stop()


@pytest.fixture()
def redis_cluster_client(redis_cluster):
    client = sync_client(redis_cluster.url, cluster=True, decode_responses=True)
    client.flushall(target_nodes=client.PRIMARIES)
    yield client
    client.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    b = Broker(log_path=tmp_path_factory.mktemp("broker") / "broker.log").start()
    yield b
    b.stop()


class WorkerProcess:
    """A real `segflow worker` subprocess against the test broker and Redis."""

    def __init__(self, broker, redis_server, tmp_path, prefix: str, app_id: str, extra_env: dict | None = None):
        import os
        import sys

        from lab.embedded import free_port

        self.prefix = prefix
        self.log_path = tmp_path / f"worker-{app_id}.log"
        self.env = {
            **os.environ,
            "SEGFLOW_KAFKA_URL": broker.url,
            "SEGFLOW_REDIS_URL": redis_server.url,
            "SEGFLOW_TOPIC_PREFIX": prefix,
            "SEGFLOW_APP_ID": app_id,
            "SEGFLOW_CLOCK": "event",
            "SEGFLOW_WEB_PORT": str(free_port()),
            "SEGFLOW_DATA_DIR": str(tmp_path / f"data-{app_id}"),
            "SEGFLOW_SESSION_TIMEOUT_SECONDS": "4",
            "SEGFLOW_PARTITIONS": "2",
            **(extra_env or {}),
        }
        self.cmd = [sys.executable, "-m", "segflow.cli", "worker"]
        self.proc = None

    @property
    def layout(self):
        """The worker's Redis key names (they depend on its partition count)."""
        from features.keys import Layout

        return Layout(int(self.env["SEGFLOW_PARTITIONS"]))

    def start(self) -> WorkerProcess:
        import subprocess

        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        return self

    def stop(self, sig=None) -> int:
        import signal
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig or signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture()
def start_worker(broker, redis_server, redis_client, tmp_path):
    """Factory: start_worker(prefix, app_id=...) -> running WorkerProcess, stopped after the test.

    Redis is flushed first (through ``redis_client``): the workers of one test
    must not see another test's watermark, deadlines or counters."""
    started = []

    def _start(prefix: str, app_id: str | None = None, **extra_env) -> WorkerProcess:
        w = WorkerProcess(broker, redis_server, tmp_path, prefix, app_id or f"{prefix}app", {k: str(v) for k, v in extra_env.items()}).start()
        started.append(w)
        return w

    yield _start
    for w in started:
        w.stop()
