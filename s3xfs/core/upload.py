"""The content of a file being written, until it is committed to the bucket.

A file opened for writing gets one *writer* (shared by every handle writing it), chosen by how it
is written; the writer turns writes into requests and :meth:`commit` makes the result visible, at
once and whole, on close or fsync:

* :class:`StreamUpload` -- new content written from offset 0 onwards (``cp``, ``tar``, ``dd``,
  shell redirections): full parts go out as multipart uploads in parallel while the writer goes
  on; memory is bounded by a shared :class:`~s3xfs.core.prefetch.MemoryBudget` plus one part per
  file. Small files become one PutObject. Nothing is visible before the commit.
* :class:`AppendUpload` -- writes at the end of an existing object on a directory bucket: each
  flush is one PutObject with a write offset (every append is a part; at most 10,000).
* :class:`StagedFile` -- everything else (writes into the middle of a file, read-write handles,
  truncation to a size other than 0): the content lives in a local file under the staging
  directory and is uploaded whole on commit. If that upload fails, the file is kept and its path
  logged, so the data can be recovered; its record (core/staging.py) names its bucket and key,
  also after a crash (``s3xfs staging list``).

Every commit is conditional: If-Match the ETag the content was based on, or If-None-Match for a
file that did not exist, so a concurrent change on the server is detected instead of overwritten.

Concurrency: writers are driven by the filesystem under one ``trio.Lock`` per inode, so
``write``, ``truncate``, ``commit`` and ``read`` never interleave on one writer. Part uploads of a
StreamUpload run as tasks in the filesystem's nursery; between awaits, ``_inflight`` counts them
and ``_error`` holds the first failure, which the next write or the commit raises.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass

import trio

from ..client import errors as client_errors
from ..client.protocol import ObjectClient, PutResult
from .errors import FsError
from .prefetch import MemoryBudget
from .staging import RESCUED, STAGED, Record, new_record, remove_with_record, with_base, with_key, write_record

log = logging.getLogger(__name__)

MAX_PARTS = 10_000  # S3's limit on parts per multipart upload, and on appends per object
MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last; upload parts are never smaller
MAX_PARALLEL_PARTS = 8  # part uploads in flight per file: enough to fill a zonal connection pool
STAGED_CHUNK = 8 * 1024 * 1024  # bytes per local read/write of a staged file


class NotSequential(Exception):
    """A write this writer cannot take (it went back into data already sent)."""


@dataclass(frozen=True)
class Condition:
    """What the object must still be for a commit to replace it."""
    if_match: str | None = None  # the ETag the content is based on
    if_none_match: bool = False  # the object must not exist (a new file)

    @classmethod
    def based_on(cls, etag: str | None) -> "Condition":
        return cls(if_match=etag) if etag else cls(if_none_match=True)


def upload_part_size(part_size: int, total: int = 0) -> int:
    """The part size for an upload: at least S3's minimum, and large enough for 10,000 parts."""
    size = max(part_size, MIN_PART)
    if total > size * MAX_PARTS:
        size = math.ceil(total / MAX_PARTS / (1 << 20)) << 20
    return size


