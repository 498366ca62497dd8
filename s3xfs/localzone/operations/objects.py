"""Single-object operations: Put (and append), Get, Head, Delete, Copy, Rename, GetObjectAttributes."""

from __future__ import annotations

import threading
import time
from urllib.parse import unquote

from .. import errors
from ..http import Response, http_date
from ..xmlio import document, element, elements, iso8601
from . import common
from .call import Call

# RenameObject idempotency tokens are remembered this long (S3 does not document its window).
CLIENT_TOKEN_SECONDS = 600


def put_object(call: Call) -> Response:
    common.check_key(call.key)
    common.check_storage_class(call)
    common.reject_content_md5_on_directory(call)
    offset_header = call.headers.get("x-amz-write-offset-bytes")
    if offset_header is not None:
        return _append(call, offset_header)
    content_type, stored, user = common.request_metadata(call)
    algorithm, expected = common.requested_checksum(call)
    conditions = common.write_precondition(call.headers, call.key)
    if conditions:
        conditions[0](call.store.head(call.bucket_name, call.key))
    staged = call.store.stage(call.body, [algorithm] if algorithm else [], max_size=common.MAX_OBJECT_SIZE)
    try:
        common.verify_upload(call, staged, algorithm, expected)
        meta = call.store.put(
            call.bucket_name, call.key, staged, content_type=content_type, headers=stored, user_metadata=user,
            checksum_algorithm=algorithm, checksum=staged.checksums.get(algorithm) if algorithm else None,
            checksum_type="FULL_OBJECT" if algorithm else None,
            precondition=conditions[1] if conditions else None,
        )
    except BaseException:
        staged.discard()
        raise
    return Response(200, _write_headers(call, meta.etag, algorithm, meta.checksum))


def _append(call: Call, offset_header: str) -> Response:
    if not call.directory:
        raise errors.not_implemented("A header you provided implies functionality that is not implemented: "
                                     "x-amz-write-offset-bytes (appends need a directory bucket)")
    try:
        offset = int(offset_header)
        if offset < 0:
            raise ValueError
    except ValueError:
        raise errors.invalid_argument("x-amz-write-offset-bytes must be a non-negative integer",
                                      "x-amz-write-offset-bytes", offset_header) from None
    algorithm, expected = common.requested_checksum(call)
    conditions = common.write_precondition(call.headers, call.key)
    if conditions:
        conditions[0](call.store.head(call.bucket_name, call.key))
    staged = call.store.stage(call.body, [algorithm] if algorithm else [], max_size=common.MAX_OBJECT_SIZE)
    try:
        common.verify_upload(call, staged, algorithm, expected)
        content_type, stored, user = common.request_metadata(call)
        meta = call.store.append(
            call.bucket_name, call.key, staged, offset=offset,
            content_type=content_type, headers=stored, user_metadata=user,
            precondition=conditions[1] if conditions else None,
        )
    except BaseException:
        staged.discard()
        raise
    headers = _write_headers(call, meta.etag, meta.checksum_algorithm, meta.checksum)
    headers.append(("x-amz-object-size", str(meta.size)))
    return Response(200, headers)


def _write_headers(call: Call, etag: str, algorithm: str | None, checksum: str | None) -> list[tuple[str, str]]:
    headers = [("ETag", common.quoted(etag))]
    if algorithm and checksum:
        headers.append((f"x-amz-checksum-{algorithm.lower()}", checksum))
    if call.directory:
        headers.append(("x-amz-server-side-encryption", "AES256"))
    return headers


def get_object(call: Call) -> Response:
    return _read(call, head=False)


def head_object(call: Call) -> Response:
    return _read(call, head=True)


