"""The boto3-backed ObjectClient: the only place that puts requests on the wire.

boto3 blocks, so every call runs in a worker thread under one shared CapacityLimiter whose size
is also botocore's connection-pool size (a thread never waits for a connection). Retries are
ours, not botocore's, so that backoff sleeps on trio instead of holding a thread.

S3 Express sessions: botocore would create sessions itself (no SessionMode, lazy refresh). We
keep its signer but replace its identity cache: a ``before-sign.s3`` handler registered last
swaps ``request.context['signing']['identity_cache']`` for :class:`_SigningIdentity`, which
hands the signer the very session the SessionManager gave this call (bound to the worker thread).
So every CreateSession is ours (with the right mode) and an ExpiredToken is pinned to the session
that caused it. This relies on botocore internals (tested range in pyproject.toml);
tests/client/test_s3_client.py fails loudly if they change, and :meth:`S3Client.probe`
refuses to start if the hook was bypassed. Ranged GETs, the bulk of all requests, skip
botocore's generic per-request path (``ranged_get.py``) but keep its signer and connections.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import boto3
import botocore.exceptions
import botocore.utils
import trio
import urllib3.exceptions
from botocore.config import Config
from botocore.credentials import Credentials

from . import errors
from .listing_parser import FastListingParserFactory, use_fast_listings
from .naming import BucketName
from .protocol import DeleteFailure, ListPage, ObjectInfo, PutResult
from .ranged_get import RangedGet, UseGenericPath, receive_exactly
from .retry import RetryPolicy
from .session import Session, SessionManager

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_CONNECTIONS = 32  # parallel ranged GETs of a prefetcher plus metadata traffic; botocore's default (10) starves it
PROBE_KEY = ".s3xfs-probe"  # what the mount-time check asks for (its absence is the expected answer)
CONNECT_TIMEOUT = 5.0  # a zonal endpoint answers in milliseconds; a dead one should fail fast
READ_TIMEOUT = 30.0  # between bytes of a response
# An AccessDenied this close to (or after) a session's expiry is treated as an expired token.
EXPIRY_SUSPICION = 10.0
# No answer, or half of one: botocore's wrappers, and what reading a body straight from the socket
# raises (RangedGet, _read_exactly, streamed ranges: a reset or timeout, urllib3's and http.client's
# errors; RangedGet turns any other OSError into urllib3's ProtocolError).
_CONNECTION_ERRORS = (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError,
                      botocore.exceptions.IncompleteReadError, ConnectionError, TimeoutError,
                      urllib3.exceptions.HTTPError, http.client.HTTPException)


@dataclass(frozen=True)
class ClientOptions:
    region: str
    read_only: bool = False
    endpoint_url: str | None = None  # an override such as the local endpoint; None: AWS's zonal endpoint
    profile: str | None = None
    fips: bool = False
    dualstack: bool = False
    max_connections: int = MAX_CONNECTIONS
    retry: RetryPolicy = RetryPolicy()
    refresh_before: float = 60.0  # see session.REFRESH_BEFORE


class _SigningIdentity:
    """What botocore's S3 Express signer asks for credentials: the session bound to this thread."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.hits = 0

    @contextmanager
    def use(self, session: Session | None):
        self._local.session = session
        try:
            yield
        finally:
            self._local.session = None

    def before_sign(self, request: Any, **_: Any) -> None:
        signing = request.context.get("signing")
        if signing is not None and signing.get("identity_cache") is not None:
            signing["identity_cache"] = self

    def get_credentials(self, bucket: str) -> Credentials:
        session: Session | None = getattr(self._local, "session", None)
        if session is None:
            raise errors.ClientError(f"internal: an S3 Express request for {bucket} had no session bound")
        self.hits += 1
        return Credentials(session.access_key, session.secret_key, session.token)


