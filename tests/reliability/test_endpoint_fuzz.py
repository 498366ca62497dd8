"""The local endpoint fed malformed requests and signatures over raw HTTP.

Every hostile request gets a proper S3 error (an XML document with a Code, under the right HTTP
status) or, for bytes that are not HTTP, a 400 and a closed connection; never a 500 from an
unexpected exception, never a dead server, and never a write. Hypothesis builds the requests:

- well-formed requests of every mutating operation, correctly signed (each is checked to succeed
  as it is, on keys of its own), then broken in a way the signature covers: signature, date,
  credential scope, signed headers removed, changed or repeated, body, path, method, query,
  Authorization syntax, Content-Length; plus harmless noise (junk and huge unsigned headers);
- requests signed correctly but refused: unknown or foreign session tokens, ReadOnly sessions
  writing, bad x-amz-content-sha256 values, the wrong service, an old date;
- aws-chunked and HTTP chunked bodies whose framing lies;
- bodies of DeleteObjects, CompleteMultipartUpload and CreateSession that are bad XML;
- bytes that are barely HTTP: bad request lines, header lines, huge headers;
- keys with path traversal, which are keys like any other and reach nothing else.

After each request the access log must show no 500 and no mutating operation that succeeded,
the server must still be running; after each test the buckets (objects, ETags, uploads and
their parts, the bucket list) are exactly as before and a good request is still answered.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
import socket
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unittest import mock

from botocore.auth import S3ExpressQueryAuth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from s3xfs.localzone.stats import MUTATING_OPERATIONS
from tests.support.signing import Reply
from tests.support.localzone import (ACCESS_KEY, DIRECTORY_BUCKET as DIR, GENERAL_BUCKET as GENERAL, REGION, SECRET_KEY,
                                     LocalZone)

SOCKET_TIMEOUT = 10.0  # seconds; a server that needs longer after our half-close is hanging
# Per test: each example is one connection on loopback; these keep the file to a few seconds. The
# function-scoped `unchanged` fixture is meant to wrap all examples of a test, not each one.
SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SPARES = ("sanity-spare--usw2-az1--x-s3", "victim-spare--usw2-az1--x-s3")  # for DeleteBucket
BODY = b"a hostile write attempt\n"

# --------------------------------------------------------------------------------------------
# Requests as bytes


@dataclass(frozen=True)
class Raw:
    """An HTTP request exactly as it will go on the wire (header order and case kept)."""

    method: str
    path: str  # raw, percent-encoded
    query: str  # raw, '' for none
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    content_length: str | None = "auto"  # 'auto': len(body); None: no header; else sent as is
    head: bool = False  # a HEAD request: its response has no body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def with_header(self, name: str, value: str | None) -> "Raw":
        """Replace (or with None remove) every ``name`` header; add it if absent."""
        kept = tuple((k, v) for k, v in self.headers if k.lower() != name.lower())
        return replace(self, headers=kept if value is None else kept + ((name, value),))

    @property
    def signed_headers(self) -> list[str]:
        match = re.search(r"SignedHeaders=([^,\s]+)", self.header("authorization") or "")
        return match.group(1).split(";") if match else []

    def to_bytes(self) -> bytes:
        target = self.path + (f"?{self.query}" if self.query else "")
        lines = [f"{self.method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in self.headers]
        if self.content_length == "auto":
            if self.body or self.method in ("PUT", "POST"):
                lines.append(f"Content-Length: {len(self.body)}")
        elif self.content_length is not None:
            lines.append(f"Content-Length: {self.content_length}")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + self.body


@dataclass
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


@dataclass
class Zone:
    """The module's endpoint, what it holds, and the credentials the builders sign with."""

    server: LocalZone
    iam: Credentials
    rw: Credentials  # a ReadWrite session on DIR
    ro: Credentials  # a ReadOnly session on DIR
    foreign: Credentials  # a ReadWrite session on another bucket
    uploads: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # name -> (bucket, key, upload id)
    part_etags: dict[str, str] = field(default_factory=dict)  # name -> ETag of its part 1
    log_offset: int = 0

    @property
    def netloc(self) -> str:
        return urlsplit(self.server.url).netloc


class ChosenPayload(S3SigV4Auth):
    """botocore's S3 signer, but x-amz-content-sha256 is what the test says (botocore always
    puts the body's own SHA-256 there, so a lying hash could not otherwise be signed)."""

    def __init__(self, credentials: BotoCredentials, service: str, region: str, payload: str) -> None:
        super().__init__(credentials, service, region)
        self._payload = payload

    def payload(self, request: AWSRequest) -> str:
        return self._payload