def _read(call: Call, head: bool) -> Response:
    common.check_key(call.key)
    reader = call.store.open(call.bucket_name, call.key)
    if reader is None:
        raise errors.no_such_key(call.key)
    try:
        meta = reader.meta
        verdict = common.read_conditions(call.headers, meta)
        if verdict == 304:
            reader.close()
            return Response(304, [("ETag", common.quoted(meta.etag)), ("Last-Modified", http_date(meta.last_modified))])
        if verdict == 412:
            raise errors.precondition_failed("If-Match" if "if-match" in call.headers else "If-Unmodified-Since")
        checksum_mode = call.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED"
        headers = common.object_headers(call, meta, checksum=checksum_mode)
        status, start, length = 200, 0, meta.size
        part = call.query.get("partNumber")
        range_header = call.headers.get("range")
        if part is not None:
            if range_header:
                raise errors.invalid_request("Cannot specify both Range header and partNumber query parameter")
            start, length = _part_range(meta, part)
            status = 206 if meta.multipart else 200
            if not any(n == "x-amz-mp-parts-count" for n, _ in headers):
                headers.append(("x-amz-mp-parts-count", str(len(meta.part_sizes))))
        elif range_header:
            chosen = common.parse_range(range_header, meta.size)
            if chosen is not None:
                start, length = chosen
                status = 206
        if status == 206:
            headers = [(n, v) for n, v in headers if not n.lower().startswith("x-amz-checksum")] if range_header else headers
            headers.append(("Content-Range", f"bytes {start}-{start + length - 1}/{meta.size}"))
        headers = common.apply_overrides(call, headers)
        if head:
            reader.close()
            return Response(status, headers, length=length, head_only=True)
        return Response(status, headers, pieces=reader.pieces(start, length), length=length, on_close=reader.close)
    except BaseException:
        reader.close()
        raise


def _part_range(meta, part: str) -> tuple[int, int]:
    try:
        number = int(part)
    except ValueError:
        number = 0
    if not 1 <= number <= 10000:
        raise errors.invalid_argument("Part number must be an integer between 1 and 10000, inclusive", "partNumber", part)
    if number > len(meta.part_sizes) or (number > 1 and not meta.multipart):
        raise errors.S3Error(416, "InvalidPartNumber", "The requested partnumber is not satisfiable",
                             {"PartNumberRequested": part, "ActualPartCount": str(len(meta.part_sizes))})
    start = sum(meta.part_sizes[: number - 1])
    return start, meta.part_sizes[number - 1]


def delete_object(call: Call) -> Response:
    common.check_key(call.key)
    call.store.delete(call.bucket_name, call.key, precondition=_delete_precondition(call.headers, call.key))
    return Response(204)


def _delete_precondition(headers: dict[str, str], key: str):
    if_match = headers.get("if-match")
    mtime = headers.get("x-amz-if-match-last-modified-time")
    size = headers.get("x-amz-if-match-size")
    if if_match is None and mtime is None and size is None:
        return None
    wanted_mtime = common.parse_http_date(mtime) if mtime is not None else None
    if mtime is not None and wanted_mtime is None:
        raise errors.invalid_argument("Invalid x-amz-if-match-last-modified-time", "x-amz-if-match-last-modified-time", mtime)
    try:
        wanted_size = int(size) if size is not None else None
    except ValueError:
        raise errors.invalid_argument("Invalid x-amz-if-match-size", "x-amz-if-match-size", size or "") from None

    def check(existing) -> None:
        if existing is None:
            raise errors.no_such_key(key)
        if if_match is not None and not common.etag_matches(if_match, existing.etag):
            raise errors.precondition_failed("If-Match")
        if wanted_mtime is not None and int(existing.last_modified) != int(wanted_mtime):
            raise errors.precondition_failed("x-amz-if-match-last-modified-time")
        if wanted_size is not None and existing.size != wanted_size:
            raise errors.precondition_failed("x-amz-if-match-size")

    return check


def copy_source(call: Call, header: str = "x-amz-copy-source"):
    """Open the copy source named by ``header`` after checking access and its conditions."""
    raw = call.headers[header]
    source = unquote(raw)
    path, _, version = source.partition("?")
    if version and version not in ("versionId=null",):
        raise errors.S3Error(400, "InvalidArgument", "Versioning is not supported by s3xfs-localzone")
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or not key:
        raise errors.invalid_argument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                                      "x-amz-copy-source", raw)
    info = call.store.get_bucket(bucket)
    if info is None:
        raise errors.no_such_bucket(bucket)
    call.app.authenticator.authorize_principal(call.caller.principal, bucket, write=False)
    reader = call.store.open(bucket, key)
    if reader is None:
        raise errors.no_such_key(key)
    verdict = common.read_conditions(call.headers, reader.meta, prefix="x-amz-copy-source-")
    if verdict is not None:
        reader.close()
        raise errors.precondition_failed("x-amz-copy-source-if-match")
    return info, key, reader


