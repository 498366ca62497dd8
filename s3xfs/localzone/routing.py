"""From an HTTP request to (bucket, key, S3 operation name).

Both addressing styles work: path style (``/bucket/key``, what botocore uses when the endpoint
is an IP address) and virtual-hosted (``Host: bucket.<anything>`` for a bucket that exists, or
any ``<bucket>.localhost``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from . import errors
from .http import Request

# Subresources we recognise but do not emulate: a clear 501 instead of a wrong answer.
_UNSUPPORTED_BUCKET = frozenset(
    "acl policy cors lifecycle encryption tagging website logging notification replication "
    "ownershipControls publicAccessBlock object-lock accelerate requestPayment analytics metrics "
    "inventory intelligent-tiering policyStatus metadataTable".split()
)
_UNSUPPORTED_OBJECT = frozenset("acl tagging legal-hold retention torrent restore select".split())


@dataclass(frozen=True)
class Target:
    bucket: str | None
    key: str
    operation: str


def _host_bucket(host: str, is_known: Callable[[str], bool]) -> str | None:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host  # strip the port
    name = name.strip("[]").lower()
    if not name or name == "localhost":
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    if name.endswith(".localhost"):
        return name[: -len(".localhost")]
    first, _, rest = name.partition(".")
    while rest:
        if is_known(first):
            return first
        more, _, rest = rest.partition(".")
        first = f"{first}.{more}"  # general purpose bucket names may contain dots
    return None


def resolve(request: Request, is_known_bucket: Callable[[str], bool]) -> Target:
    try:
        path = unquote(request.raw_path, errors="strict")
    except UnicodeDecodeError:
        raise errors.S3Error(400, "InvalidURI", "Couldn't parse the specified URI.") from None
    bucket = _host_bucket(request.header("host"), is_known_bucket)
    if bucket is None:
        bucket, _, key = path[1:].partition("/")
    else:
        key = path[1:]
    query = request.query()
    return Target(bucket or None, key, _operation(request.method, bucket or None, key, query, request.headers))


def _operation(method: str, bucket: str | None, key: str, query: dict[str, str], headers: dict[str, str]) -> str:
    if bucket is None:
        if method == "GET":
            return "ListBuckets"
        raise _method_not_allowed(method)
    if not key:
        if method == "GET":
            if "session" in query:
                return "CreateSession"
            if "uploads" in query:
                return "ListMultipartUploads"
            if "location" in query:
                return "GetBucketLocation"
            if "versioning" in query:
                return "GetBucketVersioning"
            if _UNSUPPORTED_BUCKET.intersection(query):
                return "Unsupported"
            return "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
        if method == "HEAD":
            return "HeadBucket"
        if method == "PUT":
            return "Unsupported" if _UNSUPPORTED_BUCKET.intersection(query) else "CreateBucket"
        if method == "DELETE":
            return "Unsupported" if _UNSUPPORTED_BUCKET.intersection(query) else "DeleteBucket"
        if method == "POST" and "delete" in query:
            return "DeleteObjects"
        raise _method_not_allowed(method)
    if _UNSUPPORTED_OBJECT.intersection(query):
        return "Unsupported"
    if method in ("GET", "HEAD"):
        if method == "GET" and "uploadId" in query:
            return "ListParts"
        if method == "GET" and "attributes" in query:
            return "GetObjectAttributes"
        return "GetObject" if method == "GET" else "HeadObject"
    if method == "PUT":
        if "renameObject" in query:
            return "RenameObject"
        if "partNumber" in query or "uploadId" in query:
            return "UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart"
        return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
    raise _method_not_allowed(method)


def _method_not_allowed(method: str) -> errors.S3Error:
    return errors.S3Error(405, "MethodNotAllowed", f"The specified method ({method}) is not allowed against this resource.")