class StreamUpload:
    """New content, written sequentially from offset 0: streamed as parts, committed once."""

    def __init__(self, client: ObjectClient, key: str, condition: Condition, *, part_size: int,
                 budget: MemoryBudget, nursery: trio.Nursery) -> None:
        self.client = client
        self.key = key  # a multipart upload belongs to one key: rename commits before it renames
        self.condition = condition
        self.part_size = upload_part_size(part_size)
        self.budget = budget
        self.nursery = nursery
        self.size = 0
        self.dirty = True  # a created or truncated file must be written even if nothing follows
        self._buffer = bytearray()
        self._buffer_start = 0  # file offset of _buffer[0]; everything before it has been sent
        self._upload_id: str | None = None
        self._next_part = 1
        self._parts: dict[int, str] = {}
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._limit = trio.Semaphore(MAX_PARALLEL_PARTS)
        self._error: BaseException | None = None

    @property
    def streamed(self) -> bool:
        """Whether any part has left (then the content can no longer move to a staged file)."""
        return self._buffer_start > 0

    def buffered(self) -> bytes:
        return bytes(self._buffer)

    async def write(self, offset: int, data: bytes) -> None:
        self._raise_failure()
        end = offset + len(data)
        if end > self.part_size * MAX_PARTS:
            raise FsError(errno.EFBIG, f"{self.key}: a streamed file ends at {MAX_PARTS} parts of {self.part_size} bytes")
        if offset < self._buffer_start:
            raise NotSequential(offset)
        at = offset - self._buffer_start
        if at > len(self._buffer):
            self._buffer.extend(bytes(at - len(self._buffer)))  # a hole after the end reads as zeros
        self._buffer[at:at + len(data)] = data
        self.size = max(self.size, end)
        self.dirty = True
        while len(self._buffer) >= self.part_size:
            await self._send_full_part()

    async def truncate(self, size: int) -> None:
        if size < self._buffer_start:
            raise NotSequential(size)
        if size > self.size:
            await self.write(self.size, bytes(size - self.size))
            return
        del self._buffer[size - self._buffer_start:]
        self.size = size
        self.dirty = True

    async def read(self, offset: int, size: int) -> bytes:
        if offset < self._buffer_start:
            raise FsError(errno.EIO, f"{self.key}: bytes already streamed out cannot be read before the file is closed")
        at = offset - self._buffer_start
        return bytes(self._buffer[at:at + max(0, min(size, self.size - offset))])

    async def _send_full_part(self) -> None:
        part = self._buffer
        self._buffer = part[self.part_size:]
        del part[self.part_size:]
        self._buffer_start += self.part_size
        await self._send(part)

    async def _send(self, data: bytearray) -> None:
        """Schedule one part; waits while the budget or the per-file limit is exhausted."""
        if self._upload_id is None:
            try:
                self._upload_id = await self.client.create_multipart(self.key)
            except client_errors.ClientError as exc:
                self._error = self._error or exc  # this part is lost: no commit may succeed without it
                raise
        number, self._next_part = self._next_part, self._next_part + 1
        await self.budget.acquire(len(data))
        self._inflight += 1
        self._idle = trio.Event()
        self.nursery.start_soon(self._upload_part, number, data)

    async def _upload_part(self, number: int, data: bytearray) -> None:
        try:
            async with self._limit:
                # Sent even after a failure: every part that reaches the bucket is data the kept
                # upload can give back (see _keep_for_recovery).
                self._parts[number] = await self.client.upload_part(self.key, self._upload_id or "", number, data)
        except Exception as exc:  # noqa: BLE001 - remembered, raised by the next write or the commit
            if self._error is None:
                self._error = exc
        finally:
            self.budget.release(len(data))
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise FsError(errno.EIO, f"{self.key}: a part upload failed: {self._error}")

    def fail(self, exc: BaseException) -> None:
        """A write was refused after parts left: the content can never be whole, so no commit may
        store it (the next write and the commit raise EIO)."""
        self._error = self._error or exc

    async def commit(self, staging: "Staging") -> PutResult:
        """Make the content visible as one object; on failure keep what can be kept and raise EIO."""
        try:
            self._raise_failure()  # an earlier failure lost data: never store the rest alone
            if self._upload_id is None:
                return await _put(self.client, self.key, bytes(self._buffer), self.condition)
            if self._buffer:
                await self._send(self._buffer)
                self._buffer = bytearray()
            await self._idle.wait()
            self._raise_failure()
            parts = sorted(self._parts.items())
            result = await self.client.complete_multipart(self.key, self._upload_id, parts, if_match=self.condition.if_match,
                                                          if_none_match=self.condition.if_none_match)
            self._upload_id = None
            return result
        except (client_errors.ClientError, FsError) as exc:
            self._keep_for_recovery(staging, exc)
            raise FsError(errno.EIO, f"{self.key}: upload failed: {exc}") from None

    def _keep_for_recovery(self, staging: "Staging", exc: BaseException) -> None:
        if self._upload_id is None:
            path = staging.save(self.client.bucket, self.key, bytes(self._buffer), based_on=self.condition.if_match)
            log.error("writing %r failed (%s); its %d bytes from offset %d are kept in %s", self.key, exc,
                      len(self._buffer), self._buffer_start, path)
        else:
            tail = staging.save(self.client.bucket, self.key, bytes(self._buffer), offset=self._buffer_start,
                                based_on=self.condition.if_match, upload_id=self._upload_id) if self._buffer else None
            log.error("writing %r failed (%s); the multipart upload %s is kept with parts %s%s: complete it with "
                      "ListParts + CompleteMultipartUpload, or abort it", self.key, exc, self._upload_id,
                      sorted(self._parts), f", and bytes from offset {self._buffer_start} are in {tail}" if tail else "")
            self._upload_id = None  # kept on purpose: discard() must not abort it
        # The content is rescued, not pending: a later commit (the close after a failed fsync, the
        # release after a failed close) must not upload what is left (nothing, or a tail) in its place.
        self._buffer = bytearray()
        self.dirty = False
        self._error = self._error or exc

    async def discard(self) -> None:
        """Forget the content (the file was unlinked while being written): abort the upload."""
        await self._idle.wait()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                await self.client.abort_multipart(self.key, upload_id)
            except client_errors.ClientError as exc:
                log.warning("could not abort the upload of %r (%s): S3 removes it when the bucket's lifecycle says so",
                            self.key, exc)