def copy_object(call: Call) -> Response:
    common.check_key(call.key)
    common.check_storage_class(call)
    directive = call.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise errors.invalid_argument("Unknown metadata directive.", "MetadataDirective", directive)
    source_bucket, source_key, reader = copy_source(call)
    try:
        meta = reader.meta
        if source_bucket.name == call.bucket_name and source_key == call.key and directive == "COPY":
            raise errors.invalid_request(
                "This copy request is illegal because it is trying to copy an object to itself without changing "
                "the object's metadata, storage class, website redirect location or encryption attributes.")
        if meta.size > common.MAX_OBJECT_SIZE:
            raise errors.invalid_request("The specified copy source is larger than the maximum allowable size for a copy source: 5368709120")
        if directive == "REPLACE":
            content_type, stored, user = common.request_metadata(call)
        else:
            content_type, stored, user = meta.content_type, dict(meta.headers), dict(meta.user_metadata)
        algorithm = call.headers.get("x-amz-checksum-algorithm", "").upper() or meta.checksum_algorithm
        if algorithm == "CRC64NVME":
            raise errors.invalid_request("CRC64NVME checksums are not implemented by s3xfs-localzone.")
        conditions = common.write_precondition(call.headers, call.key)
        if conditions:
            conditions[0](call.store.head(call.bucket_name, call.key))
        staged = call.store.stage_range(reader, 0, meta.size, [algorithm] if algorithm else [])
    finally:
        reader.close()
    try:
        result = call.store.put(
            call.bucket_name, call.key, staged, content_type=content_type, headers=stored, user_metadata=user,
            checksum_algorithm=algorithm, checksum=staged.checksums.get(algorithm) if algorithm else None,
            checksum_type="FULL_OBJECT" if algorithm else None,
            precondition=conditions[1] if conditions else None,
        )
    except BaseException:
        staged.discard()
        raise
    inner = element("ETag", common.quoted(result.etag)) + element("LastModified", iso8601(result.last_modified))
    if algorithm and result.checksum:
        inner += element(f"Checksum{algorithm}", result.checksum) + element("ChecksumType", "FULL_OBJECT")
    headers = [("Content-Type", "application/xml")]
    if call.directory:
        headers.append(("x-amz-server-side-encryption", "AES256"))
    return Response(200, headers, document("CopyObjectResult", inner))


