"""An in-process ObjectClient with S3 Express semantics, for fast tests of the filesystem core.

Why it exists: every filesystem rule must be testable without a network, a thread pool or a
server process, and the rules that matter most are the ones where a directory bucket differs from
what a filesystem author expects. So this client is deliberately *unhelpful* where S3 Express is:

* Listings of a directory bucket come back in a shuffled order (seeded, so a failure replays),
  never in key order, and each listing draws a new order: code that sorts, or that assumes two
  listings agree on order, fails here rather than in production. Pagination is by position in
  that order, re-reading the current contents at every page as S3 does, so a page boundary never
  duplicates or skips an entry that did not change.
* Directories exist only through the keys (and in-progress multipart uploads) beneath them.
* Prefix, delimiter, append, rename and multipart rules raise the same typed errors
  (:mod:`s3xfs.client.errors`) that :class:`~s3xfs.client.s3.S3Client` raises for the
  equivalent S3 error response, with the S3 code and HTTP status attached.

What tests get on top of the protocol:

* ``calls``: a :class:`collections.Counter` of requests by S3 operation name, one per request the
  real client would put on the wire (a listing of N pages counts N; ``complete_multipart`` and
  ``copy`` also count the HeadObject that S3Client sends after them; calls the real client refuses
  locally, such as writes through a read-only client, count nothing).
* ``fail_next``, ``latency`` and ``before_call``: fault injection, a per-request delay, and an
  async hook to interleave other work at the exact moment a request is "sent".
* ``put_object_sync``, ``objects``, ``uploads`` and ``snapshot`` to arrange and inspect state
  without counting requests.

Concurrency: trio runs one task at a time, so every request is atomic provided its state is read
and written with no ``await`` in between. Each method therefore awaits only in its prologue
(:meth:`MemoryClient._request`: latency, hook, faults) and then runs to completion synchronously;
``iter_range`` pins the object's bytes at its single GET, as one S3 response body would.
"""

from __future__ import annotations

import builtins  # the ``list`` method shadows the type inside the class body
import copy as _copy
import hashlib
import random
import string
import time
import types
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from dataclasses import dataclass, field

import trio

from . import errors
from .protocol import DeleteFailure, ListPage, ObjectInfo, PutResult

__all__ = ["MemoryClient", "StoredObject", "OPERATIONS", "DEFAULT_BUCKET", "MIN_PART_SIZE", "MAX_PARTS"]

DEFAULT_BUCKET = "test--usw2-az1--x-s3"
DIRECTORY_SUFFIX = "--x-s3"  # what makes a bucket name a directory bucket's
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every multipart part but the last
MAX_PARTS = 10_000  # parts of a multipart upload, and appends to one object (each append is a part)
MAX_KEYS = 1000  # ListObjectsV2 never returns more per page, whatever max-keys asks
MAX_DELETE = 1000  # keys per DeleteObjects request
MAX_KEY_BYTES = 1024  # longer keys are KeyTooLongError
MAX_PUT_SIZE = 5 * 1024 ** 3  # 5 GiB per PUT or part
DEFAULT_CONTENT_TYPE = "binary/octet-stream"  # what S3 reports for an object stored without one
_ETAG_ALPHABET = string.ascii_lowercase + string.digits
_PREFIX_MESSAGE = ("This bucket does not support a prefix that does not end in a delimiter. "
                   "Specify a prefix path ending with a delimiter and try again.")
_SALT_ATTEMPTS = 64  # shuffles tried per listing before accepting one that happens to look sorted

# The S3 operation names the counters and fault hooks use.
OPERATIONS = frozenset({
    "HeadObject", "GetObject", "ListObjectsV2", "PutObject", "CreateMultipartUpload", "UploadPart",
    "CompleteMultipartUpload", "AbortMultipartUpload", "DeleteObject", "DeleteObjects", "RenameObject", "CopyObject",
})

BeforeCall = Callable[[str, "str | None"], Awaitable[None]]


@dataclass(frozen=True)
class StoredObject:
    """One object as the bucket holds it. Immutable: every write stores a new one, so a reader that
    holds a reference (``iter_range``) keeps seeing the version it opened."""

    data: bytes
    etag: str
    last_modified: float
    content_type: str = DEFAULT_CONTENT_TYPE
    parts: int = 1  # PUT: 1, multipart: its part count, +1 per append (S3 Express caps this at 10,000)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class _Upload:
    key: str
    content_type: str
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)  # number -> (data, etag)


