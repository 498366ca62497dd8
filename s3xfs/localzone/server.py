"""The endpoint: accepts connections, dispatches S3 requests, applies faults, keeps the books.

One thread per connection (blocking sockets, ``sendfile`` for bodies): simple, and on loopback
the kernel does the heavy lifting. Everything a request needs is reached through
:class:`LocalZone`; handlers live in ``operations/``.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from . import errors, routing
from .auth import Authenticator, Caller
from .body import BodyReader, ChunkSigning, make_body_reader
from .faults import FaultConfig, FaultInjector
from .http import BadRequest, Request, Response, http_date, read_request, reset, send_continue, write_response
from .names import bucket_name_problem, is_directory_bucket, zone_of
from .operations import BUCKET_MAY_BE_MISSING, HANDLERS, READS_BODY, Call
from .principals import Principal
from .sessions import SessionStore
from .stats import AccessLog, Stats
from .storage import Store
from .xmlio import error_document

log = logging.getLogger(__name__)

DRAIN_LIMIT = 1 << 20  # an unread request body up to this size is drained to keep the connection
ADMIN_PREFIX = "/_localzone/"  # '_' can't start a bucket name, so this never shadows a bucket


@dataclass
class Settings:
    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    region: str = "us-west-2"  # the region of the first S3 Express zones (usw2-az1 ...)
    buckets: list[str] = field(default_factory=list)
    principals: list[Principal] = field(default_factory=list)
    session_ttl: float = 300.0  # what S3 Express issues: five minutes
    faults: FaultConfig = field(default_factory=FaultConfig)
    fault_seed: int | None = None
    access_log: TextIO | None = None
    fsync: bool = False
    account_id: str = "123456789012"  # appears in bucket ARNs; the documentation's example account
    idle_timeout: float = 120.0  # seconds a keep-alive connection may sit idle (or a body stall)
    expose_sessions: bool = False  # testing only: GET /_localzone/sessions returns every credential issued


class LocalZone:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.root, fsync=settings.fsync)
        self.sessions = SessionStore(settings.session_ttl, record=settings.expose_sessions)
        self.stats = Stats()
        self.faults = FaultInjector(settings.faults, settings.fault_seed)
        self.authenticator = Authenticator(settings.region, settings.principals, self.sessions, self.faults)
        self.access_log = AccessLog(settings.access_log)
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._active = 0  # requests being served; shutdown() lets them finish
        self._idle = threading.Condition()
        for name in settings.buckets:
            self.ensure_bucket(name)

    def ensure_bucket(self, name: str) -> None:
        problem = bucket_name_problem(name)
        if problem:
            raise ValueError(f"invalid bucket name {name!r}: {problem}")
        if self.store.get_bucket(name) is None:
            self.store.create_bucket(name, directory=is_directory_bucket(name), region=self.settings.region, zone=zone_of(name))

    # --- lifecycle -----------------------------------------------------------------------------

    def bind(self) -> tuple[str, int]:
        self._listener = socket.create_server((self.settings.host, self.settings.port), backlog=1024)
        host, port = self._listener.getsockname()[:2]
        return host, port

    def serve_forever(self) -> None:
        assert self._listener is not None, "bind() first"
        while not self._stopping.is_set():
            try:
                conn, addr = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            threading.Thread(target=self._connection, args=(conn, addr[0]), daemon=True).start()

    def stop_serving(self) -> None:
        """Make :meth:`serve_forever` return (now, or at once if it has not started): safe to
        call from a signal handler, as it only sets a flag and shuts the listening socket."""
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (up to ``grace`` seconds: their responses
        and access-log lines go out), then close the store."""
        self.stop_serving()
        if self._listener is not None:
            self._listener.close()
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=grace)
        self.store.close()

    # --- connections ---------------------------------------------------------------------------

    def _connection(self, sock: socket.socket, client: str) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.settings.idle_timeout)
        rfile = sock.makefile("rb", buffering=256 * 1024)
        try:
            while not self._stopping.is_set():
                try:
                    request = read_request(rfile, client)
                except BadRequest as exc:
                    self._send_bad_request(sock, str(exc))
                    break
                if request is None:
                    break
                with self._idle:
                    if self._stopping.is_set():
                        break  # arrived during shutdown: not served, the connection closes
                    self._active += 1
                try:
                    keep_alive = self._serve(request, sock, rfile)
                finally:
                    with self._idle:
                        self._active -= 1
                        self._idle.notify_all()
                if not keep_alive:
                    break
        except (OSError, ValueError):
            pass  # client went away, timed out, or we reset the connection on purpose
        finally:
            try:
                rfile.close()
                sock.close()
            except OSError:
                pass

    def _send_bad_request(self, sock: socket.socket, reason: str) -> None:
        error = errors.S3Error(400, "BadRequest", f"Malformed HTTP request: {reason}")
        write_response(sock, self._error_response(error, "/", head=False), keep_alive=False)

    def _serve(self, request: Request, sock: socket.socket, rfile: BinaryIO) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        if request.raw_path.startswith(ADMIN_PREFIX):
            return self._admin(request, sock, rfile)
        started = time.monotonic()
        operation, bucket, key, mode = "-", "", "", "-"
        body: BodyReader | None = None
        head = request.method == "HEAD"
        drop = False
        # A client that sent "Expect: 100-continue" holds the body back until we say so.
        expects_continue = "100-continue" in request.header("expect").lower() and _has_body(request)
        continued = False
        try:
            target = routing.resolve(request, lambda name: self.store.get_bucket(name) is not None)
            operation, bucket, key = target.operation, target.bucket or "", target.key
            cfg = self.faults.config
            if cfg.outage:
                self.stats.fault("outage")
                self._record(request, operation, bucket, key, 0, None, mode, started, 0, 0)  # status 0: no answer
                reset(sock)
                return False
            drop = self.faults.draw(cfg.drop_rate)
            if self.faults.draw(cfg.slowdown_rate):
                self.stats.fault("slowdown")
                raise errors.slow_down()
            if self.faults.draw(cfg.internal_error_rate):
                self.stats.fault("internal_error")
                raise errors.internal_error()
            info = self.store.get_bucket(bucket) if bucket else None
            directory = info.directory if info else is_directory_bucket(bucket)
            caller = self.authenticator.authenticate(request, target.bucket, directory, operation)
            mode = caller.mode
            self.authenticator.authorize(caller, target.bucket, directory, operation)
            if bucket and info is None and operation not in BUCKET_MAY_BE_MISSING:
                raise errors.no_such_bucket(bucket)
            if expects_continue:
                send_continue(sock)
                continued = True
            body = make_body_reader(rfile, request.headers, caller.credential.payload_hash, _chunk_signing(caller))
            if operation not in READS_BODY:
                _check_unread_body(body)
            call = Call(request, operation, bucket, info, key, request.query(), caller, body, self)
            response = HANDLERS[operation](call)
        except errors.S3Error as exc:
            response = self._error_response(exc, request.raw_path, head)
        except Exception:
            log.exception("internal error serving %s %s", request.method, request.raw_path)
            response = self._error_response(errors.internal_error(), request.raw_path, head)
        if expects_continue and not continued:
            # Rejected before 100 Continue: the client will not send the body (RFC 9110 10.1.1), so
            # answer at once and close, rather than wait for a body that never comes.
            keep_alive = False
        else:
            keep_alive = request.keep_alive and self._body_finished(request, rfile, body)
        try:
            delay = self.faults.latency()
            if delay:
                time.sleep(delay)
            if drop:
                self.stats.fault("drop")
                if response.length and not response.head_only:
                    response.drop_after = response.length // 2
                else:
                    response.close()
                    self._record(request, operation, bucket, key, 0, None, mode, started,
                                 body.raw_bytes_read if body is not None else 0, 0)  # status 0: no answer
                    reset(sock)
                    return False
            response.headers.extend(self._common_headers())
            raw_in = body.raw_bytes_read if body is not None else 0
            planned = _body_length(response)
            # Counted before the answer goes out: a client that has its response finds it in the stats.
            self.stats.record(operation, response.status, response.error_code, raw_in, planned)
            sent = 0
            try:
                sent = write_response(sock, response, keep_alive)
            finally:
                response.close()
                if sent != planned:  # cut short (fault, or the client went away)
                    self.stats.add_bytes_out(sent - planned)
                self.access_log.write(request.client, operation, bucket, key, response.status, response.error_code,
                                      mode, time.monotonic() - started, raw_in, sent)
        except (OSError, ValueError):
            return False
        return keep_alive

    def _record(self, request: Request, operation: str, bucket: str, key: str, status: int, error: str | None,
                mode: str, started: float, raw_in: int, sent: int) -> None:
        """Count a request that gets no response (status 0: the connection is reset) and log it."""
        self.stats.record(operation, status, error, raw_in, sent)
        self.access_log.write(request.client, operation, bucket, key, status, error, mode,
                              time.monotonic() - started, raw_in, sent)

    @staticmethod
    def _body_finished(request: Request, rfile: BinaryIO, body: BodyReader | None) -> bool:
        """Whether the connection is positioned at the next request (draining a small rest)."""
        if not _has_body(request):
            return True
        if body is None:
            try:
                body = make_body_reader(rfile, request.headers, None, None)
            except errors.S3Error:
                return False
        if body.at_eof:
            return True
        try:
            return body.drain(DRAIN_LIMIT)
        except (errors.S3Error, OSError, ValueError):
            return False

    def _common_headers(self) -> list[tuple[str, str]]:
        request_id = secrets.token_hex(8).upper()
        return [("x-amz-request-id", request_id), ("x-amz-id-2", request_id), ("Date", http_date()),
                ("Server", "s3xfs-localzone")]

    def _error_response(self, error: errors.S3Error, resource: str, head: bool) -> Response:
        request_id = secrets.token_hex(8).upper()
        headers = [("Content-Type", "application/xml"), *error.headers.items()]
        body = b"" if head else error_document(error, resource, request_id)
        response = Response(error.status, headers, body, error_code=error.code, head_only=head, length=0 if head else None)
        if error.status == 503:
            response.headers.append(("Retry-After", "1"))
        return response

    # --- admin ---------------------------------------------------------------------------------

    def _admin(self, request: Request, sock: socket.socket, rfile: BinaryIO) -> bool:
        name = request.raw_path[len(ADMIN_PREFIX):].strip("/")
        status, payload = 200, {}
        raw_length = request.header("content-length", "0") or "0"
        length = int(raw_length) if raw_length.isdigit() else -1
        if not 0 <= length <= DRAIN_LIMIT:
            response = Response(400, [("Content-Type", "application/json"), *self._common_headers()],
                                json.dumps({"error": "admin requests take a JSON body of at most 1 MiB"}).encode())
            write_response(sock, response, keep_alive=False)
            return False
        data = rfile.read(length) if length else b""
        try:
            if name == "stats" and request.method == "GET":
                payload = self.stats.snapshot()
            elif name == "reset" and request.method == "POST":
                self.stats.reset()
                payload = {"reset": True}
            elif name == "expire-sessions" and request.method == "POST":
                payload = {"expired": self.sessions.expire_all()}
            elif name == "faults" and request.method in ("GET", "POST"):
                if request.method == "POST":
                    self.faults.config.update(json.loads(data or b"{}"))
                payload = self.faults.config.as_dict()
            elif name == "sessions" and request.method == "GET":
                issued = self.sessions.issued()
                if issued is None:
                    status, payload = 403, {"error": "session credentials are exposed only by an endpoint started "
                                                     "with --expose-sessions (for tests)"}
                else:
                    payload = {"sessions": issued}
            elif name == "health" and request.method == "GET":
                payload = {"ok": True, "region": self.settings.region}
            else:
                status, payload = 404, {"error": f"no admin endpoint {request.method} {request.raw_path}"}
        except (ValueError, json.JSONDecodeError) as exc:
            status, payload = 400, {"error": str(exc)}
        response = Response(status, [("Content-Type", "application/json"), *self._common_headers()],
                            json.dumps(payload, sort_keys=True).encode())
        keep_alive = request.keep_alive
        write_response(sock, response, keep_alive)
        return keep_alive


def _body_length(response: Response) -> int:
    """Body bytes write_response will send for ``response`` if nothing goes wrong."""
    if response.head_only or response.status in (204, 304):
        return 0
    if response.pieces is not None:
        return response.length or 0
    return len(response.body)


def _check_unread_body(body: BodyReader) -> None:
    """S3 verifies the payload of every request against x-amz-content-sha256 (and the framing and
    chunk signatures of aws-chunked ones): a DELETE or CreateMultipartUpload whose body lies is
    refused, not carried out because nobody read it. So read and check it before the handler runs."""
    if len(body.read(DRAIN_LIMIT + 1)) > DRAIN_LIMIT:
        raise errors.S3Error(400, "MaxMessageLengthExceeded", "Your request was too big.")


def _has_body(request: Request) -> bool:
    return request.header("content-length", "0") not in ("", "0") or "transfer-encoding" in request.headers


def _chunk_signing(caller: Caller) -> ChunkSigning | None:
    credential = caller.credential
    if not credential.payload_hash.startswith("STREAMING-AWS4-HMAC-SHA256"):
        return None
    return ChunkSigning(caller.signing_key, credential.amz_date, credential.scope, credential.signature)
