"""A real HTTPS file server on 127.0.0.1 for model fetch tests, with the misbehaviours a fleet meets.

Paths (``<name>`` is a file of the web root, or a path below it):

    /<name>             the file; honours ``Range: bytes=N-`` (206) and ``If-None-Match`` (304 on its ETag)
    /no-length/<name>   the file without Content-Length (its end is the close)
    /to-http/<name>     302 to the same file on `redirect_target` (another server)
    /same/<name>        302 to ``/<name>`` on this server
    /trickle/<name>     the headers, then one byte every ``trickle_s``
    /cut/<name>         the first ``cut_after`` bytes with the full Content-Length, then a close (once)
    /auth/<name>        the file, for ``Authorization: Basic`` of ``user:secret`` only (else 401)
    /flaky/<name>       503 for the first ``fail_first`` requests, then the file

Every request is counted by path, with its headers kept (``seen``). ``make_pki`` writes a CA
and a server certificate for ``127.0.0.1``. The fixtures ``pki``, ``webroot``, ``https``,
``plain_http`` and ``keys`` (two-tier signing keys) are imported by the model test modules.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.signing_keys import FleetKeys, fleet_keys
from tests.test_mqtt_tls import _ca, _issue, _other_ca, _write_cert

USER, SECRET = "robot", "s3cr:et"


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def make_pki(directory: Path) -> Pki:
    """A test CA, a server certificate it signed (valid for 127.0.0.1), and somebody else's CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("RobotPM model server test CA")
    cert, key = _issue(directory, ca, ca_key, "models.robotpm.test", "server", server=True)
    return Pki(ca=_write_cert(ca, directory / "ca.pem"), cert=cert, key=key, other_ca=_other_ca(directory))


class ModelServer:
    """A static file server for a web root over HTTPS (or plain HTTP); see the module docstring."""

    def __init__(self, webroot: Path, pki: Pki | None) -> None:
        self.webroot = webroot
        self.requests: Counter[str] = Counter()
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.redirect_target = ""
        self.trickle_s = 0.2
        self.cut_after = 1024
        self.fail_first = 0
        self._cut_done: set[str] = set()
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.requests[self.path] += 1
                server.seen.append((self.path, dict(self.headers.items())))
                try:
                    server.handle(self)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                    return

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if pki is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(pki.cert), str(pki.key))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="test-model-server")
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def headers_of(self, path: str) -> list[dict[str, str]]:
        return [headers for seen, headers in self.seen if seen == path]

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        mode, _, rest = h.path.lstrip("/").partition("/")
        if mode not in ("no-length", "to-http", "same", "trickle", "cut", "auth", "flaky"):
            mode, rest = "", h.path.lstrip("/")
        if mode == "to-http":
            return self._redirect(h, f"{self.redirect_target}/{rest}")
        if mode == "same":
            return self._redirect(h, f"/{rest}")
        if mode == "auth" and h.headers.get("Authorization") != _basic(USER, SECRET):
            return self._status(h, 401)
        if mode == "flaky" and self.requests[h.path] <= self.fail_first:
            return self._status(h, 503)
        path = self.webroot / rest
        if not path.is_file():
            return self._status(h, 404)
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if h.headers.get("If-None-Match") == etag:
            h.send_response(304)
            h.send_header("ETag", etag)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        start = 0
        ranged = h.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged.endswith("-") and ranged[6:-1].isdigit():
            start = int(ranged[6:-1])
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("ETag", etag)
        if mode != "no-length":
            h.send_header("Content-Length", str(len(data) - start))
        else:
            h.send_header("Connection", "close")
        h.end_headers()
        body = data[start:]
        if mode == "trickle":
            for i in range(len(body)):
                if self._stop.wait(self.trickle_s):
                    return None
                h.wfile.write(body[i : i + 1])
                h.wfile.flush()
            return None
        if mode == "cut" and h.path not in self._cut_done:
            self._cut_done.add(h.path)
            h.wfile.write(body[: self.cut_after])
            h.wfile.flush()
            h.close_connection = True
            return None
        for offset in range(0, len(body), 65536):
            h.wfile.write(body[offset : offset + 65536])
        if mode == "no-length":
            h.close_connection = True
        return None

    @staticmethod
    def _redirect(h: http.server.BaseHTTPRequestHandler, location: str) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    @staticmethod
    def _status(h: http.server.BaseHTTPRequestHandler, code: int) -> None:
        h.send_response(code)
        h.send_header("Content-Length", "0")
        h.end_headers()


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll `condition()` until true, failing after a generous deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def mqtt_publish(
    port: int,
    topic: str,
    payload: bytes,
    *,
    retain: bool = True,
    ca: Path | None = None,
    user: str | None = None,
    password: str | None = None,
) -> None:
    """Publish one message with QoS 1 from a throw-away client and wait for the broker's PUBACK."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    if ca is not None:
        client.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    if user is not None:
        client.username_pw_set(user, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture(name="pki", scope="module")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and a server certificate for 127.0.0.1, once per test module."""
    return make_pki(tmp_path_factory.mktemp("https-pki"))


@pytest.fixture(name="webroot")
def webroot_fixture(tmp_path: Path) -> Path:
    """An empty web root."""
    root = tmp_path / "webroot"
    root.mkdir()
    return root


@pytest.fixture(name="https")
def https_fixture(webroot: Path, pki: Pki) -> Iterator[ModelServer]:
    """The web root served over HTTPS."""
    server = ModelServer(webroot, pki)
    yield server
    server.close()


@pytest.fixture(name="plain_http")
def plain_http_fixture(webroot: Path) -> Iterator[ModelServer]:
    """The web root served over plain HTTP."""
    server = ModelServer(webroot, None)
    yield server
    server.close()


@pytest.fixture(name="keys")
def keys_fixture(tmp_path: Path) -> FleetKeys:
    """A root key, a certified release key and the agents' trusted-keys directory."""
    return fleet_keys(tmp_path / "keys")