def sign(zone: Zone, method: str, path: str, query: str = "", *, headers: dict[str, str] | None = None,
         body: bytes = b"", creds: Credentials | None = None, service: str | None = None,
         when: datetime.datetime | None = None, bucket: str = DIR, payload: str | None = None) -> Raw:
    """A request signed with botocore's signer (the independent reference), as raw bytes;
    ``payload`` is the x-amz-content-sha256 to sign (default: the body's SHA-256)."""
    directory = bucket.endswith("--x-s3")
    creds = creds or (zone.rw if directory else zone.iam)
    url = f"{zone.server.url}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    if creds.token is not None:
        request.headers["x-amz-s3session-token"] = creds.token
    signer = ChosenPayload(BotoCredentials(creds.access_key, creds.secret_key), service or (
        "s3express" if directory else "s3"), REGION, hashlib.sha256(body).hexdigest() if payload is None else payload)
    moment = (when or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        signer.add_auth(request)
    assert request.url == url, "botocore must sign the path as given"
    items = [(name, value.decode() if isinstance(value, bytes) else value) for name, value in request.headers.items()]
    if not any(name.lower() == "host" for name, _ in items):
        items.insert(0, ("Host", zone.netloc))
    return Raw(method, path, query, tuple(items), body, head=method == "HEAD")


def presign(zone: Zone, method: str, path: str, bucket: str) -> Raw:
    """A presigned URL (query-string SigV4; a session token in the query for directory buckets), as raw bytes."""
    request = AWSRequest(method=method, url=f"{zone.server.url}{path}")
    if bucket.endswith("--x-s3"):
        creds = BotoCredentials(zone.rw.access_key, zone.rw.secret_key, zone.rw.token)
        S3ExpressQueryAuth(creds, "s3express", REGION, identity_cache=None, expires=300).add_auth(request)
    else:
        S3SigV4QueryAuth(BotoCredentials(zone.iam.access_key, zone.iam.secret_key), "s3", REGION,
                         expires=300).add_auth(request)
    parts = urlsplit(request.url)
    return Raw(method, parts.path, parts.query, (("Host", zone.netloc),), BODY if method == "PUT" else b"")


def crc32_header(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def delete_xml(*keys: str) -> bytes:
    objects = "".join(f"<Object><Key>{key}</Key></Object>" for key in keys)
    return f'<?xml version="1.0" encoding="UTF-8"?><Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{objects}</Delete>'.encode()


def complete_xml(etag: str, number: str = "1") -> bytes:
    return (f'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><PartNumber>{number}'
            f'</PartNumber><ETag>"{etag}"</ETag></Part></CompleteMultipartUpload>').encode()


def signed_xml(zone: Zone, path: str, query: str, body: bytes, bucket: str = DIR) -> Raw:
    headers = {"x-amz-checksum-crc32": crc32_header(body)} if bucket.endswith("--x-s3") else {
        "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()}
    return sign(zone, "POST", path, query, headers=headers, body=body, bucket=bucket)


# Every operation that changes something, plus two reads, as a builder of its request for a tag:
# 'sanity' requests must succeed untouched (so a refusal in the fuzz is the mutation's doing),
# 'victim' requests are the ones mutated.
def _builders() -> dict[str, Callable[[Zone, str], Raw]]:
    def upload(zone: Zone, tag: str, name: str) -> tuple[str, str]:
        _, key, upload_id = zone.uploads[f"{tag}/{name}"]
        return key, upload_id

    return {
        "PutObject": lambda z, t: sign(z, "PUT", f"/{DIR}/{t}/obj", body=BODY),
        "PutObjectNew": lambda z, t: sign(z, "PUT", f"/{DIR}/{t}/fresh", body=BODY),
        "Append": lambda z, t: sign(z, "PUT", f"/{DIR}/{t}/log", body=BODY,
                                    headers={"x-amz-write-offset-bytes": "4"}),
        "DeleteObject": lambda z, t: sign(z, "DELETE", f"/{DIR}/{t}/del"),
        "DeleteObjects": lambda z, t: signed_xml(z, f"/{DIR}", "delete", delete_xml(f"{t}/multi")),
        "CreateMultipartUpload": lambda z, t: sign(z, "POST", f"/{DIR}/{t}/mpu-new", "uploads"),
        "UploadPart": lambda z, t: sign(z, "PUT", f"/{DIR}/{upload(z, t, 'mp')[0]}",
                                        f"partNumber=2&uploadId={upload(z, t, 'mp')[1]}", body=BODY),
        "CompleteMultipartUpload": lambda z, t: signed_xml(
            z, f"/{DIR}/{upload(z, t, 'mp2')[0]}", f"uploadId={upload(z, t, 'mp2')[1]}",
            complete_xml(z.part_etags[f"{t}/mp2"])),
        "AbortMultipartUpload": lambda z, t: sign(z, "DELETE", f"/{DIR}/{upload(z, t, 'mp3')[0]}",
                                                  f"uploadId={upload(z, t, 'mp3')[1]}"),
        "RenameObject": lambda z, t: sign(z, "PUT", f"/{DIR}/{t}/ren-dst", "renameObject",
                                          headers={"x-amz-rename-source": f"{t}/ren-src"}),
        "CopyObject": lambda z, t: sign(z, "PUT", f"/{DIR}/{t}/copy", headers={"x-amz-copy-source": f"{DIR}/{t}/obj"},
                                        creds=z.iam),
        "PutObjectGeneral": lambda z, t: sign(z, "PUT", f"/{GENERAL}/{t}/g", body=BODY, bucket=GENERAL),
        "DeleteObjectGeneral": lambda z, t: sign(z, "DELETE", f"/{GENERAL}/{t}/gdel", bucket=GENERAL),
        "DeleteObjectsGeneral": lambda z, t: signed_xml(z, f"/{GENERAL}", "delete", delete_xml(f"{t}/gmulti"),
                                                        bucket=GENERAL),
        "CreateBucket": lambda z, t: sign(z, "PUT", f"/{t}-made--usw2-az1--x-s3", creds=z.iam),
        "DeleteBucket": lambda z, t: sign(z, "DELETE", f"/{t}-spare--usw2-az1--x-s3", creds=z.iam),
        "PresignedPut": lambda z, t: presign(z, "PUT", f"/{DIR}/{t}/presigned", DIR),
        "PresignedPutGeneral": lambda z, t: presign(z, "PUT", f"/{GENERAL}/{t}/presigned", GENERAL),
        "PresignedDelete": lambda z, t: presign(z, "DELETE", f"/{DIR}/{t}/del", DIR),
        "GetObject": lambda z, t: sign(z, "GET", f"/{DIR}/{t}/obj"),
        "CreateSession": lambda z, t: sign(z, "GET", f"/{DIR}", "session", creds=z.iam),
    }


BUILDERS = _builders()
PRESIGNED = sorted(name for name in BUILDERS if name.startswith("Presigned"))
WRITES = sorted(set(BUILDERS) - {"GetObject", "CreateSession", *PRESIGNED})


def seed_objects(zone: Zone, tag: str) -> None:
    """What the builders of ``tag`` act on: objects, three multipart uploads with a part each."""
    s3 = zone.server.client()
    for key in ("obj", "log", "del", "multi", "ren-src"):
        s3.put_object(Bucket=DIR, Key=f"{tag}/{key}", Body=b"old\n")
    for key in ("g", "gdel", "gmulti"):
        s3.put_object(Bucket=GENERAL, Key=f"{tag}/{key}", Body=b"old\n")
    for name in ("mp", "mp2", "mp3"):
        key = f"{tag}/{name}-target"
        upload_id = s3.create_multipart_upload(Bucket=DIR, Key=key)["UploadId"]
        etag = s3.upload_part(Bucket=DIR, Key=key, UploadId=upload_id, PartNumber=1, Body=b"part one")["ETag"]
        zone.uploads[f"{tag}/{name}"] = (DIR, key, upload_id)
        zone.part_etags[f"{tag}/{name}"] = etag.strip('"')


def state(zone: Zone) -> dict[str, object]:
    """Everything a write could change: buckets, objects with ETag and size, uploads and their parts."""
    s3 = zone.server.client()
    out: dict[str, object] = {"buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"])}
    for bucket in (DIR, GENERAL, *SPARES, "victim-made--usw2-az1--x-s3"):
        try:
            objects = {(item["Key"], item["ETag"], item["Size"]) for page in
                       s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for item in page.get("Contents", [])}
            uploads = {(u["Key"], u["UploadId"]) for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
        except s3.exceptions.NoSuchBucket:
            continue
        parts = {upload_id: sorted((p["PartNumber"], p["ETag"], p["Size"]) for p in
                                   s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id).get("Parts", []))
                 for key, upload_id in uploads}
        out[bucket] = (objects, uploads, parts)
    return out


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zone]:
    server = LocalZone(tmp_path_factory.mktemp("endpoint-fuzz"), "--bucket", DIR, "--bucket", GENERAL,
                       *[arg for spare in SPARES for arg in ("--bucket", spare)]).start()
    try:
        s3 = server.client()

        def session(bucket: str, mode: str) -> Credentials:
            creds = s3.create_session(Bucket=bucket, SessionMode=mode)["Credentials"]
            return Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])

        zone = Zone(server, Credentials(ACCESS_KEY, SECRET_KEY), session(DIR, "ReadWrite"), session(DIR, "ReadOnly"),
                    session(SPARES[1], "ReadWrite"))
        for tag in ("sanity", "victim"):
            seed_objects(zone, tag)
        for name, build in BUILDERS.items():  # each request is right as built: the fuzz breaks it
            replies = exchange(zone, build(zone, "sanity"))
            assert replies and 200 <= replies[0].status < 300, (name, replies)
        zone.log_offset = len(server.log_path.read_bytes())
        yield zone
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# Sending, and what must hold after every request


