"""Error paths of authentication, CreateSession and session tokens, and of ordinary object requests.

Every test checks one behaviour and asserts the HTTP status AND the S3 error code. Requests that a
well-behaved SDK would never send (foreign or expired tokens, skewed clocks, wrong scopes) are
hand-signed with botocore's signer (tests/support/signing.py).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError

from tests.support import signing
from tests.support.localzone import (
    ACCESS_KEY, DIRECTORY_BUCKET, GENERAL_BUCKET, SECRET_KEY, LocalZone,
)

OTHER_DIRECTORY_BUCKET = "other--usw2-az1--x-s3"
NO_RETRIES = {"total_max_attempts": 1, "mode": "standard"}

# Principals of the --users server: access key, secret, and the session modes allowed per bucket.
WRITER = ("AKIAWRITER0000000001", "writer-secret")
READER = ("AKIAREADER0000000001", "reader-secret")
RW_ONLY = ("AKIARWONLY0000000001", "rwonly-secret")
STRANGER = ("AKIASTRANGER00000001", "stranger-secret")
USERS = {"principals": [
    {"name": "writer", "access_key": WRITER[0], "secret_key": WRITER[1], "buckets": {"*": ["ReadOnly", "ReadWrite"]}},
    {"name": "reader", "access_key": READER[0], "secret_key": READER[1],
     "buckets": {DIRECTORY_BUCKET: ["ReadOnly"], GENERAL_BUCKET: ["ReadOnly"]}},
    {"name": "rw-only", "access_key": RW_ONLY[0], "secret_key": RW_ONLY[1], "buckets": {DIRECTORY_BUCKET: ["ReadWrite"]}},
    {"name": "stranger", "access_key": STRANGER[0], "secret_key": STRANGER[1],
     "buckets": {OTHER_DIRECTORY_BUCKET: ["ReadOnly", "ReadWrite"]}},
]}


# --- fixtures and helpers ----------------------------------------------------------------------

def _module_zone(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Iterator[LocalZone]:
    server = LocalZone(tmp_path_factory.mktemp(name), *args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def users_zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalZone]:
    """Several principals (--users) and two directory buckets."""
    users = tmp_path_factory.mktemp("users") / "users.json"
    users.write_text(json.dumps(USERS))
    yield from _module_zone(tmp_path_factory, "users-zone", "--users", str(users), "--bucket", DIRECTORY_BUCKET,
                            "--bucket", OTHER_DIRECTORY_BUCKET, "--bucket", GENERAL_BUCKET)


@pytest.fixture(scope="module")
def short_ttl_zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalZone]:
    """Sessions live one second."""
    yield from _module_zone(tmp_path_factory, "short-ttl", "--session-ttl", "1", "--bucket", DIRECTORY_BUCKET)


@pytest.fixture(scope="module")
def expirable_zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalZone]:
    """Five-minute sessions, expired at will (never on the shared endpoint: botocore would keep
    using the sessions it cached there)."""
    yield from _module_zone(tmp_path_factory, "expirable", "--bucket", DIRECTORY_BUCKET)


@pytest.fixture
def key() -> str:
    return f"auth-{uuid.uuid4().hex[:12]}"


def client(zone: LocalZone, principal: tuple[str, str] = (ACCESS_KEY, SECRET_KEY), **config):
    return zone.client(principal[0], principal[1], retries=NO_RETRIES, **config)


def failure(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def session(zone: LocalZone, bucket: str = DIRECTORY_BUCKET, mode: str | None = None,
            principal: tuple[str, str] = (ACCESS_KEY, SECRET_KEY)) -> dict:
    kwargs = {"SessionMode": mode} if mode else {}
    return client(zone, principal).create_session(Bucket=bucket, **kwargs)["Credentials"]


def with_session(creds: dict) -> dict:
    """signing.call() keyword arguments that sign with session credentials."""
    return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"], "token": creds["SessionToken"]}


def session_get(zone: LocalZone, creds: dict, key: str, bucket: str = DIRECTORY_BUCKET) -> signing.Reply:
    return signing.call("GET", signing.object_url(zone.url, bucket, key), **with_session(creds))


def put(zone: LocalZone, bucket: str, key: str, body: bytes = b"data") -> None:
    client(zone).put_object(Bucket=bucket, Key=key, Body=body)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


# --- wrong credentials -------------------------------------------------------------------------

def test_wrong_secret_on_general_bucket_is_signature_does_not_match(localzone):
    with pytest.raises(ClientError) as excinfo:
        client(localzone, (ACCESS_KEY, "not-the-secret")).list_objects_v2(Bucket=GENERAL_BUCKET)
    assert failure(excinfo) == (403, "SignatureDoesNotMatch")


def test_wrong_secret_on_create_session_is_signature_does_not_match(localzone):
    with pytest.raises(ClientError) as excinfo:
        client(localzone, (ACCESS_KEY, "not-the-secret")).create_session(Bucket=DIRECTORY_BUCKET)
    assert failure(excinfo) == (403, "SignatureDoesNotMatch")


def test_unknown_access_key_on_general_bucket_is_invalid_access_key_id(localzone):
    with pytest.raises(ClientError) as excinfo:
        client(localzone, ("AKIANOSUCHKEY0000000", SECRET_KEY)).list_objects_v2(Bucket=GENERAL_BUCKET)
    assert failure(excinfo) == (403, "InvalidAccessKeyId")


def test_unknown_access_key_on_create_session_is_invalid_access_key_id(localzone):
    with pytest.raises(ClientError) as excinfo:
        client(localzone, ("AKIANOSUCHKEY0000000", SECRET_KEY)).create_session(Bucket=DIRECTORY_BUCKET)
    assert failure(excinfo) == (403, "InvalidAccessKeyId")


def test_session_token_with_the_wrong_session_secret_is_signature_does_not_match(localzone, key):
    creds = session(localzone)
    reply = signing.call("GET", signing.object_url(localzone.url, DIRECTORY_BUCKET, key),
                         access_key=creds["AccessKeyId"], secret_key="wrong", token=creds["SessionToken"])
    assert (reply.status, reply.code) == (403, "SignatureDoesNotMatch")


def test_session_token_signed_with_another_access_key_is_invalid_access_key_id(localzone, key):
    creds = session(localzone)
    reply = signing.call("GET", signing.object_url(localzone.url, DIRECTORY_BUCKET, key), token=creds["SessionToken"])
    assert (reply.status, reply.code) == (403, "InvalidAccessKeyId")


# --- CreateSession: modes, policies, buckets ---------------------------------------------------

@pytest.mark.parametrize("mode", ["ReadOnly", "ReadWrite"])
def test_create_session_with_an_explicit_mode(users_zone, mode):
    before = users_zone.stats()["sessions"]
    session(users_zone, mode=mode, principal=WRITER)
    after = users_zone.stats()["sessions"]
    other = "ReadWrite" if mode == "ReadOnly" else "ReadOnly"
    assert (after[mode] - before[mode], after[other] - before[other]) == (1, 0)


@pytest.mark.parametrize(("principal", "expected"), [(WRITER, "ReadWrite"), (RW_ONLY, "ReadWrite"), (READER, "ReadOnly")])
def test_create_session_without_a_mode_prefers_read_write_then_read_only(users_zone, principal, expected):
    before = users_zone.stats()["sessions"][expected]
    session(users_zone, principal=principal)
    assert users_zone.stats()["sessions"][expected] - before == 1


def test_read_write_session_denied_by_policy_is_access_denied(users_zone):
    with pytest.raises(ClientError) as excinfo:
        session(users_zone, mode="ReadWrite", principal=READER)
    assert failure(excinfo) == (403, "AccessDenied")


def test_read_only_session_denied_by_policy_is_access_denied(users_zone):
    with pytest.raises(ClientError) as excinfo:
        session(users_zone, mode="ReadOnly", principal=RW_ONLY)
    assert failure(excinfo) == (403, "AccessDenied")


def test_principal_allowed_no_mode_gets_access_denied_and_no_session(users_zone):
    before = users_zone.stats()["sessions"]
    with pytest.raises(ClientError) as excinfo:
        session(users_zone, principal=STRANGER)  # allowed only on OTHER_DIRECTORY_BUCKET
    assert failure(excinfo) == (403, "AccessDenied")
    assert users_zone.stats()["sessions"] == before


def test_users_file_principal_reads_but_may_not_write_a_general_bucket(users_zone, key):
    client(users_zone, WRITER).put_object(Bucket=GENERAL_BUCKET, Key=key, Body=b"x")
    reader = client(users_zone, READER)
    assert reader.get_object(Bucket=GENERAL_BUCKET, Key=key)["Body"].read() == b"x"
    with pytest.raises(ClientError) as excinfo:
        reader.put_object(Bucket=GENERAL_BUCKET, Key=key, Body=b"y")
    assert failure(excinfo) == (403, "AccessDenied")


def test_default_principal_is_unknown_when_a_users_file_is_given(users_zone):
    with pytest.raises(ClientError) as excinfo:
        session(users_zone)
    assert failure(excinfo) == (403, "InvalidAccessKeyId")


def test_invalid_session_mode_is_invalid_argument(localzone):
    reply = signing.call("GET", signing.object_url(localzone.url, DIRECTORY_BUCKET, query="session"),
                         headers={"x-amz-create-session-mode": "WriteOnly"})
    assert (reply.status, reply.code) == (400, "InvalidArgument")


def test_create_session_on_a_missing_bucket_is_no_such_bucket(localzone):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).create_session(Bucket="missing--usw2-az1--x-s3")
    assert failure(excinfo) == (404, "NoSuchBucket")


def test_create_session_on_a_general_bucket_is_invalid_request(localzone):
    reply = signing.call("GET", signing.object_url(localzone.url, GENERAL_BUCKET, query="session"), service="s3")
    assert (reply.status, reply.code) == (400, "InvalidRequest")


def test_session_credentials_are_long_random_and_distinct(localzone):
    first, second = session(localzone), session(localzone)
    assert len(first["SessionToken"]) >= 64 and len(second["SessionToken"]) >= 64
    assert first["SessionToken"] != second["SessionToken"]
    assert first["SecretAccessKey"] != second["SecretAccessKey"]
    assert first["AccessKeyId"] != second["AccessKeyId"]
    assert SECRET_KEY not in (first["SecretAccessKey"], second["SecretAccessKey"])


def test_token_of_one_bucket_is_access_denied_on_another(users_zone, key):
    creds = session(users_zone, bucket=DIRECTORY_BUCKET, principal=WRITER)
    assert session_get(users_zone, creds, key, DIRECTORY_BUCKET).status == 404  # valid here: NoSuchKey
    reply = session_get(users_zone, creds, key, OTHER_DIRECTORY_BUCKET)
    assert (reply.status, reply.code) == (403, "AccessDenied")


def _expires_in(creds: dict) -> float:
    return (creds["Expiration"] - datetime.datetime.now(datetime.timezone.utc)).total_seconds()


def test_session_lifetime_defaults_to_five_minutes(localzone):
    assert 298 <= _expires_in(session(localzone)) <= 301


def test_session_lifetime_follows_session_ttl(short_ttl_zone):
    assert -1 <= _expires_in(session(short_ttl_zone)) <= 1.01


# --- token validity ----------------------------------------------------------------------------

def test_expired_token_is_expired_token(short_ttl_zone, key):
    creds = session(short_ttl_zone)
    time.sleep(1.2)
    reply = session_get(short_ttl_zone, creds, key)
    assert (reply.status, reply.code) == (400, "ExpiredToken")


def test_unknown_token_is_invalid_token(localzone, key):
    creds = session(localzone)
    reply = signing.call("GET", signing.object_url(localzone.url, DIRECTORY_BUCKET, key),
                         access_key=creds["AccessKeyId"], secret_key=creds["SecretAccessKey"],
                         token=creds["SessionToken"][:-4] + "AAAA")
    assert (reply.status, reply.code) == (400, "InvalidToken")


def test_admin_expire_sessions_turns_live_tokens_into_expired_token(expirable_zone, key):
    creds = session(expirable_zone)
    assert session_get(expirable_zone, creds, key).code == "NoSuchKey"  # live
    assert expirable_zone.expire_sessions() >= 1
    reply = session_get(expirable_zone, creds, key)
    assert (reply.status, reply.code) == (400, "ExpiredToken")


def test_a_new_session_works_after_expire_sessions(expirable_zone, key):
    session(expirable_zone)
    expirable_zone.expire_sessions()
    assert session_get(expirable_zone, session(expirable_zone), key).code == "NoSuchKey"


# --- ReadOnly sessions -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def read_only_setup(users_zone):
    """An object and an open multipart upload (made by the writer), and the reader's boto3 client,
    whose automatic CreateSession falls back to ReadOnly."""
    key = f"ro-{uuid.uuid4().hex[:8]}/object"
    writer = client(users_zone, WRITER)
    writer.put_object(Bucket=DIRECTORY_BUCKET, Key=key, Body=b"read me")
    upload = writer.create_multipart_upload(Bucket=DIRECTORY_BUCKET, Key=key + ".mpu")["UploadId"]
    return client(users_zone, READER), key, upload


READ_ONLY_DENIED = {
    "PutObject": lambda s3, key, upload: s3.put_object(Bucket=DIRECTORY_BUCKET, Key=key, Body=b"no"),
    "DeleteObject": lambda s3, key, upload: s3.delete_object(Bucket=DIRECTORY_BUCKET, Key=key),
    "CreateMultipartUpload": lambda s3, key, upload: s3.create_multipart_upload(Bucket=DIRECTORY_BUCKET, Key=key + ".2"),
    "UploadPart": lambda s3, key, upload: s3.upload_part(Bucket=DIRECTORY_BUCKET, Key=key + ".mpu", UploadId=upload,
                                                         PartNumber=1, Body=b"no"),
    "AbortMultipartUpload": lambda s3, key, upload: s3.abort_multipart_upload(Bucket=DIRECTORY_BUCKET, Key=key + ".mpu",
                                                                              UploadId=upload),
    "RenameObject": lambda s3, key, upload: s3.rename_object(Bucket=DIRECTORY_BUCKET, Key=key + ".new", RenameSource=key),
    "DeleteObjects": lambda s3, key, upload: s3.delete_objects(Bucket=DIRECTORY_BUCKET, Delete={"Objects": [{"Key": key}]}),
}


@pytest.mark.parametrize("operation", sorted(READ_ONLY_DENIED))
def test_read_only_session_may_not_write(users_zone, read_only_setup, operation):
    s3, key, upload = read_only_setup
    with pytest.raises(ClientError) as excinfo:
        READ_ONLY_DENIED[operation](s3, key, upload)
    assert failure(excinfo) == (403, "AccessDenied")
    assert client(users_zone, WRITER).get_object(Bucket=DIRECTORY_BUCKET, Key=key)["Body"].read() == b"read me"


READ_ONLY_ALLOWED = {
    "GetObject": lambda s3, key, upload: s3.get_object(Bucket=DIRECTORY_BUCKET, Key=key)["Body"].read() == b"read me",
    "HeadObject": lambda s3, key, upload: s3.head_object(Bucket=DIRECTORY_BUCKET, Key=key)["ContentLength"] == 7,
    "ListObjectsV2": lambda s3, key, upload: [o["Key"] for o in s3.list_objects_v2(
        Bucket=DIRECTORY_BUCKET, Prefix=key.split("/")[0] + "/")["Contents"]] == [key],
    "GetObjectAttributes": lambda s3, key, upload: s3.get_object_attributes(
        Bucket=DIRECTORY_BUCKET, Key=key, ObjectAttributes=["ObjectSize"])["ObjectSize"] == 7,
    "ListParts": lambda s3, key, upload: s3.list_parts(
        Bucket=DIRECTORY_BUCKET, Key=key + ".mpu", UploadId=upload)["UploadId"] == upload,
    "ListMultipartUploads": lambda s3, key, upload: upload in [u["UploadId"] for u in s3.list_multipart_uploads(
        Bucket=DIRECTORY_BUCKET, Prefix=key.split("/")[0] + "/").get("Uploads", [])],
}


@pytest.mark.parametrize("operation", sorted(READ_ONLY_ALLOWED))
def test_read_only_session_may_read(read_only_setup, operation):
    s3, key, upload = read_only_setup
    assert READ_ONLY_ALLOWED[operation](s3, key, upload)


def test_read_only_workload_sends_no_mutating_request(users_zone, read_only_setup):
    s3, key, upload = read_only_setup
    users_zone.reset_stats()
    for operation in READ_ONLY_ALLOWED.values():
        assert operation(s3, key, upload)
    stats = users_zone.stats()
    assert stats["mutating_requests"] == 0
    assert sum(stats["requests"].values()) >= len(READ_ONLY_ALLOWED)
    assert stats["statuses"] == {"200": sum(stats["requests"].values())}


def test_explicit_read_only_token_is_access_denied_on_put(localzone, key):
    creds = session(localzone, mode="ReadOnly")
    reply = signing.call("PUT", signing.object_url(localzone.url, DIRECTORY_BUCKET, key), body=b"x", **with_session(creds))
    assert (reply.status, reply.code) == (403, "AccessDenied")


# --- which credentials sign what -----------------------------------------------------------------

def test_copy_object_signed_with_iam_credentials_works(localzone, key):
    s3 = client(localzone)
    s3.put_object(Bucket=DIRECTORY_BUCKET, Key=key, Body=b"copy")
    s3.copy_object(Bucket=DIRECTORY_BUCKET, Key=key + ".copy", CopySource={"Bucket": DIRECTORY_BUCKET, "Key": key})
    assert s3.get_object(Bucket=DIRECTORY_BUCKET, Key=key + ".copy")["Body"].read() == b"copy"


def test_copy_object_signed_with_a_session_is_access_denied(localzone, key):
    put(localzone, DIRECTORY_BUCKET, key)
    reply = signing.call("PUT", signing.object_url(localzone.url, DIRECTORY_BUCKET, key + ".copy"),
                         headers={"x-amz-copy-source": f"{DIRECTORY_BUCKET}/{key}"}, **with_session(session(localzone)))
    assert (reply.status, reply.code) == (403, "AccessDenied")


def test_create_session_signed_with_a_session_is_access_denied(localzone):
    reply = signing.call("GET", signing.object_url(localzone.url, DIRECTORY_BUCKET, query="session"),
                         **with_session(session(localzone)))
    assert (reply.status, reply.code) == (403, "AccessDenied")


def test_directory_data_plane_with_iam_credentials_and_no_token_is_access_denied(localzone, key):
    iam_only = client(localzone, s3={"disable_s3_express_session_auth": True})
    with pytest.raises(ClientError) as excinfo:
        iam_only.get_object(Bucket=DIRECTORY_BUCKET, Key=key)
    assert failure(excinfo) == (403, "AccessDenied")


def test_session_token_on_a_general_bucket_is_invalid_request(localzone, key):
    creds = session(localzone)
    reply = signing.call("GET", signing.object_url(localzone.url, GENERAL_BUCKET, key), service="s3", **with_session(creds))
    assert (reply.status, reply.code) == (400, "InvalidRequest")


def _put_headers_only(zone: LocalZone, key: str, body: bytes, **sign_kwargs) -> http.client.HTTPConnection:
    """Send a signed PUT's headers with "Expect: 100-continue", holding the body back, as botocore does."""
    request = signing.sign("PUT", signing.object_url(zone.url, GENERAL_BUCKET, key), service="s3", body=body,
                           headers={"Expect": "100-continue"}, **sign_kwargs)
    conn = http.client.HTTPConnection("127.0.0.1", zone.port, timeout=5)
    conn.putrequest("PUT", f"/{GENERAL_BUCKET}/{key}", skip_accept_encoding=True)
    for name, value in request.headers.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    return conn


