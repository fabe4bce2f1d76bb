"""A real S3-protocol server on loopback for the tests: moto's server mode, as s3fs's own suite does.

- `s3_server` (session): `moto.server.ThreadedMotoServer` on 127.0.0.1 and a free port, with fake
  credentials in the environment (and every variable that could point elsewhere removed).
- `s3` (function): a clean server (`POST /moto-api/reset`), one fresh bucket, s3fs's instance cache
  cleared; gives the bucket's name, URLs and the `storage_options` that reach the server.
- `FaultProxy`: a tiny HTTP proxy on 127.0.0.1 in front of the server that answers chosen requests
  with an S3 error (503 SlowDown, 500 InternalError, 403 AccessDenied, ...) or drops the connection,
  so real storage calls meet real failures.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import pytest

TEST_ACCESS_KEY_ID = "vitonprep-test-access-key"
TEST_SECRET_ACCESS_KEY = "vitonprep-test-secret-key"  # moto accepts any credentials
# Whatever might send requests elsewhere or change how credentials are found.
UNSET_ENV = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "VITONPREP_S3_ENDPOINT_URL", "VITONPREP_S3_PROFILE", "FSSPEC_S3_ENDPOINT_URL",
    "FSSPEC_S3_KEY", "FSSPEC_S3_SECRET", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on 127.0.0.1, for the whole session."""
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in (*UNSET_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                     "AWS_DEFAULT_REGION", "NO_PROXY", "no_proxy")}  # fmt: skip
    for name in UNSET_ENV:
        os.environ.pop(name, None)
    os.environ["AWS_ACCESS_KEY_ID"] = TEST_ACCESS_KEY_ID
    os.environ["AWS_SECRET_ACCESS_KEY"] = TEST_SECRET_ACCESS_KEY
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
        response.read()


def s3_client(endpoint: str):
    """A plain boto3 client on the server, for arranging and inspecting buckets behind our back."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@dataclass
class Bucket:
    name: str
    endpoint: str
    storage_options: dict[str, Any]
    client: Any = field(repr=False)

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.name}", *parts])

    def keys(self, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        return [
            c["Key"] for page in paginator.paginate(Bucket=self.name, Prefix=prefix) for c in page.get("Contents", [])
        ]

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def put_many(self, keys: list[str], data: bytes = b"x") -> None:
        """Many objects at once, straight into the in-process server's backend (HTTP PUTs to moto take
        ~20 ms each); reading them back still goes over HTTP."""
        backend = moto_backend()
        for key in keys:
            backend.put_object(self.name, key, data)


def moto_backend():
    """The S3 backend that the in-process `ThreadedMotoServer` serves (moto shares its state)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def clear_s3fs_caches() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3(s3_server) -> Iterator[Bucket]:
    """A clean moto server with one empty bucket; `storage_options` reach it."""
    reset_moto(s3_server)
    clear_s3fs_caches()
    name = f"vitonprep-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3_server)
    client.create_bucket(Bucket=name)
    yield Bucket(name, s3_server, {"endpoint_url": s3_server}, client)
    clear_s3fs_caches()


# ---------------------------------------------------------------------------------------------
# Fault injection

Rule = Callable[[str, str], bool]  # (method, path with query) -> does this rule apply


@dataclass
class Fault:
    when: Rule
    times: int | None  # None: forever
    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."
    drop: bool = False  # close the connection without answering


def error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
    ).encode()


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to `upstream` unless a fault rule takes the request."""

    HOP_HEADERS = frozenset(
        {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}
    )

    def __init__(self, upstream: str):
        self.upstream = upstream.split("://", 1)[1].rstrip("/")
        self.requests: list[tuple[str, str]] = []  # every request received, in order
        self.injected: list[tuple[str, str, int | str]] = []  # the ones answered by a fault
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._take(self.command, self.path)
                if fault is not None and fault.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None:
                    payload = b"" if self.command == "HEAD" else error_xml(fault.code, fault.message)
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=30)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in proxy.HOP_HEADERS and name.lower() != "content-length":
                            upstream.putheader(name, value)
                    if body or self.command in ("PUT", "POST"):
                        upstream.putheader("Content-Length", str(len(body)))
                    upstream.endheaders(body or None)
                    response = upstream.getresponse()
                    payload = response.read()
                    self.send_response(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() not in proxy.HOP_HEADERS and name.lower() != "content-length":
                            self.send_header(name, value)
                    length = response.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for fault in self._faults:
                if fault.times != 0 and fault.when(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                    self.injected.append((method, path, "drop" if fault.drop else fault.status))
                    return fault
        return None

    def fail(self, times: int | None, status: int = 503, code: str = "SlowDown",
             message: str = "Please reduce your request rate.", when: Rule | None = None) -> None:  # fmt: skip
        """Answer the next `times` matching requests (None: all of them) with this S3 error."""
        with self._lock:
            self._faults.append(Fault(when or (lambda method, path: True), times, status, code, message))

    def drop(self, times: int | None, when: Rule | None = None) -> None:
        """Close the connection, unanswered, on the next `times` matching requests."""
        with self._lock:
            self._faults.append(Fault(when or (lambda method, path: True), times, drop=True))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.injected.clear()

    def count(self, method: str | None = None, contains: str = "") -> int:
        """How many requests reached the proxy (of `method`, with `contains` in the path)."""
        with self._lock:
            return sum((method is None or m == method) and contains in p for m, p in self.requests)