def parse_replies(data: bytes, head: bool) -> list[Reply]:
    """The responses in ``data`` (a keep-alive connection may carry several); a torn last one is dropped."""
    replies = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        lines = data[:end].decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/1\.1 (\d{3}) .*", lines[0])
        assert match, f"not an HTTP response: {data[:200]!r}"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(match.group(1))
        if status == 100:  # "100 Continue": the request's real answer follows
            data = data[end + 4:]
            continue
        length = 0 if (head and not replies) or status in (204, 304) else int(headers.get("content-length", "0"))
        body = data[end + 4:end + 4 + length]
        if len(body) < length:
            break
        replies.append(Reply(status, headers, body))
        data = data[end + 4 + length:]
    return replies


def exchange(zone: Zone, request: Raw | bytes) -> list[Reply]:
    """Send the request, half-close (so no read waits for bytes that will never come), read to the end."""
    raw = as_bytes(request)
    head = is_head(request)
    received = b""
    with socket.create_connection(("127.0.0.1", zone.server.port), timeout=SOCKET_TIMEOUT) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: the server answered and closed before reading it all
            pass
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset, after its answer
        except TimeoutError:
            pytest.fail(f"the server neither answered nor closed within {SOCKET_TIMEOUT} s: {raw[:300]!r}")
    return parse_replies(received, head)


def new_log_lines(zone: Zone) -> list[list[str]]:
    data = zone.server.log_path.read_bytes()
    lines = data[zone.log_offset:].decode("utf-8", "replace").splitlines()
    zone.log_offset = len(data)
    return [line.split("\t") for line in lines if line]


def check_refused(zone: Zone, request: Raw | bytes, replies: list[Reply]) -> None:
    """A hostile request: an S3 error or a closed connection; no 500; nothing written; server alive."""
    check_log(zone, request)
    for index, reply in enumerate(replies):
        assert reply.status != 500, f"500 for {request!r}: {reply.body[:500]!r}"
        assert reply.status >= 300 or index > 0, f"accepted: {request!r} -> {reply.status}"
        head = is_head(request) and index == 0
        if reply.headers.get("content-type") == "application/json":
            assert re.search(rb"\s/_localzone/", as_bytes(request)), reply  # the admin API answers in JSON
        elif reply.status >= 400 and not head:
            assert reply.code is not None, f"no S3 error document: {reply.body[:300]!r}"
            assert reply.headers.get("content-type") == "application/xml"


def as_bytes(request: Raw | bytes) -> bytes:
    return request.to_bytes() if isinstance(request, Raw) else request


def is_head(request: Raw | bytes) -> bool:
    """A HEAD request: its (first) response has no body."""
    return request.head if isinstance(request, Raw) else request.startswith(b"HEAD ")


def check_log(zone: Zone, request: object) -> None:
    for fields in new_log_lines(zone):
        operation, status = fields[2], int(fields[5])
        assert status != 500, f"500 for {request!r}: {fields}"
        assert not (operation in MUTATING_OPERATIONS and 200 <= status < 300), f"a write got through: {fields} {request!r}"
    assert zone.server.proc is not None and zone.server.proc.poll() is None, "the endpoint died"