@dataclass
class _Fault:
    operation: str
    error: errors.ClientError
    remaining: int
    key: str | None


class MemoryClient:
    """ObjectClient over a dict, with directory-bucket (S3 Express) or general purpose semantics.

    ``directory`` defaults to what the bucket name says (``--x-s3`` suffix). ``seed`` makes ETags,
    upload ids and listing orders reproducible. ``min_part_size`` lets tests exercise multipart
    rules without allocating 5 MiB parts.
    """

    def __init__(self, bucket: str = DEFAULT_BUCKET, *, directory: bool | None = None, read_only: bool = False,
                 seed: int | None = None, min_part_size: int = MIN_PART_SIZE) -> None:
        self.bucket = bucket
        self.directory: bool = bucket.endswith(DIRECTORY_SUFFIX) if directory is None else directory
        self.read_only = read_only
        self.min_part_size = min_part_size
        self.calls: Counter[str] = Counter()
        self.latency: float = 0.0
        self.before_call: BeforeCall | None = None
        self._rng = random.Random(seed)
        self._objects: dict[str, StoredObject] = {}
        self._uploads: dict[str, _Upload] = {}
        self._faults: list[_Fault] = []
        # Bumped on every change that a listing could see, so a paginated listing of an unchanged
        # bucket sorts once instead of once per page.
        self._generation = 0

    # --- test accessors (never counted, never faulted) ---------------------------------------

    @property
    def requests(self) -> Counter[str]:
        """The same counter as ``calls``, under S3Client's name, so code reporting either works."""
        return self.calls

    @property
    def objects(self) -> Mapping[str, StoredObject]:
        """A live read-only view of the stored objects (write through ``put_object_sync``)."""
        return types.MappingProxyType(self._objects)

    @property
    def uploads(self) -> dict[str, str]:
        """In-progress multipart uploads, upload id -> key: lets tests check nothing leaked."""
        return {upload_id: upload.key for upload_id, upload in self._uploads.items()}

    def put_object_sync(self, key: str, data: bytes = b"", *, content_type: str | None = None,
                        parts: int = 1) -> ObjectInfo:
        """Store ``key`` for test setup, bypassing counters, faults, latency and read-only mode.

        ``parts`` records how many parts the object consists of, so the 10,000-append limit can be
        reached without 10,000 requests.
        """
        if not key:
            raise ValueError("a key must not be empty")
        if not 1 <= parts <= MAX_PARTS:
            raise ValueError(f"parts must be between 1 and {MAX_PARTS}")
        data = bytes(data)
        obj = StoredObject(data, self._new_etag(data), time.time(), content_type or DEFAULT_CONTENT_TYPE, parts)
        self._store(key, obj)
        return self._info(key, obj)

    def snapshot(self) -> dict[str, bytes]:
        """Every key and its bytes, as a plain dict to compare with a model."""
        return {key: obj.data for key, obj in self._objects.items()}

    def fail_next(self, operation: str, error: errors.ClientError, times: int = 1, key: str | None = None) -> None:
        """Make the next ``times`` requests of ``operation`` (touching ``key``, if given) raise ``error``.

        The error is raised after the request is counted and its latency and ``before_call`` hook
        have run, and before it has any effect, as if the server refused it. A keyed fault matches
        a request naming that key as its object, its source (rename, copy) or its prefix (list).
        A keyed DeleteObjects fault fails only that key, reported as a DeleteFailure, because that
        is how S3 reports per-key failures of a batch delete. Faults are consumed first in, first out.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; expected one of {sorted(OPERATIONS)}")
        if not isinstance(error, errors.ClientError):
            raise TypeError("fail_next needs an s3xfs.client.errors.ClientError: nothing else may leave a client")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._faults.append(_Fault(operation, error, times, key))

    def clear_faults(self) -> None:
        """Drop every fault not yet triggered."""
        self._faults.clear()

    # --- ObjectClient: reads -----------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        """Metadata of ``key`` (content type included, as HeadObject returns it); NotFound if absent."""
        await self._request("HeadObject", key)
        return self._info(key, self._existing("HeadObject", key), full=True)

    async def get_range(self, key: str, start: int, length: int, *, if_match: str | None = None) -> bytes:
        """Bytes [start, start+length); b'' at or past the end (S3's 416, which S3Client turns into a
        short read). ``if_match`` is checked before the range, as S3 evaluates conditions first."""
        if start < 0:
            await trio.lowlevel.checkpoint()
            raise errors.InvalidRequest(f"GetObject {self.bucket}/{key}: a range cannot start before 0", key=key)
        if length <= 0:
            await trio.lowlevel.checkpoint()  # S3Client sends nothing for an empty range
            return b""
        try:
            await self._request("GetObject", key)
            data = self._readable("GetObject", key, if_match).data
        except errors.InvalidRange:
            return b""
        return data[start:start + length]

    async def iter_range(self, key: str, start: int, length: int, *, if_match: str | None = None,
                         chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream [start, start+length) in chunks from one GET.

        The object's bytes are pinned when the GET is answered: a write during the stream is not
        seen, exactly as one S3 response body would not show it.
        """
        if start < 0 or chunk_size <= 0:
            await trio.lowlevel.checkpoint()
            raise errors.InvalidRequest(f"GetObject {self.bucket}/{key}: invalid range or chunk size", key=key)
        if length <= 0:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._request("GetObject", key)
            data = self._readable("GetObject", key, if_match).data
        except errors.InvalidRange:
            return
        offset, end = start, min(start + length, len(data))
        while offset < end:
            if offset != start:
                await trio.lowlevel.checkpoint()  # each further chunk is a read of the body: a suspension point
            chunk = data[offset:min(offset + chunk_size, end)]
            offset += len(chunk)
            yield chunk

    async def list(self, prefix: str, *, delimiter: str | None = "/", page_size: int = 1000) -> AsyncIterator[ListPage]:
        """Pages of ListObjectsV2 under ``prefix``; always at least one page (maybe empty).

        Directory buckets: the prefix must be '' or end in '/', the delimiter must be '/' (or
        none), the order is a fresh seeded shuffle per listing that is never key order when it has
        two or more entries of a kind, and CommonPrefixes include directories that exist only
        because of in-progress multipart uploads. General purpose buckets: key order, any prefix
        and delimiter. Every page re-reads the bucket; the continuation is a position in the
        listing's order, so unchanged entries are returned exactly once.
        """
        delimiter = delimiter or None
        salt: bytes | None = None
        position: tuple[int, str] | str | None = None  # the last entry returned, in this listing's order
        # (generation, sort keys, (name, object or None)) in listing order; reused while nothing changes
        cached: tuple[int, builtins.list[Any], builtins.list[tuple[str, StoredObject | None]]] | None = None
        while True:
            await self._request("ListObjectsV2", prefix)
            if page_size < 0:
                raise self._error(errors.InvalidRequest, "ListObjectsV2", prefix, "InvalidArgument", 400,
                                  "max-keys must not be negative")
            if self.directory:
                if delimiter is not None and delimiter != "/":
                    raise self._error(errors.InvalidRequest, "ListObjectsV2", prefix, "InvalidArgument", 400,
                                      "Directory buckets support only '/' as a delimiter.")
                if prefix and not prefix.endswith("/"):
                    raise self._error(errors.InvalidRequest, "ListObjectsV2", prefix, "InvalidRequest", 400,
                                      _PREFIX_MESSAGE)
            if cached is None or cached[0] != self._generation:
                entries = self._entries(prefix, delimiter)
                if self.directory:
                    if salt is None:
                        salt = self._pick_salt(entries)
                    keys: builtins.list[Any] = sorted((_rank(salt, name), name) for name in entries)
                    in_order = [name for _, name in keys]
                else:
                    keys = in_order = sorted(entries)
                cached = (self._generation, keys, [(name, entries[name]) for name in in_order])
            _, order, items = cached
            first = 0 if position is None else bisect_right(order, position)
            last = min(first + min(page_size, MAX_KEYS), len(order))
            objects: builtins.list[ObjectInfo] = []
            prefixes: builtins.list[str] = []
            for name, obj in items[first:last]:
                if obj is None:
                    prefixes.append(name)
                else:
                    objects.append(self._info(name, obj))
            yield ListPage(objects, prefixes)
            if last <= first or last >= len(order):
                return
            position = order[last - 1]

    # --- ObjectClient: writes ----------------------------------------------------------------

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None,
                  content_type: str | None = None) -> PutResult:
        """Create or replace ``key``. If-None-Match on an existing key and If-Match on a different
        ETag are PreconditionFailed; If-Match on a missing key is NotFound (S3's NoSuchKey)."""
        await self._request("PutObject", key, write=True)
        self._check_size("PutObject", key, len(data))
        self._check_conditions("PutObject", key, if_none_match, if_match)
        data = bytes(data)
        obj = StoredObject(data, self._new_etag(data), time.time(), content_type or DEFAULT_CONTENT_TYPE)
        self._store(key, obj)
        return PutResult(obj.etag, obj.size)

    async def append(self, key: str, data: bytes, *, offset: int, if_match: str | None = None) -> PutResult:
        """S3 Express append (PutObject with a write offset): ``offset`` must be the current size.

        Checked in S3's order: empty body (InvalidRequest), If-Match (NotFound/PreconditionFailed),
        a non-zero offset on a missing key (NotFound), offset != size (PreconditionFailed, code
        InvalidWriteOffset), 10,000 parts already (TooLarge, code TooManyParts). Each append gives a
        new ETag and keeps the object's content type.
        """
        await self._request("PutObject", key, write=True, needs_directory="appends need a directory bucket")
        if offset < 0:
            raise self._error(errors.InvalidRequest, "PutObject", key, "InvalidArgument", 400,
                              "The write offset must not be negative.")
        if not data:
            raise self._error(errors.InvalidRequest, "PutObject", key, "InvalidArgument", 400,
                              "The request body of an append (write offset) PUT must not be empty.")
        self._check_size("PutObject", key, len(data))
        current = self._objects.get(key)
        if if_match is not None:
            self._check_conditions("PutObject", key, False, if_match)
        now = time.time()
        if current is None:
            if offset != 0:
                raise self._not_found("PutObject", key)
            data = bytes(data)
            obj = StoredObject(data, self._new_etag(data), now)
        else:
            if offset != current.size:
                raise self._error(errors.PreconditionFailed, "PutObject", key, "InvalidWriteOffset", 400,
                                  "The write offset value that you provided does not match the current object size.")
            if current.parts >= MAX_PARTS:
                raise self._error(errors.TooLarge, "PutObject", key, "TooManyParts", 400,
                                  f"You have attempted to append to an object that already has the maximum number "
                                  f"of parts ({MAX_PARTS}).")
            joined = current.data + bytes(data)
            obj = StoredObject(joined, self._new_etag(joined), now, current.content_type, current.parts + 1)
        self._store(key, obj)
        return PutResult(obj.etag, obj.size)

    async def create_multipart(self, key: str, *, content_type: str | None = None) -> str:
        """Start an upload. On a directory bucket its key's directories appear in listings at once."""
        await self._request("CreateMultipartUpload", key, write=True)
        upload_id = "".join(self._rng.choice(string.ascii_letters + string.digits) for _ in range(48))
        self._uploads[upload_id] = _Upload(key, content_type or DEFAULT_CONTENT_TYPE)
        self._generation += 1
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Store (or replace) part ``number`` (1..10,000); NotFound for an unknown upload."""
        await self._request("UploadPart", key, write=True)
        if not 1 <= number <= MAX_PARTS:
            raise self._error(errors.InvalidRequest, "UploadPart", key, "InvalidArgument", 400,
                              f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive")
        upload = self._upload("UploadPart", key, upload_id)
        self._check_size("UploadPart", key, len(data))
        data = bytes(data)
        etag = self._new_etag(data)
        upload.parts[number] = (data, etag)
        return etag

    async def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[tuple[int, str]], *,
                                 if_none_match: bool = False, if_match: str | None = None) -> PutResult:
        """Commit the upload, checked in S3's order: empty list (MalformedXML), ascending numbers,
        directory buckets exactly 1..N (InvalidPartOrder), parts uploaded with those ETags
        (InvalidPart), every part but the last at least ``min_part_size`` (EntityTooSmall), then
        the conditions. Like S3Client, a HeadObject follows to learn the size.
        """
        await self._request("CompleteMultipartUpload", key, write=True)
        upload = self._upload("CompleteMultipartUpload", key, upload_id)
        if not parts:
            raise self._error(errors.InvalidRequest, "CompleteMultipartUpload", key, "MalformedXML", 400,
                              "The XML you provided was not well-formed or did not validate against our "
                              "published schema")
        numbers = [number for number, _ in parts]
        if any(a >= b for a, b in zip(numbers, numbers[1:])):
            raise self._error(errors.InvalidRequest, "CompleteMultipartUpload", key, "InvalidPartOrder", 400,
                              "The list of parts was not in ascending order. The parts list must be specified in "
                              "order by part number.")
        if self.directory and numbers != list(range(1, len(numbers) + 1)):
            raise self._error(errors.InvalidRequest, "CompleteMultipartUpload", key, "InvalidPartOrder", 400,
                              "Part numbers must be consecutive, starting from 1, for directory buckets.")
        chosen: builtins.list[tuple[bytes, str]] = []
        for number, etag in parts:
            stored = upload.parts.get(number)
            if stored is None or stored[1] != etag.strip().strip('"'):
                raise self._error(errors.InvalidRequest, "CompleteMultipartUpload", key, "InvalidPart", 400,
                                  f"One or more of the specified parts could not be found (part {number}).")
            chosen.append(stored)
        for number, (data, _) in zip(numbers[:-1], chosen[:-1]):
            if len(data) < self.min_part_size:
                raise self._error(errors.InvalidRequest, "CompleteMultipartUpload", key, "EntityTooSmall", 400,
                                  f"Your proposed upload is smaller than the minimum allowed size (part {number}: "
                                  f"{len(data)} < {self.min_part_size} bytes)")
        self._check_conditions("CompleteMultipartUpload", key, if_none_match, if_match)
        joined = b"".join(data for data, _ in chosen)
        if self.directory:
            etag = self._random_etag()
        else:
            digests = b"".join(hashlib.md5(data, usedforsecurity=False).digest() for data, _ in chosen)
            etag = f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(chosen)}"
        del self._uploads[upload_id]
        self._store(key, StoredObject(joined, etag, time.time(), upload.content_type, len(chosen)))
        await self._request("HeadObject", key)
        return PutResult(etag, self._existing("HeadObject", key).size)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop the upload and its parts; an upload already gone is what abort wanted, so silent."""
        try:
            await self._request("AbortMultipartUpload", key, write=True)
            self._upload("AbortMultipartUpload", key, upload_id)
        except errors.NotFound:
            return
        del self._uploads[upload_id]
        self._generation += 1

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete ``key``; absent is fine unless ``if_match`` is given (then NotFound), and an ETag
        mismatch is PreconditionFailed."""
        await self._request("DeleteObject", key, write=True)
        if if_match is not None:
            current = self._existing("DeleteObject", key)
            if not _etag_matches(if_match, current.etag):
                raise self._precondition_failed("DeleteObject", key, "If-Match")
        self._drop(key)

    async def delete_many(self, keys: builtins.list[str]) -> builtins.list[DeleteFailure]:
        """One DeleteObjects request for up to 1,000 keys; per-key failures (keyed faults, keys too
        long) come back as DeleteFailure while the other keys are deleted, as S3 does."""
        if self.read_only:
            await trio.lowlevel.checkpoint()
            raise errors.ReadOnly("DeleteObjects refused: the client is read-only")
        if not keys:
            await trio.lowlevel.checkpoint()  # S3Client sends nothing for an empty batch
            return []
        if len(keys) > MAX_DELETE:
            await trio.lowlevel.checkpoint()
            raise errors.InvalidRequest(f"DeleteObjects takes at most {MAX_DELETE:,} keys")
        await self._request("DeleteObjects", None, write=True)
        failures: builtins.list[DeleteFailure] = []
        for key in keys:
            fault = self._take_fault("DeleteObjects", (key,), keyed_only=True)
            if fault is not None:
                failures.append(DeleteFailure(key, fault.code or type(fault).__name__, str(fault)))
            elif not key or _too_long(key):
                failures.append(DeleteFailure(key, "KeyTooLongError" if key else "InvalidArgument",
                                              "Your key is too long" if key else "A key must not be empty"))
            else:
                self._drop(key)
        return failures

    async def rename(self, source: str, dest: str, *, if_none_match: bool = False) -> None:
        """RenameObject: atomic, keeps ETag, dates and content type. Keys ending in '/' are
        InvalidRequest, a missing source NotFound, If-None-Match on an existing destination
        PreconditionFailed; an existing destination is otherwise replaced."""
        await self._request("RenameObject", dest, write=True, also=(source,),
                            needs_directory="RenameObject needs a directory bucket")
        if source.endswith("/") or dest.endswith("/"):
            raise self._error(errors.InvalidRequest, "RenameObject", dest, "InvalidArgument", 400,
                              "Keys ending in '/' (directories) cannot be renamed.")
        obj = self._existing("RenameObject", source)
        if if_none_match and dest in self._objects:
            raise self._precondition_failed("RenameObject", dest, "If-None-Match")
        if source == dest:
            return
        self._drop(source)
        self._store(dest, obj)

    async def copy(self, source: str, dest: str) -> PutResult:
        """CopyObject within the bucket: a new object (new ETag and date) with the source's bytes and
        content type. Like S3Client, a HeadObject of the destination follows to learn the size."""
        await self._request("CopyObject", dest, write=True, also=(source,))
        obj = self._existing("CopyObject", source)
        if source == dest:
            raise self._error(errors.InvalidRequest, "CopyObject", dest, "InvalidRequest", 400,
                              "This copy request is illegal because it is trying to copy an object to itself "
                              "without changing the object's metadata, storage class, website redirect location "
                              "or encryption attributes.")
        etag = self._new_etag(obj.data)
        self._store(dest, StoredObject(obj.data, etag, time.time(), obj.content_type))
        await self._request("HeadObject", dest)
        return PutResult(etag, self._existing("HeadObject", dest).size)

    # --- the request prologue ----------------------------------------------------------------

    async def _request(self, operation: str, key: str | None, *, write: bool = False, also: Iterable[str] = (),
                       needs_directory: str | None = None) -> None:
        """Everything between a call and the 'server' acting on it.

        First what S3Client refuses without sending (read-only writes, operations a general
        purpose bucket lacks, empty keys: nothing counted), then the request itself: counted, its
        latency awaited (a checkpoint at least, so every call is a real suspension point), the
        ``before_call`` hook, injected faults, and the key-length check every S3 request gets.
        The caller then reads and writes state without awaiting, which makes it atomic.
        """
        keys = tuple(k for k in (key, *also) if k is not None)
        local: errors.ClientError | None = None
        if write and self.read_only:
            local = errors.ReadOnly(f"{operation} refused: the client is read-only", key=key)
        elif needs_directory is not None and not self.directory:
            local = errors.NotSupported(needs_directory, key=key)
        elif operation != "ListObjectsV2" and any(not k for k in keys):
            local = errors.InvalidRequest(f"{operation}: a key must not be empty", key=key)
        if local is not None:
            await trio.lowlevel.checkpoint()
            raise local
        self.calls[operation] += 1
        if self.latency > 0:
            await trio.sleep(self.latency)
        else:
            await trio.lowlevel.checkpoint()
        if self.before_call is not None:
            await self.before_call(operation, key)
        fault = self._take_fault(operation, keys)
        if fault is not None:
            raise fault
        if operation != "ListObjectsV2":
            for k in keys:
                if _too_long(k):
                    raise self._error(errors.NameTooLong, operation, k, "KeyTooLongError", 400, "Your key is too long")

    def _take_fault(self, operation: str, keys: tuple[str, ...], *,
                    keyed_only: bool = False) -> errors.ClientError | None:
        """Consume the first pending fault for this request; a fresh copy, so repeated raises of one
        configured error do not pile tracebacks onto a shared instance."""
        for fault in self._faults:
            if fault.operation != operation:
                continue
            if fault.key is None and keyed_only:
                continue
            if fault.key is not None and fault.key not in keys:
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            try:
                error = _copy.copy(fault.error)
            except Exception:  # an exotic subclass that cannot be copied: raise the original
                error = fault.error
            error.__traceback__ = None
            return error
        return None

    # --- state helpers (synchronous: call them only after the last await) --------------------

    def _store(self, key: str, obj: StoredObject) -> None:
        self._objects[key] = obj
        self._generation += 1

    def _drop(self, key: str) -> None:
        if self._objects.pop(key, None) is not None:
            self._generation += 1

    def _existing(self, operation: str, key: str) -> StoredObject:
        obj = self._objects.get(key)
        if obj is None:
            raise self._not_found(operation, key)
        return obj

    def _readable(self, operation: str, key: str, if_match: str | None) -> StoredObject:
        obj = self._existing(operation, key)
        if if_match is not None and not _etag_matches(if_match, obj.etag):
            raise self._precondition_failed(operation, key, "If-Match")
        return obj

    def _upload(self, operation: str, key: str, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise self._error(errors.NotFound, operation, key, "NoSuchUpload", 404,
                              "The specified multipart upload does not exist. The upload ID may be invalid, or the "
                              "upload may have been aborted or completed.")
        return upload

    def _check_conditions(self, operation: str, key: str, if_none_match: bool, if_match: str | None) -> None:
        current = self._objects.get(key)
        if if_none_match and current is not None:
            raise self._precondition_failed(operation, key, "If-None-Match")
        if if_match is not None:
            if current is None:
                raise self._not_found(operation, key)
            if not _etag_matches(if_match, current.etag):
                raise self._precondition_failed(operation, key, "If-Match")

    def _check_size(self, operation: str, key: str, size: int) -> None:
        if size > MAX_PUT_SIZE:
            raise self._error(errors.TooLarge, operation, key, "EntityTooLarge", 400,
                              "Your proposed upload exceeds the maximum allowed size")

    def _entries(self, prefix: str, delimiter: str | None) -> dict[str, StoredObject | None]:
        """Listing entries under ``prefix``: objects by key, CommonPrefixes mapped to None.

        Directory buckets also take CommonPrefixes from in-progress uploads: there a directory
        exists as soon as an upload beneath it starts. An object name never ends with the
        delimiter past the prefix and a CommonPrefix always does, so the two never collide.
        """
        entries: dict[str, StoredObject | None] = {}
        start = len(prefix)
        for key, obj in self._objects.items():
            if not key.startswith(prefix):
                continue
            if delimiter is not None:
                i = key.find(delimiter, start)
                if i >= 0:
                    entries[key[:i + len(delimiter)]] = None
                    continue
            entries[key] = obj
        if self.directory and delimiter is not None:
            for upload in self._uploads.values():
                if upload.key.startswith(prefix):
                    i = upload.key.find(delimiter, start)
                    if i >= 0:
                        entries.setdefault(upload.key[:i + len(delimiter)], None)
        return entries

    def _pick_salt(self, entries: dict[str, StoredObject | None]) -> bytes:
        """A shuffle for one listing that is visibly not key order.

        A random shuffle of two names is in key order half the time, which would let a test pass
        by luck; so shuffles are drawn (from the seeded RNG) until neither the objects, nor the
        prefixes, nor all entries together come out sorted, wherever there are at least two.
        """
        names = list(entries)
        groups = [names, [n for n in names if entries[n] is not None], [n for n in names if entries[n] is None]]
        groups = [g for g in groups if len(g) >= 2]
        salt = self._rng.randbytes(16)
        for _ in range(_SALT_ATTEMPTS):
            if all(_shuffled(salt, g) != sorted(g) for g in groups):
                break
            salt = self._rng.randbytes(16)
        return salt

    def _new_etag(self, data: bytes) -> str:
        """Random on directory buckets (S3 Express ETags are not MD5s), MD5 hex on general purpose."""
        return self._random_etag() if self.directory else hashlib.md5(data, usedforsecurity=False).hexdigest()

    def _random_etag(self) -> str:
        return "".join(self._rng.choice(_ETAG_ALPHABET) for _ in range(32))

    def _info(self, key: str, obj: StoredObject, *, full: bool = False) -> ObjectInfo:
        """What S3Client would build: listings carry no content type, HeadObject does."""
        return ObjectInfo(key, obj.size, obj.etag, obj.last_modified,
                          "EXPRESS_ONEZONE" if self.directory else "STANDARD",
                          obj.content_type if full else None)

    # --- errors, shaped like S3Client's ------------------------------------------------------

    def _error(self, cls: type[errors.ClientError], operation: str, key: str | None, code: str, status: int,
               message: str) -> errors.ClientError:
        return cls(f"{operation} {self.bucket}/{key or ''}: {code} {message}", code=code, status=status, key=key)

    def _not_found(self, operation: str, key: str) -> errors.ClientError:
        return self._error(errors.NotFound, operation, key, "NoSuchKey", 404, "The specified key does not exist.")

    def _precondition_failed(self, operation: str, key: str, condition: str) -> errors.ClientError:
        return self._error(errors.PreconditionFailed, operation, key, "PreconditionFailed", 412,
                           f"At least one of the pre-conditions you specified did not hold ({condition})")


def _rank(salt: bytes, name: str) -> int:
    """A name's place in one listing's shuffle: stable for that listing, so pages never overlap."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "big")


def _shuffled(salt: bytes, names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda name: (_rank(salt, name), name))


def _etag_matches(wanted: str, etag: str) -> bool:
    wanted = wanted.strip()
    return wanted == "*" or wanted.strip('"') == etag


def _too_long(key: str) -> bool:
    return len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES
