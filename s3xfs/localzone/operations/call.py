"""What every operation handler receives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..auth import Caller
from ..body import BodyReader
from ..http import Request
from ..storage import BucketInfo, Store

if TYPE_CHECKING:
    from ..server import LocalZone


@dataclass
class Call:
    request: Request
    operation: str
    target_bucket: str  # the bucket named by the request (may not exist yet: CreateBucket)
    bucket: BucketInfo | None
    key: str
    query: dict[str, str]
    caller: Caller
    body: BodyReader
    app: "LocalZone"

    @property
    def store(self) -> Store:
        return self.app.store

    @property
    def headers(self) -> dict[str, str]:
        return self.request.headers

    @property
    def directory(self) -> bool:
        return self.bucket is not None and self.bucket.directory

    @property
    def bucket_name(self) -> str:
        assert self.bucket is not None
        return self.bucket.name