@pytest.fixture
def unchanged(zone: Zone) -> Iterator[Zone]:
    """The buckets must be exactly as before the test, and a good request still answered."""
    before = state(zone)
    new_log_lines(zone)
    yield zone
    assert state(zone) == before
    good = exchange(zone, sign(zone, "GET", f"/{DIR}/victim/obj"))
    assert good and good[0].status == 200 and good[0].body == b"old\n"
    stats = zone.server.stats()
    assert "500" not in stats["statuses"] and "InternalError" not in stats["errors"]
    stderr = (zone.server.workdir / "localzone.stderr").read_text(errors="replace")
    assert "Traceback" not in stderr and "internal error" not in stderr


# --------------------------------------------------------------------------------------------
# Correctly signed requests, broken where the signature covers them

TEXT = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF, blacklist_characters="\r\n"), max_size=30)
HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)


def normalised(value: str | None) -> str | None:
    return None if value is None else " ".join(value.split())


@st.composite
def breaking(draw: st.DrawFn, raw: Raw) -> tuple[str, Raw]:
    """One change that makes the signed request invalid, whatever else is done to it."""
    auth = raw.header("authorization") or ""
    signed = [name for name in raw.signed_headers if name != "content-length"]
    choices = ["signature", "date", "scope", "remove", "change", "repeat", "path", "method", "query", "authorization"]
    if raw.body and re.fullmatch(r"[0-9a-f]{64}", raw.header("x-amz-content-sha256") or ""):
        choices += ["body", "length"]
    kind = draw(st.sampled_from(choices))
    if kind == "signature":
        old = auth.rsplit("Signature=", 1)[1]
        new = draw(st.one_of(HEX64, TEXT, st.just(old.upper()[:-1] + "0"), st.just(old[:-1])).filter(
            lambda s: s.strip().lower() != old))
        return kind, raw.with_header("Authorization", auth.rsplit("Signature=", 1)[0] + "Signature=" + new)
    if kind == "date":
        old = raw.header("x-amz-date") or ""
        new = draw(st.one_of(st.sampled_from(["", "20261122T120000Z", "19700101T000000Z", "20991231T235959Z",
                                              old[:-1], old + "0", old.replace("T", "t"), "x" * 5000]), TEXT).filter(
            lambda s: normalised(s) != normalised(old)))
        return kind, raw.with_header("X-Amz-Date", new)
    if kind == "scope":
        credential = re.search(r"Credential=([^,]*)", auth).group(1)
        parts = credential.split("/")
        index = draw(st.integers(0, 4))
        value = draw(st.one_of(TEXT, st.sampled_from(["", "s3", "s3express", "us-east-1", "aws4_request", "20000101",
                                                     ACCESS_KEY, "a/b", "a,b", "a=b"])).filter(
            lambda s: s.strip() != parts[index]))
        parts[index] = value
        return kind, raw.with_header("Authorization", auth.replace(credential, "/".join(parts), 1))
    if kind == "remove":
        return kind, raw.with_header(draw(st.sampled_from(signed)), None)
    if kind == "change":
        name = draw(st.sampled_from(signed))
        old = raw.header(name)
        return kind, raw.with_header(name, draw(st.one_of(TEXT, st.just("x" * 9000)).filter(
            lambda s: normalised(s) != normalised(old))))
    if kind == "repeat":
        name = draw(st.sampled_from(signed))
        return kind, replace(raw, headers=raw.headers + ((name, draw(st.one_of(st.just(raw.header(name) or ""), TEXT))),))
    if kind == "path":
        path = draw(st.sampled_from([raw.path + "x", raw.path + "/..", raw.path + "/", "/" + raw.path,
                                     raw.path.replace("/", "/../", 1), raw.path.replace("/", "/%2e%2e/", 1),
                                     raw.path.upper(), raw.path + "%00", raw.path + "%ff", raw.path[:-1]]))
        if unquote(path, errors="replace") == unquote(raw.path, errors="replace"):
            path += "y"
        return kind, replace(raw, path=path)
    if kind == "method":
        method = draw(st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS", "put", "G ET", "",
                                       "X" * 100]).filter(lambda m: m != raw.method))
        return kind, replace(raw, method=method, head=method == "HEAD")
    if kind == "query":
        extra = draw(st.sampled_from(["x-id=PutObject", "uploads", "delete", "renameObject", "acl", "partNumber=1",
                                      "X-Amz-Algorithm=AWS4-HMAC-SHA256", "versionId=1", "%ff=%fe", "a=b&a=c"]))
        return kind, replace(raw, query=f"{raw.query}&{extra}" if raw.query else extra)
    if kind == "authorization":
        value = draw(st.one_of(TEXT, st.sampled_from([
            "", "AWS " + ACCESS_KEY + ":c2lnbmF0dXJl", "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 " + "x" * 70_000,
            auth.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"), auth.replace("Credential=", "Credential=,"),
            auth.replace("SignedHeaders=", "SignedHeaders=;"), auth + ", Signature=" + "0" * 64,
            auth.replace("SignedHeaders=host;", "SignedHeaders="), auth.replace(", Signature=", ", X=1, Signature=")])
        ).filter(lambda v: v.strip() != auth.strip()))
        return kind, raw.with_header("Authorization", value)
    if kind == "body":
        body = draw(st.binary(max_size=200).filter(lambda b: b != raw.body))
        return kind, replace(raw, body=body)
    # length: fewer bytes than the body (the rest arrives as garbage) or more than are sent
    declared = draw(st.one_of(st.integers(0, len(raw.body) - 1), st.integers(len(raw.body) + 1, 1 << 40)))
    return kind, replace(raw, content_length=str(declared))


