"""The worker against a broker that only speaks TLS and requires SASL SCRAM-SHA-512, configured
through SEGFLOW_* variables alone; the passwords nowhere they should not be.

The broker is the embedded Tansu behind :mod:`tests.secure_front` (Tansu 0.6.0
can do neither TLS nor keep SCRAM users itself; that module says why). Redis
is password-protected; Redis over TLS is not tested: the vendored Valkey server
is built without TLS ("Failed finding TLS support").
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis as redis_lib
from kafka import KafkaAdminClient

from lab.embedded import RedisServer
from streams.kafka_security import faust_credentials, kafka_python_config
from streams.settings import Settings
from streams.topics import Topics
from tests.conftest import WorkerProcess
from tests.integration.reliability_helpers import WORKER_LAYOUT
from tests.kafka_helpers import read_until
from tests.secure_front import SecuredBroker
from tests.tls_helpers import make_pki

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

KAFKA_SECRET = "kafka-Pa55-w0rd-7e1"
REDIS_SECRET = "redis-Pa55-w0rd-9c4"
USER = "segflow-worker"


def refused_by_kafka_python(bootstrap: str, config: dict, caplog) -> str:
    """Connect an admin client with ``config``; return what refused it (it must be refused)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kafka"):
        with pytest.raises(Exception) as refused:
            KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=4000, **config).close()
    return f"{refused.value} | " + " | ".join(r.getMessage() for r in caplog.records)


def refused_by_aiokafka(bootstrap: str, settings: Settings, caplog) -> str:
    """The worker's client: aiokafka with the arguments Faust derives from faust_credentials()."""
    from aiokafka import AIOKafkaProducer
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    async def connect() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=4000, **credentials_to_aiokafka_auth(faust_credentials(settings)))
        try:
            await producer.start()
        finally:
            await producer.stop()

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="aiokafka"):
        with pytest.raises(Exception) as refused:
            asyncio.run(connect())
    return f"{refused.value} | " + " | ".join(r.getMessage() for r in caplog.records)