def test_upload_refused_before_its_body_is_answered_without_waiting_for_it(localzone, key):
    conn = _put_headers_only(localzone, key, b"x" * 1000, secret_key="wrong")
    try:
        response = conn.getresponse()  # times out if the endpoint waits for the body
        assert (response.status, b"<Code>SignatureDoesNotMatch</Code>" in response.read()) == (403, True)
        assert response.getheader("Connection") == "close"  # the unsent body can't be skipped otherwise
    finally:
        conn.close()


def test_upload_accepted_after_100_continue(localzone, key):
    conn = _put_headers_only(localzone, key, b"y" * 1000)
    try:
        conn.send(b"y" * 1000)
        response = conn.getresponse()  # http.client skips the interim 100 Continue
        response.read()
        assert response.status == 200
    finally:
        conn.close()
    assert client(localzone).get_object(Bucket=GENERAL_BUCKET, Key=key)["Body"].read() == b"y" * 1000


# --- signature scope, time, anonymous --------------------------------------------------------------

def test_wrong_region_in_credential_scope_is_authorization_header_malformed(localzone, key):
    reply = signing.call("GET", signing.object_url(localzone.url, GENERAL_BUCKET, key), service="s3", region="eu-west-1")
    assert (reply.status, reply.code) == (400, "AuthorizationHeaderMalformed")


