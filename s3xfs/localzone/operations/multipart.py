"""Multipart uploads: create, upload part (and part copy), complete, abort, list parts and uploads."""

from __future__ import annotations

from .. import errors
from ..http import Response
from ..xmlio import child_text, element, elements, iso8601, parse, url_encode_key
from . import common
from .buckets import read_xml_body, xml_response
from .call import Call
from .objects import copy_source

MAX_PART_NUMBER = 10000


def create_multipart_upload(call: Call) -> Response:
    common.check_key(call.key)
    common.check_storage_class(call)
    content_type, stored, user = common.request_metadata(call)
    algorithm = call.headers.get("x-amz-checksum-algorithm", "").upper() or None
    if algorithm == "CRC64NVME":
        raise errors.invalid_request("CRC64NVME checksums are not implemented by s3xfs-localzone.")
    if algorithm is not None and algorithm not in ("CRC32", "CRC32C", "SHA1", "SHA256"):
        raise errors.invalid_argument("Invalid checksum algorithm", "x-amz-checksum-algorithm", algorithm)
    checksum_type = call.headers.get("x-amz-checksum-type", "COMPOSITE" if algorithm else "").upper() or None
    if checksum_type not in (None, "COMPOSITE"):
        raise errors.not_implemented("Only COMPOSITE multipart checksums are implemented by s3xfs-localzone.")
    upload_id = call.store.create_upload(call.bucket_name, call.key, content_type=content_type, headers=stored,
                                         user_metadata=user, checksum_algorithm=algorithm, checksum_type=checksum_type)
    inner = element("Bucket", call.bucket_name) + element("Key", call.key) + element("UploadId", upload_id)
    extra = [("x-amz-checksum-algorithm", algorithm)] if algorithm else []
    if checksum_type:
        extra.append(("x-amz-checksum-type", checksum_type))
    return xml_response("InitiateMultipartUploadResult", inner, extra=extra)


def _upload(call: Call):
    upload_id = call.query.get("uploadId", "")
    upload = call.store.get_upload(call.bucket_name, upload_id)
    if upload is None or upload.key != call.key:
        raise errors.no_such_upload(upload_id)
    return upload


def _part_number(call: Call) -> int:
    raw = call.query.get("partNumber", "")
    try:
        number = int(raw)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PART_NUMBER:
        raise errors.invalid_argument("Part number must be an integer between 1 and 10000, inclusive", "partNumber", raw)
    return number


def upload_part(call: Call) -> Response:
    number = _part_number(call)
    upload = _upload(call)
    common.reject_content_md5_on_directory(call)
    algorithm, expected = common.requested_checksum(call)
    if upload.checksum_algorithm and algorithm and algorithm != upload.checksum_algorithm:
        raise errors.invalid_request(f"Checksum Type mismatch occurred, expected checksum Type: {upload.checksum_algorithm.lower()}, "
                                     f"actual checksum Type: {algorithm.lower()}")
    wanted = algorithm or upload.checksum_algorithm
    staged = call.store.stage(call.body, [wanted] if wanted else [], max_size=common.MAX_OBJECT_SIZE)
    try:
        common.verify_upload(call, staged, algorithm, expected)
        part = call.store.put_part(call.bucket_name, upload.upload_id, number, staged,
                                   checksum=staged.checksums.get(wanted) if wanted else None)
    except BaseException:
        staged.discard()
        raise
    headers = [("ETag", common.quoted(part.etag))]
    if wanted and part.checksum:
        headers.append((f"x-amz-checksum-{wanted.lower()}", part.checksum))
    if call.directory:
        headers.append(("x-amz-server-side-encryption", "AES256"))
    return Response(200, headers)


