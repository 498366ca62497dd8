"""Pieces shared by the object, multipart and bucket handlers: metadata headers, conditions,
ranges, checksums and the standard response headers of an object."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from .. import errors
from ..checksums import ALGORITHMS
from ..http import http_date
from ..storage import ObjectMeta, Staged
from .call import Call

MAX_KEY_BYTES = 1024
MAX_OBJECT_SIZE = 5 * 1024**3  # one PUT or one part (S3 limit)
MAX_USER_METADATA = 2048  # bytes of x-amz-meta-* names and values (S3 limit)
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
Precondition = Callable[[ObjectMeta | None], None]


def check_key(key: str) -> None:
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise errors.S3Error(400, "KeyTooLongError", "Your key is too long", {"MaxSizeAllowed": str(MAX_KEY_BYTES)})


def quoted(etag: str) -> str:
    return f'"{etag}"'


def request_metadata(call: Call) -> tuple[str, dict[str, str], dict[str, str]]:
    """(content type, stored standard headers, user metadata) from the request headers."""
    headers = call.headers
    content_type = headers.get("content-type") or "application/octet-stream"
    stored = {name: headers[name] for name in STORED_HEADERS if name in headers}
    encoding = stored.get("content-encoding")
    if encoding is not None:  # aws-chunked is framing, not a property of the object
        remaining = [e.strip() for e in encoding.split(",") if e.strip() and e.strip() != "aws-chunked"]
        if remaining:
            stored["content-encoding"] = ",".join(remaining)
        else:
            del stored["content-encoding"]
    user = {name[len("x-amz-meta-"):]: value for name, value in headers.items() if name.startswith("x-amz-meta-")}
    if sum(len(n) + len(v) for n, v in user.items()) > MAX_USER_METADATA:
        raise errors.S3Error(400, "MetadataTooLarge", "Your metadata headers exceed the maximum allowed metadata size",
                             {"MaxSizeAllowed": str(MAX_USER_METADATA)})
    return content_type, stored, user


def check_storage_class(call: Call, header: str = "x-amz-storage-class") -> None:
    value = call.headers.get(header)
    if value is None:
        return
    allowed = ("EXPRESS_ONEZONE",) if call.directory else (
        "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER",
        "DEEP_ARCHIVE", "GLACIER_IR")
    if value not in allowed:
        raise errors.S3Error(400, "InvalidStorageClass", "The storage class you specified is not valid",
                             {"StorageClassRequested": value})


def object_headers(call: Call, meta: ObjectMeta, *, checksum: bool = False) -> list[tuple[str, str]]:
    """The headers GET and HEAD answer with (before range/part adjustments)."""
    out = [
        ("Last-Modified", http_date(meta.last_modified)),
        ("ETag", quoted(meta.etag)),
        ("Accept-Ranges", "bytes"),
        ("Content-Type", meta.content_type),
    ]
    out.extend((name.title(), value) for name, value in meta.headers.items())
    out.extend((f"x-amz-meta-{name}", value) for name, value in meta.user_metadata.items())
    if call.directory:
        out.append(("x-amz-storage-class", meta.storage_class))
        out.append(("x-amz-server-side-encryption", "AES256"))
    if meta.multipart:
        out.append(("x-amz-mp-parts-count", str(len(meta.part_sizes))))
    if checksum and meta.checksum and meta.checksum_algorithm:
        out.append((f"x-amz-checksum-{meta.checksum_algorithm.lower()}", meta.checksum))
        if meta.checksum_type:
            out.append(("x-amz-checksum-type", meta.checksum_type))
    return out


def apply_overrides(call: Call, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    overrides = {RESPONSE_OVERRIDES[k]: v for k, v in call.query.items() if k in RESPONSE_OVERRIDES}
    if not overrides:
        return headers
    lowered = {name.lower() for name in overrides}
    return [(n, v) for n, v in headers if n.lower() not in lowered] + list(overrides.items())


# --- conditions ------------------------------------------------------------------------------

def _etags(value: str) -> list[str]:
    return [part.strip().strip('"').removeprefix('W/"').strip('"') for part in value.split(",") if part.strip()]


def etag_matches(header: str, etag: str) -> bool:
    tags = _etags(header)
    return "*" in tags or etag in tags


def parse_http_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def read_conditions(headers: dict[str, str], meta: ObjectMeta, prefix: str = "") -> int | None:
    """RFC 7232 as S3 applies it: 412, 304, or None to go ahead.

    ``prefix`` selects the copy-source variants (``x-amz-copy-source-``), where a failed
    If-None-Match/If-Modified-Since is also 412.
    """
    if_match = headers.get(prefix + "if-match")
    if_none = headers.get(prefix + "if-none-match")
    since = headers.get(prefix + "if-modified-since")
    unmodified = headers.get(prefix + "if-unmodified-since")
    modified_at = int(meta.last_modified)
    not_modified = 412 if prefix else 304
    if if_match is not None:
        if not etag_matches(if_match, meta.etag):
            return 412
    elif unmodified is not None:
        limit = parse_http_date(unmodified)
        if limit is not None and modified_at > limit:
            return 412
    if if_none is not None:
        if etag_matches(if_none, meta.etag):
            return not_modified
    elif since is not None:
        limit = parse_http_date(since)
        if limit is not None and modified_at <= limit:
            return not_modified
    return None


def write_precondition(headers: dict[str, str], key: str) -> tuple[Precondition, Precondition] | None:
    """(early check, at-commit check) for If-Match / If-None-Match on a write, or None.

    Checked once before the body is read (a plain 412) and again inside the store's commit
    transaction, where a failure means another writer got there first: 409
    ConditionalRequestConflict, as S3 answers that race.
    """
    if_match = headers.get("if-match")
    if_none = headers.get("if-none-match")
    if if_match is None and if_none is None:
        return None
    if if_none is not None and if_none.strip() != "*":
        raise errors.not_implemented("If-None-Match accepts only '*' on writes")

    def check(existing: ObjectMeta | None, racing: bool) -> None:
        if if_none is not None and existing is not None:
            raise errors.conditional_conflict() if racing else errors.precondition_failed("If-None-Match")
        if if_match is not None:
            if existing is None:
                raise errors.conditional_conflict() if racing else errors.no_such_key(key)
            if not etag_matches(if_match, existing.etag):
                raise errors.conditional_conflict() if racing else errors.precondition_failed("If-Match")

    return (lambda existing: check(existing, False)), (lambda existing: check(existing, True))


# --- ranges ----------------------------------------------------------------------------------

def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(start, length) for a single byte range; None to serve the whole object (S3 ignores
    malformed and multiple ranges); raises 416 InvalidRange when unsatisfiable."""
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                raise _unsatisfiable(size)
            return max(0, size - suffix), min(suffix, size)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and int(last) < start):
        return None
    if start >= size:
        raise _unsatisfiable(size)
    end = min(end, size - 1)
    return start, end - start + 1