def test_service_s3_for_a_directory_bucket_is_authorization_header_malformed(localzone):
    reply = signing.call("GET", signing.object_url(localzone.url, DIRECTORY_BUCKET, query="session"), service="s3")
    assert (reply.status, reply.code) == (400, "AuthorizationHeaderMalformed")


def test_service_s3express_for_a_general_bucket_is_authorization_header_malformed(localzone, key):
    reply = signing.call("GET", signing.object_url(localzone.url, GENERAL_BUCKET, key), service="s3express")
    assert (reply.status, reply.code) == (400, "AuthorizationHeaderMalformed")


@pytest.mark.parametrize("minutes", [-16, 16])
def test_clock_skew_over_fifteen_minutes_is_request_time_too_skewed(localzone, key, minutes):
    when = utcnow() + datetime.timedelta(minutes=minutes)
    reply = signing.call("GET", signing.object_url(localzone.url, GENERAL_BUCKET, key), service="s3", when=when)
    assert (reply.status, reply.code) == (403, "RequestTimeTooSkewed")


def test_clock_skew_under_fifteen_minutes_is_accepted(localzone, key):
    when = utcnow() - datetime.timedelta(minutes=14)
    reply = signing.call("GET", signing.object_url(localzone.url, GENERAL_BUCKET, key), service="s3", when=when)
    assert (reply.status, reply.code) == (404, "NoSuchKey")


