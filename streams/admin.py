"""Topic administration with kafka-python: create what segflow needs, idempotently."""

from __future__ import annotations

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.topics import Topics


def bootstrap_of(kafka_url: str) -> str:
    """``kafka://h1:9092;kafka://h2:9092`` -> ``h1:9092,h2:9092`` (kafka-python's form).

    >>> bootstrap_of("kafka://127.0.0.1:9092;kafka://b:9093")
    '127.0.0.1:9092,b:9093'
    """
    hosts = []
    for part in kafka_url.replace(",", ";").split(";"):
        part = part.strip()
        if part:
            hosts.append(part.split("://", 1)[-1])
    return ",".join(hosts)


def ensure_topics(bootstrap: str, topics: Topics, partitions: int, client_kwargs: dict | None = None) -> list[str]:
    """Create every segflow topic that does not exist yet; return the ones created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="segflow-admin", **(client_kwargs or {}))
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, partitions, 1, topic_configs=topics.config_of(name)) for name in (*topics.inputs, *topics.outputs) if name not in existing]
        created = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()
