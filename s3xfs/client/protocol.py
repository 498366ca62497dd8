"""What the filesystem core may ask of S3: the ObjectClient protocol and its result types.

Two implementations: ``s3.S3Client`` (boto3, the real wire) and ``memory.MemoryClient`` (in
process, for fast core tests). The core depends on this module only.

Conventions: keys are full object keys (the mount prefix already applied); ETags are unquoted;
every method raises only :class:`~s3xfs.client.errors.ClientError` subclasses; listings come in
pages in whatever order the bucket returns (directory buckets: unordered).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)  # one per listed object: no per-instance dict
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: float  # seconds since the epoch
    storage_class: str | None = None
    content_type: str | None = None
    checksum_algorithm: str | None = None
    checksum: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]  # CommonPrefixes, each ending with the delimiter


@dataclass(frozen=True)
class PutResult:
    etag: str
    size: int


@dataclass(frozen=True)
class DeleteFailure:
    key: str
    code: str
    message: str


@runtime_checkable
class ObjectClient(Protocol):
    """The operations the filesystem needs. All are coroutines run on trio."""

    bucket: str
    directory: bool  # a directory bucket (sessions, unordered listings, append, rename)
    read_only: bool

    async def head(self, key: str) -> ObjectInfo:
        """Metadata of ``key``; NotFound if absent."""

    async def get_range(self, key: str, start: int, length: int, *, if_match: str | None = None) -> bytes | bytearray:
        """Bytes [start, start+length) of ``key`` (fewer at the end of the object).

        ``if_match`` pins the read to the ETag seen at open: PreconditionFailed if it changed.
        """

    def iter_range(self, key: str, start: int, length: int, *, if_match: str | None = None,
                   chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream [start, start+length) of ``key`` in chunks of at most ``chunk_size`` from one GET."""

    def list(self, prefix: str, *, delimiter: str | None = "/", page_size: int = 1000) -> AsyncIterator[ListPage]:
        """Pages of the listing under ``prefix`` (which ends with '/' or is '')."""

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None,
                  content_type: str | None = None) -> PutResult:
        """Create or replace ``key``; conditions map to PreconditionFailed."""

    async def append(self, key: str, data: bytes, *, offset: int, if_match: str | None = None) -> PutResult:
        """Append at ``offset`` (must equal the current size) on a directory bucket."""

    async def create_multipart(self, key: str, *, content_type: str | None = None) -> str:
        """Start a multipart upload; returns its upload id."""

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload part ``number`` (1-based); returns its ETag."""

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]], *,
                                 if_none_match: bool = False, if_match: str | None = None) -> PutResult:
        """Commit the upload from (number, etag) pairs in ascending order."""

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abandon the upload and its parts."""

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete ``key`` (no error if absent unless ``if_match`` is given)."""

    async def delete_many(self, keys: list[str]) -> list[DeleteFailure]:
        """Delete up to 1,000 keys in one request; returns the ones that failed."""

    async def rename(self, source: str, dest: str, *, if_none_match: bool = False) -> None:
        """Atomically rename ``source`` to ``dest`` (directory buckets: RenameObject)."""

    async def copy(self, source: str, dest: str) -> PutResult:
        """Server-side copy of ``source`` to ``dest`` (same bucket)."""