def _unsatisfiable(size: int) -> errors.S3Error:
    return errors.S3Error(416, "InvalidRange", "The requested range is not satisfiable",
                          {"RangeRequested": "", "ActualObjectSize": str(size)},
                          headers={"Content-Range": f"bytes */{size}"})


# --- checksums -------------------------------------------------------------------------------

def requested_checksum(call: Call) -> tuple[str | None, str | None]:
    """(algorithm, expected base64 value or None if it arrives in a trailer) of an upload."""
    headers = call.headers
    present = [a for a in ALGORITHMS if f"x-amz-checksum-{a.lower()}" in headers]
    if "x-amz-checksum-crc64nvme" in headers or "crc64nvme" in headers.get("x-amz-trailer", "").lower() \
            or headers.get("x-amz-sdk-checksum-algorithm", "").upper() == "CRC64NVME":
        raise errors.invalid_request("CRC64NVME checksums are not implemented by s3xfs-localzone; use CRC32, CRC32C, SHA1 or SHA256.")
    if len(present) > 1:
        raise errors.invalid_request("Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.")
    if present:
        algorithm = present[0]
        value = headers[f"x-amz-checksum-{algorithm.lower()}"]
        _check_b64(algorithm, value)
        return algorithm, value
    trailer = headers.get("x-amz-trailer", "").strip().lower()
    if trailer.startswith("x-amz-checksum-"):
        algorithm = trailer[len("x-amz-checksum-"):].upper()
        if algorithm not in ALGORITHMS:
            raise errors.invalid_request(f"Unsupported trailer {trailer}")
        return algorithm, None
    sdk = headers.get("x-amz-sdk-checksum-algorithm", "").upper()
    if sdk:
        if sdk not in ALGORITHMS:
            raise errors.invalid_argument("Invalid checksum algorithm", "x-amz-sdk-checksum-algorithm", sdk)
        return sdk, None
    return None, None


_DIGEST_SIZES = {"CRC32": 4, "CRC32C": 4, "SHA1": 20, "SHA256": 32}


def _check_b64(algorithm: str, value: str) -> None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _DIGEST_SIZES[algorithm]:
        raise errors.invalid_request(f"Value for x-amz-checksum-{algorithm.lower()} header is invalid.")


def verify_upload(call: Call, staged: Staged, algorithm: str | None, expected: str | None) -> None:
    """Compare what was received with every integrity value the client declared."""
    if algorithm is not None:
        if expected is None:  # aws-chunked trailer
            expected = call.body.trailers.get(f"x-amz-checksum-{algorithm.lower()}")
            if expected is None:
                raise errors.invalid_request(f"The x-amz-checksum-{algorithm.lower()} trailer is missing.")
            _check_b64(algorithm, expected)
        if staged.checksums.get(algorithm) != expected:
            raise errors.bad_digest(algorithm)
    content_md5 = call.headers.get("content-md5")
    if content_md5 is not None:
        try:
            raw = base64.b64decode(content_md5, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 16:
            raise errors.S3Error(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")
        if raw.hex() != staged.md5_hex:
            raise errors.S3Error(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")


def reject_content_md5_on_directory(call: Call) -> None:
    if call.directory and "content-md5" in call.headers:
        raise errors.invalid_request("Content-MD5 is not supported for directory buckets; send an x-amz-checksum-* header instead.")


def body_checksum(data: bytes, algorithm: str) -> str:
    from ..checksums import b64, new_hasher

    hasher = new_hasher(algorithm)
    hasher.update(data)
    return b64(hasher.digest())


def require_integrity_header(call: Call, data: bytes) -> None:
    """DeleteObjects: S3 insists on a checksum (directory buckets) or Content-MD5 (general)."""
    algorithm, expected = requested_checksum(call)
    if algorithm is not None and expected is not None:
        if body_checksum(data, algorithm) != expected:
            raise errors.bad_digest(algorithm)
        return
    md5 = call.headers.get("content-md5")
    if md5 is not None and not call.directory:
        if base64.b64encode(hashlib.md5(data).digest()).decode() != md5:
            raise errors.S3Error(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")
        return
    wanted = "x-amz-checksum-*" if call.directory else "Content-MD5 OR x-amz-checksum-*"
    raise errors.invalid_request(f"Missing required header for this request: {wanted}")