class AppendUpload:
    """Writes at the end of an existing object on a directory bucket, sent as appends."""

    def __init__(self, client: ObjectClient, key: str, size: int, etag: str, *, part_size: int) -> None:
        self.client = client
        self.key = key
        self.committed = size  # the object's size on the server
        self.etag = etag  # and its ETag: each append is guarded with If-Match
        self.part_size = upload_part_size(part_size)
        self._buffer = bytearray()

    @property
    def size(self) -> int:
        return self.committed + len(self._buffer)

    @property
    def dirty(self) -> bool:
        return bool(self._buffer)

    def buffered(self) -> bytes:
        return bytes(self._buffer)

    async def write(self, offset: int, data: bytes) -> None:
        if offset < self.committed or offset > self.size:
            raise NotSequential(offset)
        at = offset - self.committed
        self._buffer[at:at + len(data)] = data
        if len(self._buffer) >= self.part_size:
            await self.flush()

    async def truncate(self, size: int) -> None:
        if size < self.committed or size > self.size:
            raise NotSequential(size)
        del self._buffer[size - self.committed:]

    async def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        head = b""
        if offset < self.committed:
            n = min(size, self.committed - offset)
            head = bytes(await self.client.get_range(self.key, offset, n, if_match=self.etag))
            offset, size = offset + n, size - n
        at = offset - self.committed
        return head + bytes(self._buffer[at:at + size])

    async def flush(self) -> None:
        if not self._buffer:
            return
        data = bytes(self._buffer)
        try:
            result = await self.client.append(self.key, data, offset=self.committed, if_match=self.etag)
        except client_errors.TooLarge:
            raise FsError(errno.EFBIG, f"{self.key}: an object takes at most {MAX_PARTS} appends") from None
        except client_errors.PreconditionFailed:
            # A retried append whose first attempt landed (its answer was lost) is refused as a
            # wrong offset. Accept it only if the object is exactly what that append made.
            result = await self._landed(data)
            if result is None:
                raise
        self.committed, self.etag = result.size, result.etag
        del self._buffer[:len(data)]

    async def _landed(self, data: bytes) -> PutResult | None:
        try:
            info = await self.client.head(self.key)
            if info.size != self.committed + len(data):
                return None
            tail = await self.client.get_range(self.key, self.committed, len(data), if_match=info.etag)
        except client_errors.ClientError:
            return None
        return PutResult(info.etag, info.size) if bytes(tail) == data else None

    async def commit(self, staging: "Staging") -> PutResult:
        try:
            await self.flush()
        except (client_errors.ClientError, FsError) as exc:
            path = staging.save(self.client.bucket, self.key, bytes(self._buffer), offset=self.committed,
                                based_on=self.etag)
            log.error("appending to %r failed (%s); the %d bytes that were to follow offset %d are kept in %s",
                      self.key, exc, len(self._buffer), self.committed, path)
            self._buffer.clear()
            if isinstance(exc, FsError):
                raise
            raise FsError(errno.EIO, f"{self.key}: append failed: {exc}") from None
        return PutResult(self.etag, self.committed)

    async def discard(self) -> None:
        self._buffer.clear()


