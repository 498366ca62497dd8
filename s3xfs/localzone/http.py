"""HTTP/1.1 on a raw socket: parse requests, write responses, stream file bodies with sendfile.

Written for throughput on loopback rather than generality: headers and small bodies leave in one
``sendall`` (no Nagle stall, TCP_NODELAY is set on the socket), large bodies go straight from
the page cache with ``os.sendfile``, and parsing avoids ``email.parser``.
"""

from __future__ import annotations

import os
import re
import select
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import BinaryIO
from urllib.parse import unquote

MAX_HEADER_BYTES = 64 * 1024  # S3 itself rejects request headers beyond 8 KiB of user metadata
MAX_HEADERS = 200
SMALL_FILE_BODY = 256 * 1024  # below this a file body is read and sent with the headers in one write
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 5.6.2: method names and header names

REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 206: "Partial Content", 304: "Not Modified",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 411: "Length Required", 412: "Precondition Failed",
    416: "Requested Range Not Satisfiable", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
}


class BadRequest(Exception):
    """The bytes on the wire are not an HTTP/1.1 request we can answer; close after a 400."""


@dataclass
class Request:
    method: str
    target: str
    raw_path: str
    raw_query: str
    version: str
    headers: dict[str, str]
    client: str

    @property
    def path(self) -> str:
        """The decoded path (S3 keys are taken from it)."""
        return unquote(self.raw_path, errors="strict")

    def query(self) -> dict[str, str]:
        """Decoded query parameters; ``+`` stays a plus sign, as S3 reads it."""
        params: dict[str, str] = {}
        if not self.raw_query:
            return params
        for part in self.raw_query.split("&"):
            if not part:
                continue
            name, _, value = part.partition("=")
            params[unquote(name)] = unquote(value)
        return params

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # A file body: (fd, offset, count) pieces and their total length; closed by `on_close`.
    pieces: Iterator[tuple[int, int, int]] | None = None
    length: int | None = None
    on_close: Callable[[], None] | None = None
    head_only: bool = False  # HEAD: send Content-Length of the body that GET would return, no body
    error_code: str | None = None  # S3 error code, for stats and the access log
    drop_after: int | None = None  # fault injection: reset the connection after this many body bytes

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()
            self.on_close = None


def read_request(rfile: BinaryIO, client: str) -> Request | None:
    """The next request on the connection, or None when the client closed it cleanly."""
    line = rfile.readline(MAX_HEADER_BYTES + 1)
    while line in (b"\r\n", b"\n"):  # tolerate stray blank lines between requests (RFC 9112 2.2)
        line = rfile.readline(MAX_HEADER_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_HEADER_BYTES:
        raise BadRequest("request line too long")
    if not line.endswith(b"\n"):
        raise BadRequest("connection closed inside the request line")
    try:
        method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ")
    except ValueError:
        raise BadRequest("malformed request line") from None
    if not _TOKEN.fullmatch(method):  # RFC 9110 9.1: a method is a non-empty token
        raise BadRequest("malformed request method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(f"unsupported protocol version {version!r}")
    headers: dict[str, str] = {}
    total = len(line)
    while True:
        line = rfile.readline(MAX_HEADER_BYTES + 1)
        total += len(line)
        if total > MAX_HEADER_BYTES or len(headers) > MAX_HEADERS:
            raise BadRequest("request headers too large")
        if not line:
            raise BadRequest("connection closed inside the request headers")
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header line")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    if "content-length" in headers:
        headers["content-length"] = _single_content_length(headers["content-length"])
    path, _, query = target.partition("?")
    if not path.startswith("/"):
        if path.startswith("http://") or path.startswith("https://"):  # absolute-form target
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        else:
            raise BadRequest("request target must start with '/'")
    return Request(method, target, path, query, version, headers, client)


def _single_content_length(value: str) -> str:
    """RFC 9112 6.3: a Content-Length repeated with one same value (several header lines, or a
    list) stands for that value; S3 accepts it (rclone's presigned PUTs arrive so), and
    SigV4 then signs the single value. Differing values are an unrecoverable framing error."""
    values = {part.strip() for part in value.split(",")}
    if len(values) != 1:
        raise BadRequest("conflicting Content-Length values")
    return values.pop()


def http_date(timestamp: float | None = None) -> str:
    return formatdate(timestamp, usegmt=True)


def write_response(sock: socket.socket, response: Response, keep_alive: bool) -> int:
    """Send ``response``; returns the number of body bytes sent."""
    status = response.status
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    body = response.body
    if response.pieces is not None and response.length is not None and response.length <= SMALL_FILE_BODY and not response.head_only:
        body = b"".join(os.pread(fd, count, offset) for fd, offset, count in response.pieces)
        response.pieces = None
    length = response.length if response.pieces is not None or response.head_only else len(body)
    if status not in (100, 204, 304) and not any(name.lower() == "content-length" for name, _ in response.headers):
        lines.append(f"Content-Length: {length if length is not None else len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if response.head_only or status in (204, 304):
        sock.sendall(head)
        return 0
    if response.drop_after is not None:
        return _send_then_drop(sock, head, body, response)
    if response.pieces is None:
        sock.sendall(head + body if len(body) < 1 << 20 else head)
        if len(body) >= 1 << 20:
            sock.sendall(body)
        return len(body)
    sock.sendall(head)
    sent = 0
    for fd, offset, count in response.pieces:
        sent += _sendfile(sock, fd, offset, count)
    return sent


def _sendfile(sock: socket.socket, fd: int, offset: int, count: int) -> int:
    out = sock.fileno()
    timeout = sock.gettimeout()
    done = 0
    while done < count:
        try:
            n = os.sendfile(out, fd, offset + done, count - done)
        except BlockingIOError:
            _wait_writable(out, timeout)
            continue
        if n == 0:  # the file is shorter than the catalogue says: never send a torn body
            raise ConnectionAbortedError("object data shorter than its recorded size")
        done += n
    return done


def _wait_writable(fd: int, timeout: float | None) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not poller.poll(None if timeout is None else timeout * 1000):
        raise TimeoutError("client stopped reading")


def _send_then_drop(sock: socket.socket, head: bytes, body: bytes, response: Response) -> int:
    """Fault injection: send the head and part of the body, then reset the connection."""
    budget = response.drop_after or 0
    sock.sendall(head)
    sent = 0
    if response.pieces is None:
        sent = min(budget, len(body))
        sock.sendall(body[:sent])
    else:
        for fd, offset, count in response.pieces:
            take = min(count, budget - sent)
            if take <= 0:
                break
            sent += _sendfile(sock, fd, offset, take)
    reset(sock)
    raise ConnectionResetError("fault injection: connection dropped mid-body")


def send_continue(sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")


def reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), the way a crashed peer or middlebox drops a connection."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