def test_the_worker_over_sasl_ssl_applies_events_and_no_password_leaks(tmp_path, caplog):
    pki = make_pki(tmp_path / "pki")
    broker = SecuredBroker(log_path=tmp_path / "broker.log", cert=pki["cert"], key=pki["key"], users={USER: KAFKA_SECRET}).start()
    server = RedisServer(data_dir=tmp_path / "redis", password=REDIS_SECRET).start()
    try:
        secure = dict(
            kafka_url=broker.url, kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_username=USER, kafka_ca_file=pki["ca"]
        )
        settings = Settings(**secure, kafka_password=KAFKA_SECRET)
        client_config = kafka_python_config(settings)

        # The listener is TLS with a certificate our CA signed for 127.0.0.1 ...
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw:
            with ssl.create_default_context(cafile=str(pki["ca"])).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert dict(x[0] for x in tls.getpeercert()["subject"])["commonName"] == "localhost"
        # ... which a client trusting only the system CAs refuses, and a plaintext client cannot speak to;
        assert "CERTIFICATE_VERIFY_FAILED" in refused_by_kafka_python(
            broker.bootstrap, kafka_python_config(Settings(**{**secure, "kafka_ca_file": None}, kafka_password=KAFKA_SECRET)), caplog
        )
        refused_by_kafka_python(broker.bootstrap, {}, caplog)
        # TLS without SASL gets nothing but ApiVersions; a wrong password or user is refused by the SCRAM check,
        # in kafka-python (topic creation, producer) and in aiokafka as Faust configures it (the worker).
        assert refused_by_kafka_python(broker.bootstrap, kafka_python_config(Settings(**{**secure, "kafka_security_protocol": "SSL"})), caplog)
        for name, password in [(USER, "wrong-" + KAFKA_SECRET), ("nobody", KAFKA_SECRET)]:
            bad = Settings(**{**secure, "kafka_username": name}, kafka_password=password)
            assert "SaslAuthenticationFailed" in refused_by_kafka_python(broker.bootstrap, kafka_python_config(bad), caplog)
            assert "SaslAuthenticationFailed" in refused_by_aiokafka(broker.bootstrap, bad, caplog)
        KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10_000, **client_config).close()  # the right one is let in

        # The worker, configured only through the environment.
        prefix = "tls-"
        topics = Topics(prefix)
        security_env = {
            "SEGFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SEGFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "SEGFLOW_KAFKA_USERNAME": USER,
            "SEGFLOW_KAFKA_PASSWORD": KAFKA_SECRET,
            "SEGFLOW_KAFKA_CA_FILE": str(pki["ca"]),
        }
        worker = WorkerProcess(broker, server, tmp_path, prefix, "tls-app", security_env).start()
        try:
            when = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
            events = [
                {"event_id": "t1", "customer_id": "vault", "occurred_at": when.isoformat(), "type": "login", "success": True, "channel": "web"},
                {
                    "event_id": "t2",
                    "customer_id": "vault",
                    "occurred_at": (when + timedelta(seconds=30)).isoformat(),
                    "type": "purchase",
                    "order_id": "o1",
                    "amount": "42.00",
                    "currency": "EUR",
                    "items": [{"product_id": "p1", "category": "books", "quantity": 1, "unit_price": "42.00"}],
                },
            ]
            lines = [json.dumps(e) for e in events] + [json.dumps({"family": "login", "event": "{broken"})]
            (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
            # `segflow produce` over SASL_SSL (it creates missing topics first, as the worker does).
            produce = subprocess.run(
                [sys.executable, "-m", "segflow.cli", "produce", str(tmp_path / "events.jsonl")], env=worker.env, capture_output=True, text=True, timeout=120
            )
            assert produce.returncode == 0, produce.stderr[-2000:]
            assert "sent 3" in produce.stderr, produce.stderr[-2000:]

            client = redis_lib.Redis.from_url(server.url, decode_responses=True)
            deadline = time.monotonic() + 120
            while client.hget(WORKER_LAYOUT.customer_key("vault"), "n") != "2":
                assert worker.proc.poll() is None, worker.log()[-3000:]
                assert time.monotonic() < deadline, worker.log()[-3000:]
                time.sleep(0.3)
            changes = read_until(broker, topics.segment_changes, lambda rs: any(json.loads(r.value)["customer_id"] == "vault" for r in rs), **client_config)
            dead = read_until(broker, topics.dead_letter, lambda rs: len(rs) >= 1, **client_config)
            config = subprocess.run([sys.executable, "-m", "segflow.cli", "config"], env=worker.env, capture_output=True, text=True, timeout=60)
        finally:
            worker.stop()

        # Applied: the features are in Redis, the segment change and the dead letter on their topics.
        features = client.hgetall(WORKER_LAYOUT.customer_key("vault"))
        assert (features["n"], features["np"], features["rv"], features["c:books"]) == ("2", "1", "4200", "1")
        assert {json.loads(r.value)["customer_id"] for r in changes} == {"vault"}
        assert [r.value for r in dead] == [b"{broken"]

        # Both client libraries of the worker went through TLS and SCRAM as the configured user:
        # kafka-python (topic creation) and aiokafka (Faust's consumer and producer).
        log = worker.log()
        assert "KafkaSSLTransport" in log and f"Authenticated as {USER} via SASL / SCRAM-SHA-512" in log
        assert f"aiokafka.conn INFO: Authenticated as {USER} via SCRAM-SHA-512" in log

        # No password anywhere it should not be.
        assert config.returncode == 0 and "kafka_password" in config.stdout and "**********" in config.stdout
        for secret in (KAFKA_SECRET, REDIS_SECRET):
            for where, text in [
                ("worker log", log),
                ("segflow produce output", produce.stdout + produce.stderr),
                ("segflow config output", config.stdout + config.stderr),
                ("broker log", (tmp_path / "broker.log").read_text(errors="replace")),
            ]:
                assert secret not in text, f"{where} shows a password"
            for record in changes + dead:
                blob = (record.key or b"") + (record.value or b"") + b"".join(k.encode() + (v or b"") for k, v in record.headers or [])
                assert secret.encode() not in blob
            assert all(secret not in f"{k}{v}" for k, v in client.hgetall("segflow:stats").items())
        assert "redis://:***@127.0.0.1" in log
    finally:
        server.stop()
        broker.stop()