def upload_part_copy(call: Call) -> Response:
    number = _part_number(call)
    upload = _upload(call)
    _bucket, _key, reader = copy_source(call)
    try:
        size = reader.meta.size
        start, length = 0, size
        spec = call.headers.get("x-amz-copy-source-range")
        if spec is not None:
            start, length = _copy_range(spec, size)
        if length > common.MAX_OBJECT_SIZE:
            raise errors.invalid_request("The specified copy range is larger than the maximum part size of 5 GiB.")
        algorithm = upload.checksum_algorithm
        staged = call.store.stage_range(reader, start, length, [algorithm] if algorithm else [])
    finally:
        reader.close()
    try:
        part = call.store.put_part(call.bucket_name, upload.upload_id, number, staged,
                                   checksum=staged.checksums.get(algorithm) if algorithm else None)
    except BaseException:
        staged.discard()
        raise
    inner = element("ETag", common.quoted(part.etag)) + element("LastModified", iso8601(part.last_modified))
    if algorithm and part.checksum:
        inner += element(f"Checksum{algorithm}", part.checksum)
    return xml_response("CopyPartResult", inner)


def _copy_range(spec: str, size: int) -> tuple[int, int]:
    message = ("The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are "
               "the zero-based offsets of the first and last bytes to copy")
    unit, _, span = spec.partition("=")
    first, dash, last = span.partition("-")
    try:
        if unit != "bytes" or not dash:
            raise ValueError
        start, end = int(first), int(last)
    except ValueError:
        raise errors.invalid_argument(message, "x-amz-copy-source-range", spec) from None
    if start < 0 or end < start:
        raise errors.invalid_argument(message, "x-amz-copy-source-range", spec)
    if end >= size:
        raise errors.S3Error(400, "InvalidRange", "The requested range is not satisfiable",
                             {"RangeRequested": spec, "ActualObjectSize": str(size)})
    return start, end - start + 1


def complete_multipart_upload(call: Call) -> Response:
    upload = _upload(call)
    data = read_xml_body(call)
    root = parse(data)
    if root.tag != "CompleteMultipartUpload":
        raise errors.malformed_xml()
    parts: list[tuple[int, str]] = []
    declared: dict[int, str] = {}
    for node in root.findall("Part"):
        number_text, etag = child_text(node, "PartNumber"), child_text(node, "ETag")
        try:
            number = int(number_text or "")
        except ValueError:
            raise errors.malformed_xml() from None
        if etag is None:
            raise errors.malformed_xml()
        parts.append((number, etag.strip().strip('"')))
        if upload.checksum_algorithm:
            value = child_text(node, f"Checksum{upload.checksum_algorithm}")
            if value:
                declared[number] = value
    if not parts:
        raise errors.malformed_xml()
    if declared:
        stored = {p.number: p.checksum for p in _all_parts(call, upload.upload_id)}
        for number, value in declared.items():
            if stored.get(number) not in (None, value):
                raise errors.S3Error(400, "InvalidPart",
                                     "One or more of the specified parts could not be found. The part may not have been "
                                     "uploaded, or the specified entity tag may not match the part's entity tag.",
                                     {"PartNumber": str(number)})
    conditions = common.write_precondition(call.headers, call.key)
    if conditions:
        conditions[0](call.store.head(call.bucket_name, call.key))
    meta = call.store.complete_upload(call.bucket_name, upload.upload_id, parts,
                                      precondition=conditions[1] if conditions else None)
    inner = (element("Location", f"/{call.bucket_name}/{url_encode_key(call.key)}") + element("Bucket", call.bucket_name)
             + element("Key", call.key) + element("ETag", common.quoted(meta.etag)))
    if meta.checksum and meta.checksum_algorithm:
        inner += element(f"Checksum{meta.checksum_algorithm}", meta.checksum) + elements([("ChecksumType", meta.checksum_type)])
    extra = [("x-amz-server-side-encryption", "AES256")] if call.directory else []
    return xml_response("CompleteMultipartUploadResult", inner, extra=extra)


def _all_parts(call: Call, upload_id: str):
    marker, out = 0, []
    while True:
        parts, truncated, marker = call.store.list_parts(call.bucket_name, upload_id, marker=marker, max_parts=1000)
        out.extend(parts)
        if not truncated:
            return out