class StagedFile:
    """The whole content in a local file, uploaded on commit; kept on disk if that fails."""

    def __init__(self, client: ObjectClient, key: str, condition: Condition, path: str, fd: int, *, part_size: int,
                 budget: MemoryBudget, record: Record | None = None) -> None:
        self.client = client
        self._key = key
        self._condition = condition
        self.record = record  # what ties the file to its key after a crash (core/staging.py); kept current
        self.path = path
        self.part_size = part_size
        self.budget = budget
        self.size = 0
        self.dirty = False
        self._fd = fd

    @property
    def key(self) -> str:
        return self._key

    @key.setter
    def key(self, key: str) -> None:
        """The file was renamed: so is its record."""
        if key != self._key and self.record is not None and self._fd >= 0:
            self.record = with_key(self.record, key)
            write_record(self.path, self.record, self._fd)
        self._key = key

    @property
    def condition(self) -> Condition:
        return self._condition

    @condition.setter
    def condition(self, condition: Condition) -> None:
        """A commit stored the content: the record names the ETag it now replaces."""
        if condition.if_match != self._condition.if_match and self.record is not None and self._fd >= 0:
            self.record = with_base(self.record, condition.if_match)
            write_record(self.path, self.record, self._fd)
        self._condition = condition

    async def fill_from(self, key: str, size: int, etag: str) -> None:
        """Copy the object's current content (pinned to its ETag) into the file."""
        offset = 0
        async for chunk in self.client.iter_range(key, 0, size, if_match=etag, chunk_size=STAGED_CHUNK):
            await trio.to_thread.run_sync(_pwrite_all, self._fd, chunk, offset)
            offset += len(chunk)
        self.size = offset

    async def write(self, offset: int, data: bytes) -> None:
        await trio.to_thread.run_sync(_pwrite_all, self._fd, data, offset)
        self.size = max(self.size, offset + len(data))
        self.dirty = True

    async def truncate(self, size: int) -> None:
        await trio.to_thread.run_sync(os.ftruncate, self._fd, size)
        self.size = size
        self.dirty = True

    async def read(self, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(os.pread, self._fd, max(0, min(size, self.size - offset)), offset)

    async def commit(self, staging: "Staging") -> PutResult:
        try:
            result = await self._upload()
        except (client_errors.ClientError, FsError, OSError) as exc:
            await trio.to_thread.run_sync(os.fsync, self._fd)
            log.error("uploading %r failed (%s); its content (%d bytes) is kept in %s", self.key, exc, self.size, self.path)
            raise FsError(errno.EIO, f"{self.key}: upload failed: {exc}; content kept in {self.path}") from None
        self.condition = Condition(if_match=result.etag)
        self.dirty = False
        return result

    async def upload(self) -> PutResult:
        """Store the content as it is, under the current condition (``s3xfs staging restore``)."""
        return await self._upload()

    async def _upload(self) -> PutResult:
        part = upload_part_size(self.part_size, self.size)
        if self.size <= part:
            data = await trio.to_thread.run_sync(os.pread, self._fd, self.size, 0)
            return await _put(self.client, self.key, data, self.condition)
        upload_id = await self.client.create_multipart(self.key)
        parts: dict[int, str] = {}
        failures: list[Exception] = []  # the first failed part is raised as commit() expects, not in a group
        try:
            async with trio.open_nursery() as nursery:
                limit = trio.Semaphore(MAX_PARALLEL_PARTS)
                for number, start in enumerate(range(0, self.size, part), start=1):
                    length = min(part, self.size - start)
                    await self.budget.acquire(length)
                    await limit.acquire()
                    nursery.start_soon(self._upload_part, upload_id, number, start, length, parts, limit, failures,
                                       nursery.cancel_scope)
            if failures:
                raise failures[0]
            return await self.client.complete_multipart(self.key, upload_id, sorted(parts.items()),
                                                        if_match=self.condition.if_match,
                                                        if_none_match=self.condition.if_none_match)
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self.client.abort_multipart(self.key, upload_id)
                except client_errors.ClientError:
                    pass  # the staged file still holds everything
            raise

    async def _upload_part(self, upload_id: str, number: int, start: int, length: int, parts: dict[int, str],
                           limit: trio.Semaphore, failures: list[Exception], scope: trio.CancelScope) -> None:
        try:
            data = await trio.to_thread.run_sync(os.pread, self._fd, length, start)
            parts[number] = await self.client.upload_part(self.key, upload_id, number, data)
        except (client_errors.ClientError, OSError) as exc:
            failures.append(exc)
            scope.cancel()  # no point sending the other parts: the upload is aborted
        finally:
            self.budget.release(length)
            limit.release()

    async def discard(self) -> None:
        self.remove()

    def remove(self) -> None:
        """The content is committed or not wanted: delete the local file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            remove_with_record(self.path)

    def keep(self) -> str:
        """Close the local file but leave it on disk (an upload failed); its path."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        return self.path


Writer = StreamUpload | AppendUpload | StagedFile


class Staging:
    """The staging directory: private (0700), one file per staged or rescued file content, each
    with a record of its bucket and key (core/staging.py) so that a crash leaves nothing anonymous."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._ready = False

    def _prepare(self) -> None:
        if self._ready:
            return
        try:
            os.makedirs(self.directory, mode=0o700)
        except FileExistsError:
            info = os.stat(self.directory)
            if info.st_uid != os.getuid() or info.st_mode & 0o077:
                # Shared (/var/tmp) or someone else's: never change its mode, use a private subdirectory.
                self.directory = os.path.join(self.directory, f"s3xfs-{os.getuid()}")
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                if os.stat(self.directory).st_uid != os.getuid():
                    raise FsError(errno.EACCES, f"staging directory {self.directory} belongs to another user")
        self._ready = True

    def _name(self, key: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", key.rsplit("/", 1)[-1])[:80] or "object"

    def new_file(self, client: ObjectClient, key: str, condition: Condition, *, part_size: int,
                 budget: MemoryBudget) -> StagedFile:
        self._prepare()
        fd, path = tempfile.mkstemp(prefix=self._name(key) + ".", suffix=".s3xfs", dir=self.directory)
        record = new_record(client.bucket, key, STAGED, based_on=condition.if_match)
        write_record(path, record, fd)  # before any data: a crash never leaves bytes without their key
        return StagedFile(client, key, condition, path, fd, part_size=part_size, budget=budget, record=record)

    def save(self, bucket: str, key: str, data: bytes, *, offset: int = 0, based_on: str | None = None,
             upload_id: str | None = None) -> str:
        """Write rescued bytes of ``key`` to a new file here, with their record (they belong at
        ``offset``, after ``based_on``, or after the parts of ``upload_id``); its path."""
        self._prepare()
        fd, path = tempfile.mkstemp(prefix=self._name(key) + ".", suffix=".rescued", dir=self.directory)
        record = new_record(bucket, key, RESCUED, offset=offset, based_on=based_on, upload_id=upload_id)
        try:
            write_record(path, record, fd, durable=True)
            _pwrite_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path


async def _put(client: ObjectClient, key: str, data: bytes, condition: Condition) -> PutResult:
    return await client.put(key, data, if_match=condition.if_match, if_none_match=condition.if_none_match)


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


__all__ = ["AppendUpload", "Condition", "NotSequential", "Staging", "StagedFile", "StreamUpload", "Writer",
           "upload_part_size"]