@st.composite
def noise(draw: st.DrawFn, raw: Raw) -> Raw:
    """Changes outside the signature: junk, huge and many unsigned headers, header case, order."""
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            name = draw(st.sampled_from(["x-junk", "User-Agent", "Accept", "X-Amz-Meta-Ok", "Expect", "Connection"]))
            value = draw(st.one_of(TEXT, st.sampled_from(["100-continue", "close", "keep-alive"])))
            raw = replace(raw, headers=raw.headers + ((name, value),))
        elif kind == 1:
            raw = replace(raw, headers=raw.headers + (("x-huge", "h" * draw(st.sampled_from([8_000, 60_000, 70_000]))),))
        elif kind == 2:
            raw = replace(raw, headers=raw.headers + tuple((f"x-many-{n}", "v") for n in range(draw(st.integers(1, 250)))))
        elif kind == 3:
            raw = replace(raw, headers=tuple((k.upper(), v) for k, v in raw.headers))
        else:
            raw = replace(raw, headers=tuple(draw(st.permutations(raw.headers))))
    return raw


@st.composite
def breaking_presigned(draw: st.DrawFn, raw: Raw) -> Raw:
    """One change to a presigned URL that invalidates it: every X-Amz-* parameter is signed or is the signature."""
    params = [piece.partition("=")[::2] for piece in raw.query.split("&")]
    index = draw(st.integers(0, len(params) - 1))
    name, value = params[index]
    kind = draw(st.sampled_from(["change", "remove", "repeat", "header", "path", "method"]))
    if kind == "change":
        new = draw(st.one_of(TEXT.map(lambda t: quote(t, safe="")), st.sampled_from([
            "", "%", "%zz", "0", "-1", "604801", "99999999999999999999", "%D9%A3", value.upper(), value + "0",
            value[:-1]])).filter(lambda v: unquote(v, errors="replace").lower() != unquote(value, errors="replace").lower()))
        params[index] = (name, new)
    elif kind == "remove":
        del params[index]
    elif kind == "repeat" and name != "X-Amz-Signature":  # a second signature is ignored, as it is unsigned
        params.append((name, draw(st.sampled_from([value, "x", ""]))))
    elif kind == "header":
        return raw.with_header(draw(st.sampled_from(["Authorization", "Host"])),
                               draw(st.sampled_from(["AWS4-HMAC-SHA256 Credential=x", "x", "", "other.example:80"])))
    elif kind == "path":
        return replace(raw, path=raw.path + draw(st.sampled_from(["x", "/..", "%2e"])))
    elif kind == "method":
        return replace(raw, method=draw(st.sampled_from(["POST", "GET", "HEAD", "PATCH"]).filter(lambda m: m != raw.method)),
                       head=False)
    else:
        params[index] = (name, value + "1")
    return replace(raw, query="&".join(f"{k}={v}" for k, v in params))


@SETTINGS
@given(operation=st.sampled_from(PRESIGNED), data=st.data())
def test_broken_presigned_urls_are_refused_and_write_nothing(unchanged: Zone, operation: str,
                                                             data: st.DataObject) -> None:
    zone = unchanged
    request = data.draw(breaking_presigned(BUILDERS[operation](zone, "victim")), label="breaking change")
    request = replace(request, head=request.method == "HEAD")
    check_refused(zone, request, exchange(zone, request))


@SETTINGS
@given(operation=st.sampled_from(sorted(set(BUILDERS) - set(PRESIGNED))), data=st.data())
def test_broken_signed_requests_are_refused_and_write_nothing(unchanged: Zone, operation: str, data: st.DataObject) -> None:
    zone = unchanged
    base = BUILDERS[operation](zone, "victim")
    kind, request = data.draw(breaking(base), label="breaking change")
    request = data.draw(noise(request), label="noise")
    check_refused(zone, request, exchange(zone, request))


# --------------------------------------------------------------------------------------------
# Signed correctly, and still refused


RESIGNED = ["garbage token", "read-only session", "foreign session", "iam keys", "service s3", "old date",
            "content-sha256", "streaming sha256"]