def test_expired_presigned_url_is_access_denied(localzone, key):
    put(localzone, GENERAL_BUCKET, key)
    url = signing.presign(signing.object_url(localzone.url, GENERAL_BUCKET, key), expires=60,
                          when=utcnow() - datetime.timedelta(minutes=5))
    reply = signing.send(AWSRequest(method="GET", url=url))
    assert (reply.status, reply.code) == (403, "AccessDenied")


def test_presigned_url_for_another_region_is_authorization_query_parameters_error(localzone, key):
    url = signing.presign(signing.object_url(localzone.url, GENERAL_BUCKET, key), region="eu-west-1")
    reply = signing.send(AWSRequest(method="GET", url=url))
    assert (reply.status, reply.code) == (400, "AuthorizationQueryParametersError")


def test_anonymous_request_is_access_denied(localzone, key):
    put(localzone, GENERAL_BUCKET, key)
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(signing.object_url(localzone.url, GENERAL_BUCKET, key), timeout=10)
    assert excinfo.value.code == 403
    assert b"<Code>AccessDenied</Code>" in excinfo.value.read()


# --- object and request errors ---------------------------------------------------------------------

def test_missing_general_bucket_is_no_such_bucket(localzone, key):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).get_object(Bucket="no-such-bucket-here", Key=key)
    assert failure(excinfo) == (404, "NoSuchBucket")


