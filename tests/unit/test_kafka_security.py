"""Kafka security settings -> client arguments, and the SCRAM server of the embedded broker's secure front
against the SCRAM clients segflow really uses (kafka-python's and aiokafka's)."""

from __future__ import annotations

import pytest
from aiokafka.conn import ScramAuthenticator
from kafka.net.sasl.scram import ScramClient

from streams.kafka_security import KafkaSecurityError, faust_credentials, kafka_python_config, ssl_context
from streams.settings import Settings
from tests.secure_front import (
    AuthenticationFailed,
    ScramServer,
    authenticate_request_bytes,
    authenticate_response,
    parse_request,
    scram_credential,
)

SASL_SSL = dict(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_username="app", kafka_password="pw")


def test_plaintext_adds_nothing():
    settings = Settings()
    assert kafka_python_config(settings) == {} and faust_credentials(settings) is None and ssl_context(settings) is None


def test_sasl_ssl_gives_both_clients_the_same_user_mechanism_and_a_verifying_tls_context():
    settings = Settings(**SASL_SSL)
    config = kafka_python_config(settings)
    assert config["security_protocol"] == "SASL_SSL" and config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("app", "pw")
    assert config["ssl_context"].check_hostname and config["ssl_context"].verify_mode.name == "CERT_REQUIRED"
    credentials = faust_credentials(settings)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("app", "pw") and credentials.ssl_context is not None
    assert "pw" not in repr(credentials)


def test_ssl_alone_and_sasl_plaintext():
    assert set(kafka_python_config(Settings(kafka_security_protocol="SSL"))) == {"security_protocol", "ssl_context"}
    plain = kafka_python_config(Settings(**{**SASL_SSL, "kafka_security_protocol": "SASL_PLAINTEXT"}))
    assert "ssl_context" not in plain and plain["security_protocol"] == "SASL_PLAINTEXT"
    assert faust_credentials(Settings(**{**SASL_SSL, "kafka_security_protocol": "SASL_PLAINTEXT"})).protocol.value == "SASL_PLAINTEXT"


def test_sasl_without_credentials_is_refused_by_both():
    settings = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_username="app")
    with pytest.raises(KafkaSecurityError, match="kafka_password"):
        kafka_python_config(settings)
    with pytest.raises(KafkaSecurityError):
        faust_credentials(settings)


CREDENTIALS = {"app": scram_credential("s3cret")}


def kafka_python_exchange(user: str, password: str) -> None:
    client, server = ScramClient(user, password, "SCRAM-SHA-512"), ScramServer(CREDENTIALS)
    client.process_server_first_message(server.step(client.first_message()))
    client.process_server_final_message(server.step(client.final_message()))  # the client checks the server's signature


def aiokafka_exchange(user: str, password: str) -> None:
    client, server = (
        ScramAuthenticator(loop=None, sasl_plain_password=password, sasl_plain_username=user, sasl_mechanism="SCRAM-SHA-512"),
        ScramServer(CREDENTIALS),
    )
    steps = client.authenticator_scram()
    token, _ = next(steps)
    token, _ = steps.send(server.step(token))
    with pytest.raises(StopIteration):
        steps.send(server.step(token))


@pytest.mark.parametrize("exchange", [kafka_python_exchange, aiokafka_exchange])
def test_scram_sha_512_accepts_the_password_and_refuses_others(exchange):
    exchange("app", "s3cret")
    for user, password in [("app", "s3cret "), ("app", "S3cret"), ("app", ""), ("someone", "s3cret")]:
        with pytest.raises(AuthenticationFailed, match="invalid-proof"):
            exchange(user, password)


def test_a_replayed_or_tampered_final_message_is_refused():
    client, server = ScramClient("app", "s3cret", "SCRAM-SHA-512"), ScramServer(CREDENTIALS)
    client.process_server_first_message(server.step(client.first_message()))
    final = client.final_message()
    tampered = final[:-8] + (b"AAAAAAA=" if not final.endswith(b"AAAAAAA=") else b"BBBBBBB=")
    with pytest.raises(AuthenticationFailed):
        server.final(tampered)
    other = ScramServer(CREDENTIALS)  # same messages against a fresh server nonce
    other.first(client.first_message())
    with pytest.raises(AuthenticationFailed):
        other.final(final)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_sasl_authenticate_framing_round_trips_through_kafka_python(version):
    from kafka.protocol.sasl import SaslAuthenticateRequest, SaslAuthenticateResponse

    request = SaslAuthenticateRequest(auth_bytes=b"n,,n=app,r=x", version=version)
    request.with_header(correlation_id=7, client_id="c")
    api_key, got_version, correlation_id, body = parse_request(bytes(request.encode(header=True)))
    assert (api_key, got_version, correlation_id) == (36, version, 7)
    assert authenticate_request_bytes(version, body) == b"n,,n=app,r=x"
    payload = authenticate_response(7, version, 58, "denied", b"e=x")
    decoded = SaslAuthenticateResponse.decode(payload, version=version, header=True)
    assert (decoded.error_code, decoded.error_message, decoded.auth_bytes) == (58, "denied", b"e=x")