@SETTINGS
@given(operation=st.sampled_from(WRITES), variant=st.sampled_from(RESIGNED), data=st.data())
def test_validly_signed_but_unauthorised_requests_write_nothing(unchanged: Zone, operation: str, variant: str,
                                                                data: st.DataObject) -> None:
    zone = unchanged
    base = BUILDERS[operation](zone, "victim")
    path, query = base.path, base.query
    bucket = path.split("/")[1]
    control = operation in ("CreateBucket", "DeleteBucket")
    directory = bucket == DIR
    iam_signed = not directory or control or operation == "CopyObject"
    headers = {k: v for k, v in base.headers if k.lower() not in ("authorization", "x-amz-date", "x-amz-content-sha256",
                                                                   "x-amz-s3session-token", "host")}
    creds = zone.iam if iam_signed else zone.rw
    service, when = None, None
    if variant == "garbage token":
        token = data.draw(st.one_of(st.sampled_from(["", "x", zone.rw.token[:-1], zone.rw.token + "x"]),
                                    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=80)))
        creds = Credentials(zone.rw.access_key, zone.rw.secret_key, token)
    elif variant == "read-only session":
        creds = zone.ro
    elif variant == "foreign session":
        creds = zone.foreign
    elif variant == "iam keys":
        creds = zone.iam if not iam_signed else zone.rw
    elif variant == "service s3":  # the other data-plane service; the control plane takes both, not 'iam'
        service = "iam" if control else "s3express" if not directory else "s3"
    elif variant == "old date":
        when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
            minutes=data.draw(st.integers(16, 60 * 24 * 400)))
    request_body = base.body
    if variant in ("content-sha256", "streaming sha256"):  # none of them the body's own SHA-256
        values = (["STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                   "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"]
                  if variant == "streaming sha256" else
                  ["", "x", "0" * 64, "A" * 64, hashlib.sha256(b"other").hexdigest(), "UNSIGNED", "unsigned-payload"])
        payload = data.draw(st.sampled_from(values))
        if not request_body:
            request_body = data.draw(st.sampled_from([b"", b"x", b"5\r\nhello\r\n"]))
    else:
        payload = None
    request = sign(zone, base.method, path, query, headers=headers, body=request_body, creds=creds, service=service,
                   when=when, bucket=bucket, payload=payload)
    check_refused(zone, request, exchange(zone, request))


@pytest.mark.parametrize("operation, payload, body, code", [
    ("DeleteObject", "0" * 64, b"", "XAmzContentSHA256Mismatch"),
    ("DeleteObject", hashlib.sha256(b"").hexdigest(), b"not empty", "XAmzContentSHA256Mismatch"),
    ("CreateMultipartUpload", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", b"5\r\nhello\r\n", "SignatureDoesNotMatch"),
    ("AbortMultipartUpload", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", b"", "IncompleteBody"),
    ("DeleteBucket", hashlib.sha256(b"other").hexdigest(), b"x", "XAmzContentSHA256Mismatch"),
])
def test_a_payload_that_lies_is_refused_even_where_no_body_is_used(unchanged: Zone, operation: str, payload: str,
                                                                  body: bytes, code: str) -> None:
    """S3 checks every request's payload; these were carried out because their handler never read the body."""
    base = BUILDERS[operation](unchanged, "victim")
    headers = {k: v for k, v in base.headers if k.lower() not in (
        "authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-s3session-token", "host")}
    bucket = base.path.split("/")[1]
    creds = unchanged.iam if operation == "DeleteBucket" else unchanged.rw
    request = sign(unchanged, base.method, base.path, base.query, headers=headers, body=body, creds=creds,
                   bucket=bucket, payload=payload)
    replies = exchange(unchanged, request)
    assert replies and replies[0].code == code, replies
    check_refused(unchanged, request, replies)


# --------------------------------------------------------------------------------------------
# Bodies whose framing lies

PAYLOAD = b"0123456789" * 7


def aws_chunked(data: bytes, sizes: list[int]) -> bytes:
    out, start = b"", 0
    for size in sizes:
        out += f"{size:x}\r\n".encode() + data[start:start + size] + b"\r\n"
        start += size
    return out + b"0\r\n" + f"x-amz-checksum-crc32:{crc32_header(data)}\r\n".encode() + b"\r\n"


def http_chunked(data: bytes, sizes: list[int]) -> bytes:
    out, start = b"", 0
    for size in sizes:
        out += f"{size:x}\r\n".encode() + data[start:start + size] + b"\r\n"
        start += size
    return out + b"0\r\n\r\n"


def chunked_put(zone: Zone, tag: str, framing: str, body: bytes, declared: int = len(PAYLOAD)) -> Raw:
    if framing == "aws":
        headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(declared),
                   "x-amz-trailer": "x-amz-checksum-crc32"}
        raw = sign(zone, "PUT", f"/{DIR}/{tag}/chunked", headers=headers, payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        return replace(raw, body=body)
    raw = sign(zone, "PUT", f"/{DIR}/{tag}/chunked", body=PAYLOAD)  # signs the payload's SHA-256
    return replace(raw.with_header("Transfer-Encoding", "chunked"), body=body, content_length=None)


def test_honest_chunked_bodies_are_accepted(zone: Zone) -> None:
    """The framings the lies are made of work when they tell the truth (so refusals below are the lies')."""
    s3 = zone.server.client()
    for framing in ("aws", "http"):
        encode = aws_chunked if framing == "aws" else http_chunked
        replies = exchange(zone, chunked_put(zone, "sanity", framing, encode(PAYLOAD, [30, 30, 10])))
        assert replies and replies[0].status == 200, replies
        assert s3.get_object(Bucket=DIR, Key="sanity/chunked")["Body"].read() == PAYLOAD
    new_log_lines(zone)


@st.composite
def lies(draw: st.DrawFn) -> tuple[str, bytes, int]:
    framing = draw(st.sampled_from(["aws", "http"]))
    encode = aws_chunked if framing == "aws" else http_chunked
    sizes = draw(st.lists(st.integers(1, 30), min_size=1, max_size=4).filter(lambda s: sum(s) <= len(PAYLOAD)))
    sizes[-1] += len(PAYLOAD) - sum(sizes)
    honest = encode(PAYLOAD, sizes)
    declared = len(PAYLOAD)
    # Only aws-chunked declares its decoded length, and bytes after an HTTP chunked body are the next request.
    lie = draw(st.sampled_from(["size", "truncate", "no-final", "crlf", "checksum", "bytes"]
                               + (["extra", "declared"] if framing == "aws" else [])))
    if lie == "size":  # a chunk-size line that does not match its data
        index = draw(st.integers(0, len(sizes) - 1))
        wrong = draw(st.one_of(st.integers(0, 200), st.just(2**64 - 1)).filter(lambda n: n != sizes[index]))
        lines = honest.split(b"\r\n")
        lines[2 * index] = draw(st.sampled_from([f"{wrong:x}", f"{wrong:X}", f"-{wrong}", f"{wrong:x} ", "zz", ""])).encode()
        body = b"\r\n".join(lines)
    elif lie == "truncate":  # aws-chunked may leave out the blank line after its trailers, as published examples do
        body = honest[:draw(st.integers(0, len(honest) - (3 if framing == "aws" else 1)))]
    elif lie == "extra":
        body = honest + draw(st.binary(min_size=1, max_size=40))
    elif lie == "no-final":
        body = honest[:honest.rindex(b"0\r\n")]
    elif lie == "crlf":  # the CRLF after chunk data is framing, not a line end: nothing else will do
        after_data = honest.index(b"\r\n", honest.index(b"\r\n") + 2)
        body = honest[:after_data] + draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b"", b"\n\r"])) + honest[after_data + 2:]
    elif lie == "declared":
        declared = draw(st.integers(0, 500).filter(lambda n: n != len(PAYLOAD)))
        body = honest
    elif lie == "checksum":
        body = honest.replace(crc32_header(PAYLOAD).encode(), crc32_header(b"other").encode()) if framing == "aws" \
            else http_chunked(PAYLOAD[::-1], sizes)
    else:  # one byte of the data changed (the trailer's CRC32 and the signed SHA-256 are the original's)
        index = draw(st.integers(0, len(PAYLOAD) - 1))
        body = encode(PAYLOAD[:index] + b"#" + PAYLOAD[index + 1:], sizes)
        body = body.replace(crc32_header(PAYLOAD[:index] + b"#" + PAYLOAD[index + 1:]).encode(), crc32_header(PAYLOAD).encode())
    return framing, body, declared