@pytest.mark.parametrize("bucket", [GENERAL_BUCKET, DIRECTORY_BUCKET])
def test_get_of_a_missing_key_is_no_such_key(localzone, key, bucket):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).get_object(Bucket=bucket, Key=key)
    assert failure(excinfo) == (404, "NoSuchKey")


def test_head_of_a_missing_key_is_404_without_a_body(localzone, key):
    reply = signing.call("HEAD", signing.object_url(localzone.url, GENERAL_BUCKET, key), service="s3")
    assert reply.status == 404
    assert reply.headers.get("content-length", "0") == "0" and reply.body == b""


def test_key_over_1024_bytes_is_key_too_long(localzone):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).put_object(Bucket=GENERAL_BUCKET, Key="k" * 1025, Body=b"x")
    assert failure(excinfo) == (400, "KeyTooLongError")


def test_key_of_1024_bytes_is_accepted(localzone):
    client(localzone).put_object(Bucket=GENERAL_BUCKET, Key="é" * 512, Body=b"x")  # 1024 bytes of UTF-8


def test_write_offset_on_a_general_bucket_is_not_implemented(localzone, key):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).put_object(Bucket=GENERAL_BUCKET, Key=key, Body=b"x", WriteOffsetBytes=0)
    assert failure(excinfo) == (501, "NotImplemented")


