"""Bucket-level operations: CreateSession, listings, DeleteObjects, and bucket management."""

from __future__ import annotations

from .. import errors
from ..http import Response
from ..names import bucket_name_problem, is_directory_bucket, zone_of
from ..principals import MODES
from ..xmlio import document, element, elements, iso8601, parse, url_encode_key, child_text
from . import common
from .call import Call

MAX_XML_BODY = 2 * 1024 * 1024  # DeleteObjects with 1,000 keys of 1,024 bytes fits easily
MAX_DELETE_KEYS = 1000


def xml_response(root: str, inner: str, status: int = 200, extra: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, [("Content-Type", "application/xml"), *(extra or [])], document(root, inner))


def read_xml_body(call: Call) -> bytes:
    data = call.body.read(MAX_XML_BODY + 1)
    if len(data) > MAX_XML_BODY or call.body.read(1):
        raise errors.S3Error(400, "MaxMessageLengthExceeded", "Your request was too big.")
    return data


# --- sessions ----------------------------------------------------------------------------------

def create_session(call: Call) -> Response:
    if not call.directory:
        raise errors.invalid_request("CreateSession is only supported for directory buckets.")
    principal = call.caller.principal
    allowed = principal.modes_for(call.bucket_name)
    requested = call.headers.get("x-amz-create-session-mode")
    if requested is not None and requested not in MODES:
        raise errors.invalid_argument("Invalid session mode; expected ReadOnly or ReadWrite",
                                      "x-amz-create-session-mode", requested)
    if requested is None:  # S3 tries ReadWrite, then falls back to ReadOnly
        mode = "ReadWrite" if "ReadWrite" in allowed else "ReadOnly" if "ReadOnly" in allowed else None
    else:
        mode = requested if requested in allowed else None
    if mode is None:
        wanted = requested or "any"
        raise errors.access_denied(
            f"Principal {principal.name} is not allowed to create a {wanted} session on bucket {call.bucket_name} "
            f"(s3express:SessionMode allows: {', '.join(allowed) or 'none'}).")
    sse = call.headers.get("x-amz-server-side-encryption")
    if sse is not None and sse != "AES256":
        raise errors.invalid_argument("s3xfs-localzone supports only AES256 server-side encryption",
                                      "x-amz-server-side-encryption", sse)
    session = call.app.sessions.create(principal, call.bucket_name, mode)
    call.app.stats.session_created(mode)
    inner = ("<Credentials>" + element("SessionToken", session.token) + element("SecretAccessKey", session.secret_key)
             + element("AccessKeyId", session.access_key) + element("Expiration", _iso_seconds(session.expires_at))
             + "</Credentials>")
    return xml_response("CreateSessionResult", inner, extra=[("x-amz-server-side-encryption", "AES256")])


def _iso_seconds(timestamp: float) -> str:
    return iso8601(timestamp).split(".")[0] + "Z"


# --- buckets -----------------------------------------------------------------------------------

def list_buckets(call: Call) -> Response:
    # ListDirectoryBuckets is also `GET /`, sent to the control endpoint and signed for s3express.
    directory = call.query.get("x-id") == "ListDirectoryBuckets" or call.caller.credential.service == "s3express"
    buckets = [b for b in call.store.list_buckets() if b.directory == directory]
    items = "".join("<Bucket>" + element("Name", b.name) + element("CreationDate", iso8601(b.created))
                    + (element("BucketRegion", b.region)) + "</Bucket>" for b in buckets)
    owner = "<Owner>" + element("ID", call.app.settings.account_id) + element("DisplayName", call.caller.principal.name) + "</Owner>"
    root = "ListAllMyDirectoryBucketsResult" if directory else "ListAllMyBucketsResult"
    return xml_response(root, ("" if directory else owner) + "<Buckets>" + items + "</Buckets>")


def create_bucket(call: Call) -> Response:
    name = call.target_bucket
    problem = bucket_name_problem(name)
    if problem:
        raise errors.S3Error(400, "InvalidBucketName", f"The specified bucket is not valid: {problem}.", {"BucketName": name})
    call.app.authenticator.authorize_principal(call.caller.principal, name, write=True)
    directory = is_directory_bucket(name)
    data = read_xml_body(call)
    zone = zone_of(name)
    if data.strip():
        root = parse(data)
        location = root.find("Location")
        if directory and location is not None:
            wanted = child_text(location, "Name")
            if wanted and wanted != zone:
                raise errors.invalid_argument(f"The zone {wanted} in Location does not match the bucket name's zone {zone}.",
                                              "Location.Name", wanted)
        constraint = child_text(root, "LocationConstraint")
        if constraint and constraint != call.app.settings.region:
            raise errors.S3Error(400, "IllegalLocationConstraintException",
                                 f"The {constraint} location constraint is incompatible for the region specific endpoint this request was sent to.")
    info = call.store.create_bucket(name, directory=directory, region=call.app.settings.region, zone=zone)
    return Response(200, [("Location", f"/{info.name}")])


def head_bucket(call: Call) -> Response:
    bucket = call.bucket
    assert bucket is not None
    headers = [("x-amz-bucket-region", bucket.region)]
    if bucket.directory:
        headers += [
            ("x-amz-bucket-location-type", "AvailabilityZone"),
            ("x-amz-bucket-location-name", bucket.zone or ""),
            ("x-amz-bucket-arn", f"arn:aws:s3express:{bucket.region}:{call.app.settings.account_id}:bucket/{bucket.name}"),
        ]
    return Response(200, headers, head_only=True, length=0)


def delete_bucket(call: Call) -> Response:
    call.store.delete_bucket(call.bucket_name)
    return Response(204)


