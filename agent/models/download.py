"""HTTP(S) downloads that end: a total deadline, a stop from another thread, resume, one origin.

`Downloader` speaks ``http.client`` directly, so it holds the socket and can cut it:

- **deadline**: each download has a total deadline (``agent.model.download_deadline_s``); a
  timer shuts the socket when it passes, so a server trickling one byte a second cannot keep
  it (or the agent's shutdown) waiting. ``download_timeout_s`` still bounds each connect and read;
- **stop**: `abort` (from the fetcher's `stop`) shuts the socket of the download in progress;
- **resume**: a download that broke off leaves its bytes; the next attempt asks for the rest
  with ``Range: bytes=<have>-`` and appends on ``206``, or starts over on ``200``. The sha256
  of the whole file is checked by the caller in any case;
- **redirects** are followed (at most `MAX_REDIRECTS`) only to the same origin (scheme, host,
  port): a bundle server cannot send the agent elsewhere, and never from https to http;
- **user info** in a URL (``https://user:secret@host/…``) becomes HTTP Basic authentication,
  over https only; in an http:// URL it is refused, since it would cross the network in clear.

Errors are `FetchFailedError` (worth another try: network, server, deadline, a certificate
the trust store refuses) or `FetchRefusedError` (the URL or the server breaks a rule: scheme,
origin, size).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from agent.errors import FetchFailedError, FetchRefusedError

MAX_REDIRECTS: Final = 5
_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str
    authorization: str | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


@dataclass(frozen=True, slots=True)
class Fetched:
    """A small GET's answer: status (200 or 304), body, and the ETag to send next time."""

    status: int
    body: bytes
    etag: str | None


