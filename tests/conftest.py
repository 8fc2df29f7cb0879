"""Shared fixtures: a real Redis server and a real Kafka-protocol broker, started
by the tests on free loopback ports and stopped at the end of the session."""

from __future__ import annotations

import pytest
import redis as redis_lib

from streams.embedded import Broker, RedisServer


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
def broker(tmp_path_factory):
    b = Broker(log_path=tmp_path_factory.mktemp("broker") / "broker.log").start()
    yield b
    b.stop()