def get_bucket_location(call: Call) -> Response:
    region = call.bucket.region if call.bucket else ""
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{"" if region == "us-east-1" else region}</LocationConstraint>'
    return Response(200, [("Content-Type", "application/xml")], body.encode())


def get_bucket_versioning(call: Call) -> Response:
    return xml_response("VersioningConfiguration", "")


def unsupported(call: Call) -> Response:
    names = ", ".join(sorted(call.query)) or call.request.method
    raise errors.not_implemented(f"This subresource ({names}) is not implemented by s3xfs-localzone.")


# --- listings ----------------------------------------------------------------------------------

def _max_keys(call: Call, name: str = "max-keys") -> int:
    raw = call.query.get(name, "1000")
    try:
        value = int(raw)
        if value < 0:
            raise ValueError
    except ValueError:
        raise errors.invalid_argument(f"Provided {name} not an integer or within integer range", name, raw) from None
    return min(value, 1000)


def _encoder(call: Call):
    encoding = call.query.get("encoding-type")
    if encoding is not None and encoding != "url":
        raise errors.invalid_argument("Invalid Encoding Method specified in Request", "encoding-type", encoding)
    return (url_encode_key if encoding == "url" else (lambda key: key)), encoding


def _contents(call: Call, objects, encode, owner: bool) -> str:
    owner_xml = ("<Owner>" + element("ID", call.app.settings.account_id) + element("DisplayName", "owner") + "</Owner>") if owner else ""
    parts = []
    for meta in objects:
        checksum = (element("ChecksumAlgorithm", meta.checksum_algorithm) + elements([("ChecksumType", meta.checksum_type)])
                    if meta.checksum_algorithm else "")
        parts.append("<Contents>" + element("Key", encode(meta.key)) + element("LastModified", iso8601(meta.last_modified))
                     + element("ETag", common.quoted(meta.etag)) + checksum + element("Size", meta.size)
                     + owner_xml + element("StorageClass", meta.storage_class) + "</Contents>")
    return "".join(parts)


def _prefixes(prefixes, encode) -> str:
    return "".join("<CommonPrefixes>" + element("Prefix", encode(p)) + "</CommonPrefixes>" for p in prefixes)


def list_objects_v2(call: Call) -> Response:
    encode, encoding = _encoder(call)
    max_keys = _max_keys(call)
    prefix = call.query.get("prefix", "")
    delimiter = call.query.get("delimiter") or None
    token = call.query.get("continuation-token")
    start_after = call.query.get("start-after")
    listing = call.store.list_objects(call.bucket_name, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
                                      token=token, start_after=start_after)
    owner = call.query.get("fetch-owner") == "true" and not call.directory
    inner = (element("Name", call.bucket_name) + element("Prefix", encode(prefix))
             + (element("Delimiter", encode(delimiter)) if delimiter else "") + element("MaxKeys", max_keys)
             + (element("EncodingType", encoding) if encoding else "")
             + element("KeyCount", len(listing.contents) + len(listing.common_prefixes))
             + element("IsTruncated", "true" if listing.truncated else "false")
             + (element("ContinuationToken", token) if token is not None else "")
             + (element("NextContinuationToken", listing.next_token) if listing.truncated and listing.next_token else "")
             + (element("StartAfter", encode(start_after)) if start_after else "")
             + _contents(call, listing.contents, encode, owner) + _prefixes(listing.common_prefixes, encode))
    return xml_response("ListBucketResult", inner)


def list_objects_v1(call: Call) -> Response:
    if call.directory:
        raise errors.not_implemented("ListObjects (version 1) is not supported for directory buckets; use ListObjectsV2.")
    encode, encoding = _encoder(call)
    max_keys = _max_keys(call)
    prefix = call.query.get("prefix", "")
    delimiter = call.query.get("delimiter") or None
    marker = call.query.get("marker", "")
    listing = call.store.list_objects_v1(call.bucket_name, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
                                         marker=marker or None)
    inner = (element("Name", call.bucket_name) + element("Prefix", encode(prefix)) + element("Marker", encode(marker))
             + (element("NextMarker", encode(listing.next_token)) if listing.truncated and delimiter and listing.next_token else "")
             + element("MaxKeys", max_keys) + (element("Delimiter", encode(delimiter)) if delimiter else "")
             + (element("EncodingType", encoding) if encoding else "")
             + element("IsTruncated", "true" if listing.truncated else "false")
             + _contents(call, listing.contents, encode, True) + _prefixes(listing.common_prefixes, encode))
    return xml_response("ListBucketResult", inner)


def delete_objects(call: Call) -> Response:
    data = read_xml_body(call)
    common.require_integrity_header(call, data)
    root = parse(data)
    if root.tag != "Delete":
        raise errors.malformed_xml()
    quiet = (child_text(root, "Quiet") or "").strip().lower() == "true"
    objects = root.findall("Object")
    if not objects or len(objects) > MAX_DELETE_KEYS:
        raise errors.malformed_xml()
    results = []
    for node in objects:
        key = child_text(node, "Key")
        if not key:
            raise errors.malformed_xml()
        etag = child_text(node, "ETag")
        try:
            common.check_key(key)
            precondition = None
            if etag:
                def precondition(existing, etag=etag, key=key):
                    if existing is None:
                        raise errors.no_such_key(key)
                    if not common.etag_matches(etag, existing.etag):
                        raise errors.precondition_failed("ETag")
            call.store.delete(call.bucket_name, key, precondition=precondition)
            if not quiet:
                results.append("<Deleted>" + element("Key", key) + "</Deleted>")
        except errors.S3Error as exc:
            results.append("<Error>" + element("Key", key) + element("Code", exc.code) + element("Message", exc.message) + "</Error>")
    return xml_response("DeleteResult", "".join(results))