class S3Client:
    """ObjectClient over boto3 for one bucket (directory or general purpose)."""

    def __init__(self, bucket: BucketName, options: ClientOptions) -> None:
        self.bucket = bucket.name
        self.directory = bucket.directory
        self.read_only = options.read_only
        self.options = options
        # Live stats (``s3xfs stats``). Every counter is updated on the trio thread only (before a
        # worker thread starts, or from what it returned), so plain increments are never lost.
        self.requests: Counter[str] = Counter()  # requests put on the wire, by S3 operation (each attempt)
        self.failures: Counter[str] = Counter()  # failed requests, by S3 error code (or Unavailable)
        self.retries = 0
        self.lost_answers = 0  # writes whose answer was lost, found done by a later check
        self.bytes_received = 0  # bytes of GetObject bodies that arrived
        self.bytes_sent = 0  # bytes of PutObject (append included) and UploadPart bodies sent (each attempt)
        self._limiter = trio.CapacityLimiter(options.max_connections)
        try:
            boto_session = boto3.session.Session(profile_name=options.profile)
        except botocore.exceptions.ProfileNotFound:
            raise errors.AccessDenied(f"AWS profile {options.profile!r} is not defined in the shared config or credentials file") from None
        config = Config(
            region_name=options.region, max_pool_connections=options.max_connections,
            # botocore's own retries off: "max_attempts" would count retries (1 = one hidden retry);
            # "total_max_attempts" counts attempts. Retries are _call's, bounded and counted.
            retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT, tcp_keepalive=True, use_fips_endpoint=options.fips,
            use_dualstack_endpoint=options.dualstack,
        )
        parsers = FastListingParserFactory()  # listing pages read in one pass, not shape by shape
        parsers.set_parser_defaults(timestamp_parser=_fast_timestamp)
        boto_session._session.register_component("response_parser_factory", parsers)
        self._boto = boto_session.client("s3", endpoint_url=options.endpoint_url, config=config)
        use_fast_listings(self._boto)
        self._identity = _SigningIdentity()
        self._boto.meta.events.register_last("before-sign.s3", self._identity.before_sign)
        self._ranged = RangedGet.for_client(self._boto, self.bucket)  # reads without botocore's generic path
        self._base_credentials = None if self.directory else boto_session.get_credentials()
        self.sessions: SessionManager | None = None
        if self.directory:
            self.sessions = SessionManager(self.bucket, "ReadOnly" if options.read_only else "ReadWrite",
                                           self._create_session, refresh_before=options.refresh_before)

    # --- sessions ------------------------------------------------------------------------------

    async def _create_session(self, mode: str) -> tuple[str, str, str, float]:
        def create() -> dict[str, Any]:
            return self._boto.create_session(Bucket=self.bucket, SessionMode=mode)

        try:
            response = await self._in_thread(create, "CreateSession")
        except errors.AccessDenied as exc:
            if exc.code is None:  # refused before any request: no credentials at all
                raise
            raise errors.SessionUnavailable(self._denied_message(mode, exc), code=exc.code, status=exc.status) from None
        except errors.BucketNotFound:
            raise errors.BucketNotFound(f"bucket {self.bucket} does not exist (region {self.options.region})",
                                        code="NoSuchBucket", status=404) from None
        creds = response["Credentials"]
        return creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"], creds["Expiration"].timestamp()

    def _denied_message(self, mode: str, exc: errors.ClientError) -> str:
        if exc.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"the AWS credentials were rejected by the endpoint ({exc.code}): check the access key and secret, or --profile"
        if mode == "ReadWrite":
            return (f"this principal may not create a ReadWrite session on bucket {self.bucket} ({exc.code}). "
                    "Mount it read-only (--read-only) to use a ReadOnly session, or grant s3express:CreateSession "
                    "with s3express:SessionMode ReadWrite on this bucket")
        return (f"this principal may not create a ReadOnly session on bucket {self.bucket} ({exc.code}): grant "
                "s3express:CreateSession on the bucket (bucket policy or IAM policy)")

    # --- the request loop ----------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[[], T], operation: str, session: Session | None = None, key: str | None = None,
                         *, sent: int = 0, request: bool = True) -> T:
        """Run one boto3 call in a worker thread; translate its failure into a ClientError.
        ``sent``: bytes of the request body; ``request``: False for a read of a body already requested."""
        if request:
            self.requests[operation] += 1
            self.bytes_sent += sent

        def work() -> T:
            with self._identity.use(session):
                return fn()

        try:
            return await trio.to_thread.run_sync(work, limiter=self._limiter)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = error.get("Code")
            message = f"{operation} {self.bucket}/{key or ''}: {code} {error.get('Message') or ''}".rstrip()
            self.failures[code if code and not code.isdigit() else f"HTTP {code or status}"] += 1
            raise errors.from_s3(code, status, message, key) from None
        except _CONNECTION_ERRORS as exc:
            self.failures["Unavailable"] += 1
            raise errors.Unavailable(f"{operation} {self.bucket}/{key or ''}: {exc}", key=key) from None
        except botocore.exceptions.NoCredentialsError:
            raise errors.AccessDenied(
                "no AWS credentials found (environment, shared config and credentials files, SSO, container or "
                "instance metadata, web identity): configure one of them or pass --profile") from None
        except botocore.exceptions.ParamValidationError as exc:
            raise errors.InvalidRequest(f"{operation}: {exc}", key=key) from None

    async def _call(self, operation: str, fn: Callable[[], T], key: str | None = None, *, sent: int = 0,
                    landed: Callable[[errors.ClientError], Awaitable[T | None]] | None = None) -> T:
        """One logical request: a session if needed, bounded retries, one retry on a refused token.

        ``landed``, for writes that are not idempotent (a conditional PUT, CompleteMultipartUpload,
        RenameObject): once an attempt got no answer, it may have been done all the same, and the
        retry is then refused (412, NoSuchUpload, NoSuchKey) *because* it was done. ``landed``
        looks at the bucket and returns the result if so, else None (the refusal is raised)."""
        policy = self.options.retry
        deadline = trio.current_time() + policy.max_elapsed
        attempt = 0
        token_retry_used = False
        answer_lost = False  # an earlier attempt may have been done without our hearing of it
        while True:
            try:
                session = await self.sessions.get() if self.sessions is not None else None
            except errors.ClientError as exc:
                # No usable session and CreateSession failed: throttled or unanswered, it is retried
                # within the same budget as the request (a denied session is final).
                attempt += 1
                delay = policy.delay(attempt)
                if not exc.transient or attempt >= policy.max_attempts or trio.current_time() + delay > deadline:
                    raise
                self.retries += 1
                log.debug("%s %s: no session (%s); retry %d in %.3f s", operation, key or "", exc, attempt, delay)
                await trio.sleep(delay)
                continue
            started = trio.current_time()
            try:
                result = await self._in_thread(fn, operation, session, key, sent=sent)
                if log.isEnabledFor(logging.DEBUG):  # --debug s3xfs.client: one line per request
                    log.debug("%s %s: %.1f ms", operation, key or "", (trio.current_time() - started) * 1000)
                return result
            except errors.ClientError as exc:
                refused = session is not None and self._session_refused(exc, session)
                if refused:
                    assert self.sessions is not None and session is not None
                    self.sessions.invalidate(session)
                    if not token_retry_used:  # the common case: retry at once with a new session
                        token_retry_used = True
                        continue
                if answer_lost and landed is not None and not exc.transient and not refused:
                    outcome = await self._check_landed(landed, exc)
                    if outcome is None:
                        raise
                    self.lost_answers += 1
                    log.info("%s %s: the answer was lost, but the request had been done", operation, key or "")
                    return outcome
                answer_lost = answer_lost or _maybe_done(exc)
                attempt += 1
                delay = policy.delay(attempt)
                retryable = exc.transient or refused  # a second refusal in a row: back off, like throttling
                if not retryable or attempt >= policy.max_attempts or trio.current_time() + delay > deadline:
                    raise
                self.retries += 1
                log.debug("%s %s: %s; retry %d in %.3f s", operation, key or "", exc, attempt, delay)
                await trio.sleep(delay)

    @staticmethod
    async def _check_landed(landed: Callable[[errors.ClientError], Awaitable[T | None]], exc: errors.ClientError) -> T | None:
        """``landed(exc)``; if the bucket cannot tell, the outcome is unknown: Unavailable (EIO),
        not the refusal, which may be wrong (ENOENT for a rename that was done)."""
        try:
            return await landed(exc)
        except errors.ClientError as failure:
            raise errors.Unavailable(f"{exc}; the answer to an earlier attempt was lost and whether it was done "
                                     f"cannot be told now: {failure}", key=exc.key) from None

    @staticmethod
    def _session_refused(exc: errors.ClientError, session: Session) -> bool:
        if isinstance(exc, errors.SessionExpired):
            return True
        if exc.status == 400 and (exc.code is None or exc.code.isdigit()):
            return True  # a HEAD has no body to say ExpiredToken: a bare 400 with a session is most likely one
        return isinstance(exc, errors.AccessDenied) and exc.code == "AccessDenied" and \
            session.expires_at - time.time() < EXPIRY_SUSPICION

    def _writable(self, operation: str) -> None:
        if self.read_only:
            raise errors.ReadOnly(f"{operation} refused: the client is read-only")

    # --- ObjectClient --------------------------------------------------------------------------

    async def probe(self, prefix: str = "") -> None:
        """Check at start that the bucket answers (and, for directory buckets, that our session signs).

        Directory buckets: a HEAD of a key nobody needs (sessions have no per-prefix permissions,
        so it proves as much as a LIST would), which keeps a remount that takes its listings from
        the disk cache free of LIST requests. General purpose buckets: a one-key LIST of the
        prefix, since their policies may allow some prefixes only.
        """
        if self.directory:
            key = prefix + PROBE_KEY
            try:
                await self._call("HeadObject", lambda: self._boto.head_object(Bucket=self.bucket, Key=key), key)
            except errors.NotFound:
                pass
        else:
            await self._call("ListObjectsV2",
                             lambda: self._boto.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1))
        if self.directory and self._identity.hits == 0:
            raise errors.ClientError("botocore did not use s3xfs's S3 Express session for signing: its internals "
                                     "changed; use a botocore version within the range in pyproject.toml")

    async def head(self, key: str) -> ObjectInfo:
        response = await self._call("HeadObject", lambda: self._boto.head_object(Bucket=self.bucket, Key=key), key)
        return _info(key, response)

    async def get_range(self, key: str, start: int, length: int, *, if_match: str | None = None) -> bytes | bytearray:
        if length <= 0:
            return b""

        def fetch() -> bytes | bytearray:
            if self._ranged is not None:
                credentials = self._signing_credentials()
                if credentials is not None:
                    try:
                        return self._ranged.get(key, start, length, if_match and _quote_etag(if_match), credentials)
                    except UseGenericPath:
                        pass
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={start}-{start + length - 1}"}
            if if_match:
                kwargs["IfMatch"] = _quote_etag(if_match)
            response = self._boto.get_object(**kwargs)
            body = response["Body"]
            try:
                return _read_exactly(body, response["ContentLength"])
            except BaseException:
                body.close()  # a half-read connection must not go back to the pool
                raise

        try:
            data = await self._call("GetObject", fetch, key)
        except errors.InvalidRange:
            return b""  # at or past the end of the object: a short read, as read(2) gives
        self.bytes_received += len(data)
        return data

    def _signing_credentials(self) -> Credentials | None:
        """In a worker thread: the credentials this request signs with (the session bound to the
        thread, or the base credentials of a general purpose bucket); None: botocore finds none."""
        if self.directory:
            return self._identity.get_credentials(self.bucket)
        return self._base_credentials.get_frozen_credentials() if self._base_credentials is not None else None

    async def iter_range(self, key: str, start: int, length: int, *, if_match: str | None = None,
                         chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        offset, end = start, start + length
        policy = self.options.retry
        failures = 0
        while offset < end:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={offset}-{end - 1}"}
            if if_match:
                kwargs["IfMatch"] = _quote_etag(if_match)
            try:
                response = await self._call("GetObject", lambda kw=kwargs: self._boto.get_object(**kw), key)
            except errors.InvalidRange:
                return
            body = response["Body"]
            try:
                while offset < end:
                    chunk = await self._in_thread(lambda: body.read(min(chunk_size, end - offset)), "GetObject", key=key,
                                                  request=False)
                    if not chunk:
                        return
                    self.bytes_received += len(chunk)
                    offset += len(chunk)
                    yield chunk
            except errors.Unavailable:
                failures += 1  # the stream broke: resume from `offset`, pinned to the same ETag
                if failures >= policy.max_attempts:
                    raise
                await trio.sleep(policy.delay(failures))
            finally:
                body.close()

    async def list(self, prefix: str, *, delimiter: str | None = "/", page_size: int = 1000) -> AsyncIterator[ListPage]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": page_size}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            response = await self._call("ListObjectsV2", lambda kw=kwargs: self._boto.list_objects_v2(**kw), prefix)
            objects = [ObjectInfo(item["Key"], item["Size"], item["ETag"].strip('"'), item["LastModified"].timestamp(),
                                  item.get("StorageClass"), checksum_algorithm=(item.get("ChecksumAlgorithm") or [None])[0])
                       for item in response.get("Contents", [])]
            prefixes = [item["Prefix"] for item in response.get("CommonPrefixes", [])]
            yield ListPage(objects, prefixes)
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                return

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None,
                  content_type: str | None = None) -> PutResult:
        self._writable("PutObject")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match:
            kwargs["IfMatch"] = _quote_etag(if_match)
        if content_type:
            kwargs["ContentType"] = content_type

        async def landed(exc: errors.ClientError) -> dict[str, Any] | None:
            """A refused retry of a conditional PUT: done if the object now holds exactly ``data``."""
            if not isinstance(exc, errors.PreconditionFailed) or not (if_none_match or if_match):
                return None
            info = await self.head(key)
            if info.size != len(data) or bytes(await self.get_range(key, 0, len(data), if_match=info.etag)) != data:
                return None
            return {"ETag": _quote_etag(info.etag)}

        response = await self._call("PutObject", lambda: self._boto.put_object(**kwargs), key, sent=len(data),
                                    landed=landed)
        return PutResult(response["ETag"].strip('"'), len(data))

    async def append(self, key: str, data: bytes, *, offset: int, if_match: str | None = None) -> PutResult:
        self._writable("PutObject")
        if not self.directory:
            raise errors.NotSupported("appends need a directory bucket", key=key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": data, "WriteOffsetBytes": offset}
        if if_match:
            kwargs["IfMatch"] = _quote_etag(if_match)
        response = await self._call("PutObject", lambda: self._boto.put_object(**kwargs), key, sent=len(data))
        return PutResult(response["ETag"].strip('"'), offset + len(data))

    async def create_multipart(self, key: str, *, content_type: str | None = None) -> str:
        self._writable("CreateMultipartUpload")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if content_type:
            kwargs["ContentType"] = content_type
        response = await self._call("CreateMultipartUpload", lambda: self._boto.create_multipart_upload(**kwargs), key)
        return response["UploadId"]

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        self._writable("UploadPart")
        response = await self._call("UploadPart", lambda: self._boto.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data), key, sent=len(data))
        return response["ETag"].strip('"')

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]], *,
                                 if_none_match: bool = False, if_match: str | None = None) -> PutResult:
        self._writable("CompleteMultipartUpload")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "MultipartUpload": {
            "Parts": [{"PartNumber": n, "ETag": _quote_etag(etag)} for n, etag in parts]}}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match:
            kwargs["IfMatch"] = _quote_etag(if_match)

        async def landed(exc: errors.ClientError) -> dict[str, Any] | None:
            """A refused retry (NoSuchUpload, 412): done if the upload is gone, since only a
            completion can have removed it (we abort only uploads we no longer complete)."""
            if not isinstance(exc, (errors.NotFound, errors.PreconditionFailed)):
                return None
            try:
                await self._call("ListParts", lambda: self._boto.list_parts(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MaxParts=1), key)
                return None  # still there: the refusal stands
            except errors.NotFound:
                pass
            return {"ETag": _quote_etag((await self.head(key)).etag)}

        response = await self._call("CompleteMultipartUpload", lambda: self._boto.complete_multipart_upload(**kwargs),
                                    key, landed=landed)
        head = await self.head(key)
        return PutResult(response["ETag"].strip('"'), head.size)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self._writable("AbortMultipartUpload")
        try:
            await self._call("AbortMultipartUpload", lambda: self._boto.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id), key)
        except errors.NotFound:
            pass  # already gone: what abort wanted

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        self._writable("DeleteObject")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_match:
            kwargs["IfMatch"] = _quote_etag(if_match)
        await self._call("DeleteObject", lambda: self._boto.delete_object(**kwargs), key)

    async def delete_many(self, keys: list[str]) -> list[DeleteFailure]:
        self._writable("DeleteObjects")
        if not keys:
            return []
        if len(keys) > 1000:
            raise errors.InvalidRequest("DeleteObjects takes at most 1,000 keys")
        response = await self._call("DeleteObjects", lambda: self._boto.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}))
        return [DeleteFailure(e["Key"], e.get("Code", ""), e.get("Message", "")) for e in response.get("Errors", [])]

    async def rename(self, source: str, dest: str, *, if_none_match: bool = False) -> None:
        self._writable("RenameObject")
        if not self.directory:
            raise errors.NotSupported("RenameObject needs a directory bucket", key=source)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": dest, "RenameSource": quote(source, safe="/")}
        if if_none_match:
            kwargs["DestinationIfNoneMatch"] = "*"

        async def landed(exc: errors.ClientError) -> dict[str, Any] | None:
            """A refused retry (no such source, or a destination that exists): done if the source
            is gone and the destination is there."""
            if not isinstance(exc, (errors.NotFound, errors.PreconditionFailed)):
                return None
            try:
                await self.head(source)
                return None
            except errors.NotFound:
                pass
            await self.head(dest)
            return {}

        await self._call("RenameObject", lambda: self._boto.rename_object(**kwargs), dest, landed=landed)

    async def copy(self, source: str, dest: str) -> PutResult:
        self._writable("CopyObject")
        response = await self._call("CopyObject", lambda: self._boto.copy_object(
            Bucket=self.bucket, Key=dest, CopySource={"Bucket": self.bucket, "Key": source}), dest)
        head = await self.head(dest)
        return PutResult(response["CopyObjectResult"]["ETag"].strip('"'), head.size)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (plain, JSON-ready values); cheap, call it on the trio thread."""
        sessions = None
        if self.sessions is not None:
            sessions = {"mode": self.sessions.mode, **self.sessions.stats.snapshot()}
        return {"requests": dict(self.requests), "failures": dict(self.failures), "retries": self.retries,
                "lost_answers": self.lost_answers,
                "bytes_received": self.bytes_received, "bytes_sent": self.bytes_sent, "sessions": sessions}


def _maybe_done(exc: errors.ClientError) -> bool:
    """Whether a failed attempt may still have been carried out: no answer at all (a reset, a
    timeout), or a 500 that may come after the work. A 503 (SlowDown) is a refusal to start."""
    return isinstance(exc, errors.Unavailable) and (exc.status is None or exc.status == 500)


def _read_exactly(body: Any, length: int) -> bytes | bytearray:
    """The whole body of a botocore GetObject response, in one buffer (see receive_exactly)."""
    raw = getattr(body, "_raw_stream", None)
    if raw is None or not hasattr(raw, "release_conn"):
        data = body.read()
        if len(data) != length:
            raise botocore.exceptions.IncompleteReadError(actual_bytes=len(data), expected_bytes=length)
        return data
    buffer = receive_exactly(raw, length)
    raw.release_conn()  # fully read: the connection goes back to the pool
    return buffer


def _fast_timestamp(value: str) -> datetime:
    """botocore parses every LastModified with dateutil, half the cost of a listing page; S3's
    timestamps are ISO 8601 (XML) or RFC 1123 (headers), which the standard library reads fast."""
    try:
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return botocore.utils.parse_timestamp(value)


def _quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _info(key: str, response: dict[str, Any]) -> ObjectInfo:
    checksum_algorithm = next((a for a in ("CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME") if response.get(f"Checksum{a}")), None)
    return ObjectInfo(key, response["ContentLength"], response["ETag"].strip('"'), response["LastModified"].timestamp(),
                      response.get("StorageClass"), response.get("ContentType"), checksum_algorithm,
                      response.get(f"Checksum{checksum_algorithm}") if checksum_algorithm else None,
                      dict(response.get("Metadata", {})))


@asynccontextmanager
async def open_client(bucket: BucketName, options: ClientOptions) -> AsyncIterator[S3Client]:
    """An S3Client whose session refresher runs for as long as the context is open."""
    client = S3Client(bucket, options)
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        if client.sessions is not None:
            await nursery.start(client.sessions.run)
        try:
            yield client
        except BaseException as exc:  # re-raised below as is, not wrapped in the nursery's ExceptionGroup
            failure = exc
        finally:
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