@SETTINGS
@given(lie=lies())
@example(lie=("aws", aws_chunked(PAYLOAD, [70]).replace(b"46\r\n", b"ffffffffffffffff\r\n"), len(PAYLOAD)))
@example(lie=("http", b"10000000000000000\r\n", len(PAYLOAD)))
def test_chunked_bodies_that_lie_are_refused(unchanged: Zone, lie: tuple[str, bytes, int]) -> None:
    framing, body, declared = lie
    request = chunked_put(unchanged, "victim", framing, body, declared)
    check_refused(unchanged, request, exchange(unchanged, request))


# --------------------------------------------------------------------------------------------
# Bad XML in correctly signed requests

XML_SAMPLES = [
    b"", b"<", b"not xml", b"<Delete/>", b"<Delete><Object/></Delete>", b"<Delete><Object><Key></Key></Object></Delete>",
    b'<?xml version="1.0" encoding="UTF-16"?><Delete/>', b"\xef\xbb\xbf<Delete></Delete>", b"<Delete>\xff\xfe</Delete>",
    b'<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><Delete>&b;</Delete>',
    b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "file:///etc/passwd"><Delete>&x;</Delete>',
    b"<Delete>" + b"<a>" * 50_000 + b"</a>" * 50_000 + b"</Delete>",
    b"<Delete>" + b"<Object><Key>absent/k</Key></Object>" * 1001 + b"</Delete>",
    b"<Delete><Object><Key>absent/&#x1;</Key></Object></Delete>",
    b"<Delete><Object><Key>" + b"k" * 1100 + b"</Key></Object></Delete>",
    b"<CompleteMultipartUpload><Part><PartNumber>" + b"9" * 5000 + b"</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>",
    b"<CompleteMultipartUpload><Part><PartNumber>100000000000000000000000000000</PartNumber><ETag>x</ETag></Part>"
    b"</CompleteMultipartUpload>",
    b"<CompleteMultipartUpload><Part><PartNumber>-1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>",
    b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
    b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"wrong\"</ETag>"
    b"<ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part></CompleteMultipartUpload>",
    b'<?xml version="1.0" encoding="UT"?><Delete/>', b'<?xml version="1.0" encoding="rot13"?><Delete/>',
    b'<?xml version="1.0" encoding="utf-32"?><Delete/>', b'<?xml version="1.0" encoding="idna"?><Delete/>',
    b"<CreateSessionConfiguration><SessionMode>Admin</SessionMode></CreateSessionConfiguration>",
]


@st.composite
def xml_bodies(draw: st.DrawFn, base: bytes) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.sampled_from(XML_SAMPLES))
    if kind == 1:
        return draw(st.binary(max_size=300))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):  # characters inserted, deleted or replaced
        at = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from([b"<", b">", b"&", b"/", b"\x00", b"\xff", b"]]>", b"<x>", b'"', b""]))
        data[at:at + draw(st.integers(0, 3))] = what
    return bytes(data)


XML_TARGETS = ["DeleteObjects", "DeleteObjectsGeneral", "CompleteMultipartUpload", "CreateSession"]


@SETTINGS
@given(target=st.sampled_from(XML_TARGETS), data=st.data())
def test_bad_xml_bodies_get_s3_errors_and_write_nothing(unchanged: Zone, target: str, data: st.DataObject) -> None:
    zone = unchanged
    base = BUILDERS[target](zone, "victim")
    if target.startswith("DeleteObjects"):  # keys nobody has: a body that happens to parse deletes nothing
        base_xml = delete_xml("absent/a", "absent/b")
    elif target == "CompleteMultipartUpload":  # a part ETag nobody can guess
        base_xml = complete_xml("0" * 32)
    else:
        base_xml = XML_SAMPLES[-1]
    body = data.draw(xml_bodies(base_xml), label="body")
    if target == "CreateSession":
        request = sign(zone, "GET", base.path, base.query, body=body, creds=zone.iam)
    else:
        request = signed_xml(zone, base.path, base.query, body, bucket=base.path.split("/")[1])
    replies = exchange(zone, request)
    for reply in replies:
        assert reply.status != 500, (body[:200], reply.body[:500])
        if reply.status >= 400:
            assert reply.code is not None
    check_log_allowing_harmless(zone)


def test_xml_in_an_encoding_the_parser_cannot_use_is_malformed_xml(unchanged: Zone) -> None:
    """These once escaped the XML parser's error handling as a 500."""
    for encoding in ("UT", "rot13", "base64", "utf-32", "idna"):
        body = f'<?xml version="1.0" encoding="{encoding}"?><Delete><Object><Key>absent/a</Key></Object></Delete>'
        replies = exchange(unchanged, signed_xml(unchanged, f"/{DIR}", "delete", body.encode()))
        assert replies and (replies[0].status, replies[0].code) == (400, "MalformedXML"), (encoding, replies)
    check_log(unchanged, "encodings")