def abort_multipart_upload(call: Call) -> Response:
    upload = _upload(call)
    call.store.abort_upload(call.bucket_name, upload.upload_id)
    return Response(204)


def list_parts(call: Call) -> Response:
    upload = _upload(call)
    try:
        max_parts = min(int(call.query.get("max-parts", "1000")), 1000)
        marker = int(call.query.get("part-number-marker", "0"))
        if max_parts < 0 or marker < 0:
            raise ValueError
    except ValueError:
        raise errors.invalid_argument("max-parts and part-number-marker must be non-negative integers") from None
    parts, truncated, next_marker = call.store.list_parts(call.bucket_name, upload.upload_id, marker=marker, max_parts=max_parts)
    algorithm = upload.checksum_algorithm
    items = "".join(
        "<Part>" + element("PartNumber", p.number) + element("LastModified", iso8601(p.last_modified))
        + element("ETag", common.quoted(p.etag)) + element("Size", p.size)
        + (element(f"Checksum{algorithm}", p.checksum) if algorithm and p.checksum else "") + "</Part>"
        for p in parts)
    storage = "EXPRESS_ONEZONE" if call.directory else "STANDARD"
    inner = (element("Bucket", call.bucket_name) + element("Key", call.key) + element("UploadId", upload.upload_id)
             + element("PartNumberMarker", marker) + element("NextPartNumberMarker", next_marker)
             + element("MaxParts", max_parts) + element("IsTruncated", "true" if truncated else "false")
             + items + element("StorageClass", storage)
             + (element("ChecksumAlgorithm", algorithm) if algorithm else ""))
    return xml_response("ListPartsResult", inner)


def list_multipart_uploads(call: Call) -> Response:
    encoding = call.query.get("encoding-type")
    if encoding is not None and encoding != "url":
        raise errors.invalid_argument("Invalid Encoding Method specified in Request", "encoding-type", encoding)
    encode = url_encode_key if encoding == "url" else (lambda key: key)
    try:
        max_uploads = min(int(call.query.get("max-uploads", "1000")), 1000)
        if max_uploads < 0:
            raise ValueError
    except ValueError:
        raise errors.invalid_argument("max-uploads must be a non-negative integer") from None
    prefix = call.query.get("prefix", "")
    delimiter = call.query.get("delimiter") or None
    key_marker = call.query.get("key-marker") or None
    upload_id_marker = call.query.get("upload-id-marker") or None
    listing = call.store.list_uploads(call.bucket_name, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
                                      upload_id_marker=upload_id_marker, max_uploads=max_uploads)
    storage = "EXPRESS_ONEZONE" if call.directory else "STANDARD"
    items = "".join(
        "<Upload>" + element("Key", encode(u.key)) + element("UploadId", u.upload_id)
        + element("Initiated", iso8601(u.initiated)) + element("StorageClass", storage)
        + (element("ChecksumAlgorithm", u.checksum_algorithm) if u.checksum_algorithm else "") + "</Upload>"
        for u in listing.uploads)
    prefixes = "".join("<CommonPrefixes>" + element("Prefix", encode(p)) + "</CommonPrefixes>" for p in listing.common_prefixes)
    inner = (element("Bucket", call.bucket_name) + element("KeyMarker", encode(key_marker or ""))
             + element("UploadIdMarker", upload_id_marker or "")
             + (element("NextKeyMarker", encode(listing.next_key_marker or "")) if listing.truncated else "")
             + (element("NextUploadIdMarker", listing.next_upload_id_marker or "") if listing.truncated else "")
             + element("Prefix", encode(prefix)) + (element("Delimiter", delimiter) if delimiter else "")
             + element("MaxUploads", max_uploads) + (element("EncodingType", encoding) if encoding else "")
             + element("IsTruncated", "true" if listing.truncated else "false") + items + prefixes)
    return xml_response("ListMultipartUploadsResult", inner)
