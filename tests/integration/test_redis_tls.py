"""The worker against Redis over TLS (``rediss://``) with a password, given only
through ``SEGFLOW_REDIS_URL``. The vendored Valkey has no TLS, so this runs
Debian's Redis 7.0 (package ``redis-tools``, which `.ci/run` installs): its one
binary is a server when it is not called ``redis-check-rdb``."""

from __future__ import annotations

import json
import shutil
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis as redis_lib

from lab.embedded import RedisServer
from tests.conftest import WorkerProcess
from tests.integration.reliability_helpers import WORKER_LAYOUT
from tests.kafka_helpers import fresh_topics, send
from tests.tls_helpers import make_pki

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SECRET = "redis-tls-Pa55-3f1"


def redis_with_tls(folder: Path) -> str:
    found = shutil.which("redis-check-rdb")
    assert found, "Redis with TLS not installed: `apt-get install redis-tools` (.ci/run does)"
    folder.mkdir()
    server = folder / "redis-server"
    server.symlink_to(found)
    return str(server)


def test_the_worker_over_rediss_applies_events_and_hides_the_password(broker, tmp_path):
    pki = make_pki(tmp_path / "pki")
    server = RedisServer(
        data_dir=tmp_path / "redis", password=SECRET, binary=redis_with_tls(tmp_path / "bin"), tls_cert=pki["cert"], tls_key=pki["key"], tls_ca=pki["ca"]
    ).start()
    try:
        assert server.url.startswith(f"rediss://:{SECRET}@127.0.0.1:")
        # Plaintext is not served, and a client that does not trust the CA is refused.
        with pytest.raises(redis_lib.ConnectionError):
            redis_lib.Redis(port=server.port, password=SECRET, socket_timeout=3).ping()
        with pytest.raises(redis_lib.ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            redis_lib.Redis(port=server.port, password=SECRET, ssl=True, ssl_cert_reqs=ssl.CERT_REQUIRED, socket_timeout=3).ping()
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        assert client.ping()

        topics = fresh_topics(broker)
        worker = WorkerProcess(broker, server, tmp_path, topics.prefix, f"{topics.prefix}app").start()
        try:
            when = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
            login = {"event_id": "r1", "customer_id": "locked", "occurred_at": when.isoformat(), "type": "login", "success": True, "channel": "web"}
            send(broker, topics.logins, [(b"locked", json.dumps(login).encode())])
            deadline = time.monotonic() + 90
            while client.hget(WORKER_LAYOUT.customer_key("locked"), "n") != "1" or not client.hget(WORKER_LAYOUT.segments_key("locked"), "lifecycle"):
                assert worker.proc.poll() is None and time.monotonic() < deadline, worker.log()[-3000:]
                time.sleep(0.3)
        finally:
            worker.stop()
        log = worker.log()
        assert SECRET not in log and "rediss://:***@127.0.0.1" in log
        assert all(SECRET not in f"{k}{v}" for k, v in client.hgetall("segflow:stats").items())
    finally:
        server.stop()
