"""A password-protected Redis through configuration, and the password nowhere it should not be."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis as redis_lib

from lab.embedded import RedisServer
from tests.conftest import WorkerProcess
from tests.integration.reliability_helpers import WORKER_LAYOUT
from tests.kafka_helpers import fresh_topics, read_until, send

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Pa55word"


def test_a_redis_password_comes_from_configuration_and_never_reaches_logs_or_topics(broker, tmp_path):
    server = RedisServer(data_dir=tmp_path / "redis", password=SECRET).start()
    try:
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=server.port).ping()  # it really needs the password
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        topics = fresh_topics(broker)
        worker = WorkerProcess(broker, server, tmp_path, topics.prefix, f"{topics.prefix}app").start()
        try:
            when = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
            login = {"event_id": "e1", "customer_id": "vault", "occurred_at": when, "type": "login", "success": True, "channel": "web"}
            send(broker, topics.logins, [(b"vault", json.dumps(login).encode()), (b"vault", b"{broken")])
            deadline = time.monotonic() + 90
            while client.hget(WORKER_LAYOUT.customer_key("vault"), "n") != "1":
                assert worker.proc.poll() is None, worker.log()[-2000:]
                assert time.monotonic() < deadline, worker.log()[-2000:]
                time.sleep(0.3)
            changes = read_until(broker, topics.segment_changes, lambda rs: len(rs) >= 1)
            dead = read_until(broker, topics.dead_letter, lambda rs: len(rs) >= 1)
            config = subprocess.run([sys.executable, "-m", "segflow.cli", "config"], env=worker.env, capture_output=True, text=True, timeout=60)
        finally:
            worker.stop()
        assert config.returncode == 0 and "redis_url" in config.stdout
        assert SECRET not in config.stdout + config.stderr
        assert SECRET not in worker.log()
        assert "redis://:***@127.0.0.1" in worker.log()  # the URL is logged, masked
        for record in changes + dead:
            blob = (record.value or b"") + b"".join(v for _, v in record.headers or [])
            assert SECRET.encode() not in blob
        stats = client.hgetall("segflow:stats")
        assert all(SECRET not in f"{k}{v}" for k, v in stats.items())
    finally:
        server.stop()