def test_rename_on_a_general_bucket_is_not_implemented(localzone, key):
    put(localzone, GENERAL_BUCKET, key)
    with pytest.raises(ClientError) as excinfo:
        client(localzone).rename_object(Bucket=GENERAL_BUCKET, Key=key + ".new", RenameSource=key)
    assert failure(excinfo) == (501, "NotImplemented")


def test_list_objects_v1_on_a_directory_bucket_is_not_implemented(localzone):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).list_objects(Bucket=DIRECTORY_BUCKET)
    assert failure(excinfo) == (501, "NotImplemented")


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_content_md5_on_a_directory_bucket_put_is_invalid_request(localzone, key):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).put_object(Bucket=DIRECTORY_BUCKET, Key=key, Body=b"abc", ContentMD5=_md5(b"abc"))
    assert failure(excinfo) == (400, "InvalidRequest")


def test_wrong_content_md5_on_a_general_bucket_is_bad_digest(localzone, key):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).put_object(Bucket=GENERAL_BUCKET, Key=key, Body=b"abc", ContentMD5=_md5(b"abd"))
    assert failure(excinfo) == (400, "BadDigest")
    with pytest.raises(ClientError):
        client(localzone).head_object(Bucket=GENERAL_BUCKET, Key=key)  # nothing was stored