def redact_url(url: str) -> str:
    """`url` without user info, query and fragment, for logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable url>"
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


class Downloader:
    """Downloads with a deadline, resume and same-origin redirects; see the module docstring."""

    def __init__(
        self,
        *,
        context: ssl.SSLContext,
        schemes: frozenset[str],
        stall_timeout_s: float,
        user_agent: str = "robotpm-agent",
    ) -> None:
        self._context = context
        self._schemes = schemes
        self._stall_timeout_s = stall_timeout_s
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        self._cut: str | None = None  # why the current request was cut off
        self._aborted = False

    def abort(self) -> None:
        """Cut the request in progress and every later one (the agent is stopping)."""
        with self._lock:
            self._aborted = True
        self._cut_off("the agent is stopping")

    def download(
        self,
        url: str,
        path: Path,
        *,
        limit: int,
        deadline_s: float,
        on_chunk: Callable[[int], None] | None = None,
    ) -> int:
        """Fetch `url` into `path`, resuming what `path` already holds; returns its final size.

        More than `limit` bytes in all is refused (cut off while streaming). `on_chunk` is
        told the size so far after each chunk is written.
        """
        have = path.stat().st_size if path.exists() else 0
        if have >= limit:
            path.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self._request(url, headers, deadline_s) as response:
            if response.status == 416:  # what we hold is not a prefix of the file any more
                path.unlink(missing_ok=True)
                raise FetchFailedError("the server refused to resume (HTTP 416); starting over next time")
            if response.status == 206 and _range_start(response) == have:
                mode, total = "ab", have
            elif response.status == 200:
                mode, total = "wb", 0
            else:
                raise FetchFailedError(f"HTTP {response.status} {response.reason}")
            declared = response.getheader("Content-Length")
            if declared is not None and declared.isdigit() and total + int(declared) > limit:
                raise FetchRefusedError(
                    f"server sends {total + int(declared)} bytes, more than {limit} allowed"
                )
            with path.open(mode) as out:
                while True:
                    chunk = self._read(response)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > limit:
                        out.truncate(0)
                        raise FetchRefusedError(f"download cut off: more than {limit} bytes")
                    out.write(chunk)
                    if on_chunk is not None:
                        out.flush()
                        on_chunk(total)
            self._raise_if_cut()
        return total

    def get(self, url: str, *, limit: int, deadline_s: float, etag: str | None = None) -> Fetched:
        """A small GET (at most `limit` bytes), conditional on `etag` (``If-None-Match``)."""
        headers = {"If-None-Match": etag} if etag else {}
        with self._request(url, headers, deadline_s) as response:
            if response.status == 304:
                return Fetched(304, b"", etag)
            if response.status != 200:
                raise FetchFailedError(f"HTTP {response.status} {response.reason}")
            chunks: list[bytes] = []
            size = 0
            while chunk := self._read(response):
                size += len(chunk)
                if size > limit:
                    raise FetchRefusedError(f"more than {limit} bytes")
                chunks.append(chunk)
            self._raise_if_cut()
            return Fetched(200, b"".join(chunks), response.getheader("ETag"))

    # -- one request ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _request(
        self, url: str, headers: dict[str, str], deadline_s: float
    ) -> Iterator[http.client.HTTPResponse]:
        target = self._target(url)
        origin = target.origin
        deadline = time.monotonic() + deadline_s
        with self._lock:
            if self._aborted:
                raise FetchFailedError("the agent is stopping")
            self._cut = None
        timer = threading.Timer(
            deadline_s, self._cut_off, args=(f"the download deadline of {deadline_s:g}s passed",)
        )
        timer.daemon = True
        timer.start()
        try:
            for _ in range(MAX_REDIRECTS + 1):
                response = self._send(target, headers, deadline)
                if response.status not in _REDIRECTS:
                    yield response
                    return
                location = response.getheader("Location") or ""
                self._close()
                try:
                    target = self._target(urljoin(_url_of(target), location))
                except FetchRefusedError as exc:
                    raise FetchRefusedError(f"redirect to {redact_url(location)} refused: {exc}") from None
                if target.origin != origin:
                    raise FetchRefusedError(
                        f"redirect to another origin refused ({redact_url(location)}): only "
                        f"{origin[0]}://{origin[1]}:{origin[2]} may serve it"
                    )
            raise FetchFailedError(f"more than {MAX_REDIRECTS} redirects")
        except (OSError, http.client.HTTPException) as exc:
            self._raise_if_cut()
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise FetchFailedError(f"server certificate refused: {exc.verify_message}") from None
            raise FetchFailedError(f"download broken off: {exc or type(exc).__name__}") from None
        finally:
            timer.cancel()
            timer.join()
            self._close()

    def _send(self, target: _Target, headers: dict[str, str], deadline: float) -> http.client.HTTPResponse:
        timeout = max(0.001, min(self._stall_timeout_s, deadline - time.monotonic()))
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            connection = http.client.HTTPSConnection(
                target.host, target.port, timeout=timeout, context=self._context
            )
        else:
            connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        with self._lock:
            self._connection = connection
        self._raise_if_cut()
        all_headers = {"User-Agent": self._user_agent, "Accept-Encoding": "identity", **headers}
        if target.authorization:
            all_headers["Authorization"] = target.authorization
        connection.request("GET", target.path, headers=all_headers)
        self._raise_if_cut()
        return connection.getresponse()

    def _target(self, url: str) -> _Target:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FetchRefusedError(f"URL cannot be parsed: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in self._schemes:
            allowed = " or ".join(sorted(f"{s}://" for s in self._schemes))
            raise FetchRefusedError(f"URL scheme {parts.scheme or '(none)'!r} refused: only {allowed}")
        if not parts.hostname:
            raise FetchRefusedError("URL has no host")
        authorization = None
        if parts.username is not None or parts.password is not None:
            if scheme != "https":
                raise FetchRefusedError(
                    "user name and password in an http:// URL would cross the network in clear text: refused"
                )
            user_pass = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(user_pass.encode()).decode("ascii")
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        return _Target(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], path, authorization)

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        try:
            return response.read1(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            self._raise_if_cut()
            raise FetchFailedError(f"download broken off: {exc or type(exc).__name__}") from None

    def _cut_off(self, reason: str) -> None:
        with self._lock:
            connection, self._cut = self._connection, reason
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the raw socket: wakes a blocked read

    def _raise_if_cut(self) -> None:
        with self._lock:
            reason = self._cut
        if reason is not None:
            raise FetchFailedError(reason)

    def _close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _url_of(target: _Target) -> str:
    return f"{target.scheme}://{target.host}:{target.port}{target.path}"


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """The first byte of a ``Content-Range: bytes a-b/n`` answer, or None."""
    value = response.getheader("Content-Range") or ""
    unit, _, rest = value.partition(" ")
    start = rest.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else None
