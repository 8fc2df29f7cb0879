"""Kafka connection security from :class:`~streams.settings.Settings`, for every client segflow builds.

One source of truth for ``kafka_security_protocol``, ``kafka_sasl_mechanism``,
``kafka_username``, ``kafka_password`` and ``kafka_ca_file``:

* :func:`kafka_python_config`: keyword arguments for kafka-python's
  ``KafkaAdminClient``/``KafkaProducer``/``KafkaConsumer`` (topic creation,
  ``segflow produce``/``simulate``, ``segflow subscribe``).
* :func:`faust_credentials`: Faust's ``broker_credentials`` (the worker's
  aiokafka consumer and producer).

Both use the TLS context of :func:`ssl_context` (verifies the broker's
certificate and host name against ``kafka_ca_file``, or the system CAs).

>>> from streams.settings import Settings
>>> kafka_python_config(Settings())
{}
>>> c = kafka_python_config(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
...                                  kafka_username="app", kafka_password="pw"))
>>> sorted(c), c["sasl_plain_password"]
(['sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol'], 'pw')
>>> kafka_python_config(Settings(kafka_security_protocol="SASL_SSL"))
Traceback (most recent call last):
...
streams.kafka_security.KafkaSecurityError: SASL_SSL needs kafka_username and kafka_password (SEGFLOW_KAFKA_USERNAME, SEGFLOW_KAFKA_PASSWORD)
"""

from __future__ import annotations

import ssl
from typing import Any

from streams.settings import Settings


class KafkaSecurityError(ValueError):
    """Security settings that cannot work together."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context for SSL and SASL_SSL, else None."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return ssl.create_default_context(cafile=str(settings.kafka_ca_file) if settings.kafka_ca_file else None)


def _sasl_credentials(settings: Settings) -> tuple[str, str]:
    if not settings.kafka_username or settings.kafka_password is None:
        raise KafkaSecurityError(f"{settings.kafka_security_protocol} needs kafka_username and kafka_password (SEGFLOW_KAFKA_USERNAME, SEGFLOW_KAFKA_PASSWORD)")
    return settings.kafka_username, settings.kafka_password.get_secret_value()


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """kafka-python client keyword arguments; empty for PLAINTEXT. Holds the password: never log it."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security_protocol": protocol}
    context = ssl_context(settings)
    if context is not None:
        config["ssl_context"] = context
    if protocol.startswith("SASL"):
        username, password = _sasl_credentials(settings)
        config.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=username, sasl_plain_password=password)
    return config


def faust_credentials(settings: Settings):
    """Faust ``broker_credentials``: None (PLAINTEXT), an SSL context, or SASL credentials."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return context
    username, password = _sasl_credentials(settings)
    # Faust picks SASL_SSL when an ssl_context is given, SASL_PLAINTEXT otherwise.
    return faust.SASLCredentials(username=username, password=password, ssl_context=context, mechanism=settings.kafka_sasl_mechanism)