def test_body_not_matching_x_amz_content_sha256_is_mismatch(localzone, key):
    request = signing.sign("PUT", signing.object_url(localzone.url, GENERAL_BUCKET, key), service="s3", body=b"signed")
    request.data = b"sneaky"  # same length, other bytes
    reply = signing.send(request)
    assert (reply.status, reply.code) == (400, "XAmzContentSHA256Mismatch")


def test_empty_append_is_invalid_argument(localzone, key):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).put_object(Bucket=DIRECTORY_BUCKET, Key=key, Body=b"", WriteOffsetBytes=0)
    assert failure(excinfo) == (400, "InvalidArgument")


def test_too_many_appends_is_too_many_parts(tmp_path, monkeypatch):
    """The 10,000-part limit, lowered to 3 through the store's constant in an in-process endpoint."""
    from s3xfs.localzone import storage
    from s3xfs.localzone.principals import default_principal
    from s3xfs.localzone.server import LocalZone as Endpoint, Settings

    monkeypatch.setattr(storage, "MAX_PARTS", 3)
    endpoint = Endpoint(Settings(root=tmp_path / "root", buckets=[DIRECTORY_BUCKET],
                                 principals=[default_principal(ACCESS_KEY, SECRET_KEY)]))
    host, port = endpoint.bind()
    thread = threading.Thread(target=endpoint.serve_forever, daemon=True)
    thread.start()
    try:
        zone = LocalZone(tmp_path)
        zone.url = f"http://{host}:{port}"
        s3 = client(zone)
        for offset in range(3):
            s3.put_object(Bucket=DIRECTORY_BUCKET, Key="log", Body=b"x", WriteOffsetBytes=offset)
        with pytest.raises(ClientError) as excinfo:
            s3.put_object(Bucket=DIRECTORY_BUCKET, Key="log", Body=b"x", WriteOffsetBytes=3)
        assert failure(excinfo) == (400, "TooManyParts")
        assert s3.head_object(Bucket=DIRECTORY_BUCKET, Key="log")["ContentLength"] == 3
    finally:
        endpoint.shutdown()
        thread.join(timeout=10)