class _ClientTokens:
    """RenameObject idempotency: a repeated x-amz-client-token replays the earlier success."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, str, str, str]] = {}
        self._lock = threading.Lock()

    def replay(self, token: str, bucket: str, source: str, dest: str) -> bool:
        now = time.time()
        with self._lock:
            for stale in [t for t, (when, *_rest) in self._seen.items() if now - when > CLIENT_TOKEN_SECONDS]:
                del self._seen[stale]
            seen = self._seen.get(token)
        if seen is None:
            return False
        if seen[1:] != (bucket, source, dest):
            raise errors.S3Error(400, "IdempotencyParameterMismatch",
                                 "The client token was already used with different parameters.")
        return True

    def remember(self, token: str, bucket: str, source: str, dest: str) -> None:
        with self._lock:
            self._seen[token] = (time.time(), bucket, source, dest)


CLIENT_TOKENS = _ClientTokens()


def rename_object(call: Call) -> Response:
    if not call.directory:
        raise errors.not_implemented("RenameObject is supported only for directory buckets.")
    raw = call.headers.get("x-amz-rename-source")
    if not raw:
        raise errors.invalid_request("Missing required header for this request: x-amz-rename-source")
    source = unquote(raw)
    if source.startswith("/"):  # tolerate "/bucket/key" and "bucket/key" forms naming this bucket
        source = source[1:]
    if source.startswith(call.bucket_name + "/"):
        source = source[len(call.bucket_name) + 1:]
    common.check_key(call.key)
    common.check_key(source)
    if source.endswith("/") or call.key.endswith("/"):
        raise errors.invalid_argument("Keys ending in '/' (directories) cannot be renamed.", "x-amz-rename-source", raw)
    token = call.headers.get("x-amz-client-token")
    if token and CLIENT_TOKENS.replay(token, call.bucket_name, source, call.key):
        return Response(200)
    dest_check = _rename_conditions(call.headers, "", "If-")
    source_check = _rename_conditions(call.headers, "x-amz-rename-source-", "x-amz-rename-source-if-")
    call.store.rename(call.bucket_name, source, call.key, src_precondition=source_check, dst_precondition=dest_check)
    if token:
        CLIENT_TOKENS.remember(token, call.bucket_name, source, call.key)
    return Response(200)


def _rename_conditions(headers: dict[str, str], prefix: str, label: str):
    if_match = headers.get(prefix + "if-match")
    if_none = headers.get(prefix + "if-none-match")
    since = headers.get(prefix + "if-modified-since")
    unmodified = headers.get(prefix + "if-unmodified-since")
    if not any(v is not None for v in (if_match, if_none, since, unmodified)):
        return None
    is_source = bool(prefix)

    def check(existing) -> None:
        if existing is None:
            if is_source:
                return  # the store answers a missing source with 404 NoSuchKey
            if if_match is not None:
                raise errors.precondition_failed("If-Match")
            return
        if if_match is not None and not common.etag_matches(if_match, existing.etag):
            raise errors.precondition_failed(label + "Match")
        if if_none is not None and common.etag_matches(if_none, existing.etag):
            raise errors.precondition_failed(label + "None-Match")
        modified_at = int(existing.last_modified)
        if since is not None:
            limit = common.parse_http_date(since)
            if limit is not None and modified_at <= limit:
                raise errors.precondition_failed(label + "Modified-Since")
        if unmodified is not None:
            limit = common.parse_http_date(unmodified)
            if limit is not None and modified_at > limit:
                raise errors.precondition_failed(label + "Unmodified-Since")

    return check


ATTRIBUTE_NAMES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")


def get_object_attributes(call: Call) -> Response:
    common.check_key(call.key)
    wanted = [a.strip() for a in call.headers.get("x-amz-object-attributes", "").split(",") if a.strip()]
    if not wanted:
        raise errors.invalid_argument("Missing required header: x-amz-object-attributes", "x-amz-object-attributes", "")
    unknown = [a for a in wanted if a not in ATTRIBUTE_NAMES]
    if unknown:
        raise errors.invalid_argument("Invalid attribute name specified.", "x-amz-object-attributes", unknown[0])
    meta = call.store.head(call.bucket_name, call.key)
    if meta is None:
        raise errors.no_such_key(call.key)
    verdict = common.read_conditions(call.headers, meta)
    if verdict is not None:
        raise errors.precondition_failed("If-Match")
    inner = ""
    if "ETag" in wanted:
        inner += element("ETag", meta.etag)
    if "Checksum" in wanted and meta.checksum and meta.checksum_algorithm:
        inner += "<Checksum>" + element(f"Checksum{meta.checksum_algorithm}", meta.checksum) + elements(
            [("ChecksumType", meta.checksum_type)]) + "</Checksum>"
    if "ObjectParts" in wanted and meta.multipart:
        inner += _object_parts(call, meta)
    if "StorageClass" in wanted:
        inner += element("StorageClass", meta.storage_class)
    if "ObjectSize" in wanted:
        inner += element("ObjectSize", meta.size)
    headers = [("Last-Modified", http_date(meta.last_modified)), ("Content-Type", "application/xml")]
    return Response(200, headers, document("GetObjectAttributesResponse", inner))


def _object_parts(call: Call, meta) -> str:
    try:
        max_parts = int(call.headers.get("x-amz-max-parts", "1000"))
        marker = int(call.headers.get("x-amz-part-number-marker", "0"))
    except ValueError:
        raise errors.invalid_argument("x-amz-max-parts and x-amz-part-number-marker must be integers") from None
    max_parts = max(0, min(max_parts, 1000))
    numbers = list(range(marker + 1, len(meta.part_sizes) + 1))
    page = numbers[:max_parts]
    truncated = len(numbers) > len(page)
    parts = "".join(
        "<Part>" + element("PartNumber", n) + element("Size", meta.part_sizes[n - 1]) + "</Part>" for n in page)
    return ("<ObjectParts>" + element("PartsCount", len(meta.part_sizes)) + element("PartNumberMarker", marker)
            + element("NextPartNumberMarker", page[-1] if page else marker) + element("MaxParts", max_parts)
            + element("IsTruncated", "true" if truncated else "false") + parts + "</ObjectParts>")