def check_log_allowing_harmless(zone: Zone) -> None:
    """Bodies that parse may be accepted (deleting keys nobody has); the unchanged fixture checks content."""
    for fields in new_log_lines(zone):
        assert int(fields[5]) != 500, fields
    assert zone.server.proc is not None and zone.server.proc.poll() is None


# --------------------------------------------------------------------------------------------
# Bytes that are barely HTTP

REQUEST_LINES = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda m, t, v: f"{m} {t} {v}".encode("utf-8", "surrogateescape"),
              st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "", "get", "BREW", "GET GET", "\x00"]),
              st.sampled_from([f"/{DIR}/victim/obj", f"/{DIR}?session", "/", "*", "", "victim", "http://h",
                               "http://h/x/y", f"/{DIR}/%", f"/{DIR}/%ff%fe", f"/{DIR}/a b", "/" + "a" * 70_000,
                               f"/{DIR}/../{GENERAL}/victim/g", "/_localzone/../x"]),
              st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 extra", "", "http/1.1", "HTTP/1.1\x00"])),
)
HEADER_LINES = st.lists(st.one_of(
    st.binary(max_size=80).filter(lambda b: b"\n" not in b),
    st.sampled_from([b"Host: x", b": empty-name", b"No-Colon", b" Leading: space", b"Content-Length: -1",
                     b"Content-Length: 1, 2", b"Content-Length: \xd9\xa3", b"Content-Length: 99999999999999999999",
                     b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: x",
                     b"Expect: 100-continue", b"Authorization: AWS4-HMAC-SHA256", b"x-amz-content-sha256: \xff",
                     b"Connection: close", b"H" * 70_000 + b": v", b"Folded: a\r\n  b"]),
), max_size=6)


@SETTINGS
@given(line=REQUEST_LINES, headers=HEADER_LINES, body=st.binary(max_size=100),
       ending=st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n", b""]))
@example(line=b"GET / HTTP/1.1", headers=[b"x: y"] * 201, body=b"", ending=b"\r\n\r\n")
@example(line=b"PUT /" + DIR.encode() + b"/victim/obj HTTP/1.1", headers=[b"Content-Length: 5", b"Content-Length: 6"],
         body=b"hello!", ending=b"\r\n\r\n")
def test_unparseable_http_gets_a_400_or_a_closed_connection(unchanged: Zone, line: bytes, headers: list[bytes],
                                                             body: bytes, ending: bytes) -> None:
    raw = b"\r\n".join([line, *headers]) + ending + body
    replies = exchange(unchanged, raw)
    check_refused(unchanged, raw, replies)


@pytest.mark.parametrize("raw, reason", [
    (f" /{DIR}/victim/obj HTTP/1.1\r\nHost: x\r\n\r\n".encode(), "malformed request method"),
    (f"G(T /{DIR}/victim/obj HTTP/1.1\r\nHost: x\r\n\r\n".encode(), "malformed request method"),
    (b" /_localzone/stats HTTP/1.1\r\n\r\n", "malformed request method"),
    (f"GET /{DIR}/victim/obj HTT".encode(), "connection closed inside the request line"),
])
def test_a_request_line_that_is_not_http_is_a_400_that_names_why(zone: Zone, raw: bytes, reason: str) -> None:
    """RFC 9110: a method is a non-empty token; such a line is not routed (an empty method once reached the admin API)."""
    replies = exchange(zone, raw)
    assert len(replies) == 1 and (replies[0].status, replies[0].code) == (400, "BadRequest"), replies
    assert reason in replies[0].body.decode() and replies[0].headers.get("connection") == "close"
    check_log(zone, raw)


# --------------------------------------------------------------------------------------------
# Path traversal: keys are keys


TRAVERSALS = [
    f"/{DIR}/../../../../../../etc/passwd", f"/{DIR}/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    f"/{DIR}/..%2f..%2f..%2f..%2fetc%2fpasswd", f"/{DIR}/victim/../victim/obj", f"/{DIR}/./victim/obj",
    f"/{DIR}//victim/obj", f"/{DIR}/../{GENERAL}/victim/g", f"/{DIR}/%2e%2e%2f{GENERAL}%2fvictim%2fg",
    f"/{DIR}/victim%2fobj%2f..%2fobj", f"/{DIR}/\\..\\..\\etc\\passwd",
]


def test_traversal_in_a_key_reaches_no_other_key_or_file(unchanged: Zone) -> None:
    """S3 does not normalise keys: `a/../b` is a key of its own (absent here), never `b` or a file."""
    for path in TRAVERSALS:
        for method in ("GET", "HEAD"):
            request = sign(unchanged, method, path)
            replies = exchange(unchanged, request)
            assert replies and replies[0].status == 404, (method, path, replies)
            if method == "GET":
                assert replies[0].code == "NoSuchKey", replies[0].body
                assert b"root:" not in replies[0].body and replies[0].body != b"old\n"
            check_log(unchanged, request)


def test_a_traversal_key_written_with_a_valid_signature_stays_a_key(zone: Zone, tmp_path: Path) -> None:
    """Writing `../../x` stores a key named so, inside the endpoint's storage; nothing lands beside it."""
    root = zone.server.root
    before = {p for p in root.parent.rglob("*")}
    key = "../../../../escape-" + tmp_path.name
    request = sign(zone, "PUT", f"/{DIR}/{quote(key, safe='/')}", body=b"inside\n")
    replies = exchange(zone, request)
    assert replies and replies[0].status == 200
    s3 = zone.server.client()
    assert s3.get_object(Bucket=DIR, Key=key)["Body"].read() == b"inside\n"
    created = {p for p in root.parent.rglob("*")} - before
    assert all(root in p.parents for p in created), f"written outside the storage root: {created - {root}}"
    assert not any(p.name.startswith("escape-") for p in Path("/").glob("escape-*"))
    s3.delete_object(Bucket=DIR, Key=key)
    new_log_lines(zone)