DELETE_BODY = b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>k</Key></Object></Delete>'


def test_delete_objects_without_checksum_on_a_directory_bucket_is_invalid_request(localzone):
    reply = signing.call("POST", signing.object_url(localzone.url, DIRECTORY_BUCKET, query="delete"), body=DELETE_BODY,
                         **with_session(session(localzone)))
    assert (reply.status, reply.code) == (400, "InvalidRequest")


def test_delete_objects_without_content_md5_on_a_general_bucket_is_invalid_request(localzone):
    reply = signing.call("POST", signing.object_url(localzone.url, GENERAL_BUCKET, query="delete"), body=DELETE_BODY,
                         service="s3")
    assert (reply.status, reply.code) == (400, "InvalidRequest")


def test_content_md5_is_not_enough_for_delete_objects_on_a_directory_bucket(localzone):
    reply = signing.call("POST", signing.object_url(localzone.url, DIRECTORY_BUCKET, query="delete"), body=DELETE_BODY,
                         headers={"Content-MD5": _md5(DELETE_BODY)}, **with_session(session(localzone)))
    assert (reply.status, reply.code) == (400, "InvalidRequest")


@pytest.mark.parametrize("body", [b"<Delete><Object><Key>k</Key></Object>", b"not xml at all", b"<Other/>"])
def test_malformed_delete_document_is_malformed_xml(localzone, body):
    reply = signing.call("POST", signing.object_url(localzone.url, GENERAL_BUCKET, query="delete"), body=body,
                         headers={"Content-MD5": _md5(body)}, service="s3")
    assert (reply.status, reply.code) == (400, "MalformedXML")


def test_unsupported_object_subresource_is_not_implemented(localzone, key):
    put(localzone, GENERAL_BUCKET, key)
    with pytest.raises(ClientError) as excinfo:
        client(localzone).get_object_tagging(Bucket=GENERAL_BUCKET, Key=key)
    assert failure(excinfo) == (501, "NotImplemented")


def test_unsupported_bucket_subresource_is_not_implemented(localzone):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).get_bucket_policy(Bucket=GENERAL_BUCKET)
    assert failure(excinfo) == (501, "NotImplemented")


def test_wrong_storage_class_on_a_directory_bucket_is_invalid_storage_class(localzone, key):
    with pytest.raises(ClientError) as excinfo:
        client(localzone).put_object(Bucket=DIRECTORY_BUCKET, Key=key, Body=b"x", StorageClass="STANDARD")
    assert failure(excinfo) == (400, "InvalidStorageClass")


def test_express_onezone_storage_class_is_accepted_on_a_directory_bucket(localzone, key):
    client(localzone).put_object(Bucket=DIRECTORY_BUCKET, Key=key, Body=b"x", StorageClass="EXPRESS_ONEZONE")
