"""boto3, with its built-in S3 Express support (it calls CreateSession by itself), against the
local endpoint's directory bucket."""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.request
import uuid

import google_crc32c
import pytest
from botocore.exceptions import ClientError

from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, LocalZone

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3(localzone: LocalZone):
    return localzone.client()


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/"


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_put_get_head_roundtrip_with_metadata(s3, prefix):
    body = os.urandom(100_000)
    put = s3.put_object(Bucket=BUCKET, Key=prefix + "a b+c.bin", Body=body, ContentType="application/x-test",
                        Metadata={"owner": "alice"})
    got = s3.get_object(Bucket=BUCKET, Key=prefix + "a b+c.bin")
    assert got["Body"].read() == body
    assert got["ETag"] == put["ETag"]
    head = s3.head_object(Bucket=BUCKET, Key=prefix + "a b+c.bin")
    assert head["ContentLength"] == len(body)
    assert head["ContentType"] == "application/x-test"
    assert head["Metadata"] == {"owner": "alice"}
    assert head["StorageClass"] == "EXPRESS_ONEZONE"
    etag = put["ETag"].strip('"')
    assert etag.isalnum() and etag != hashlib.md5(body).hexdigest()  # random, not MD5


def test_botocore_creates_one_readwrite_session_for_many_requests(localzone: LocalZone, prefix):
    client = localzone.client()
    before = localzone.stats()["sessions"]
    for n in range(5):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}{n}", Body=b"x")
    after = localzone.stats()["sessions"]
    assert after["ReadWrite"] - before["ReadWrite"] == 1  # botocore sends no mode: S3 picks ReadWrite
    assert after["ReadOnly"] == before["ReadOnly"]


def test_ranges(s3, prefix):
    body = bytes(range(256)) * 40
    s3.put_object(Bucket=BUCKET, Key=prefix + "r", Body=body)
    assert s3.get_object(Bucket=BUCKET, Key=prefix + "r", Range="bytes=10-19")["Body"].read() == body[10:20]
    tail = s3.get_object(Bucket=BUCKET, Key=prefix + "r", Range="bytes=-7")
    assert tail["Body"].read() == body[-7:]
    assert tail["ContentRange"] == f"bytes {len(body) - 7}-{len(body) - 1}/{len(body)}"
    assert s3.get_object(Bucket=BUCKET, Key=prefix + "r", Range="bytes=10000-")["Body"].read() == body[10000:]
    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket=BUCKET, Key=prefix + "r", Range=f"bytes={len(body)}-")
    assert error_code(excinfo) == "InvalidRange"


def test_listing_is_unordered_complete_and_paginated(s3, prefix):
    keys = {f"{prefix}k{n:03d}" for n in range(60)}
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
    seen: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix, PaginationConfig={"PageSize": 7}):
        seen.extend(item["Key"] for item in page.get("Contents", []))
    assert sorted(seen) == sorted(keys)
    assert len(seen) == len(set(seen))
    assert seen != sorted(seen)  # 60 keys in lexicographic order by chance: impossible in practice


def test_listing_with_delimiter_shows_directories_and_removes_empty_ones(s3, prefix):
    s3.put_object(Bucket=BUCKET, Key=prefix + "top.txt", Body=b"1")
    s3.put_object(Bucket=BUCKET, Key=prefix + "dir/a/deep.txt", Body=b"2")
    s3.put_object(Bucket=BUCKET, Key=prefix + "dir/b.txt", Body=b"3")
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, Delimiter="/")
    assert [c["Key"] for c in page["Contents"]] == [prefix + "top.txt"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == [prefix + "dir/"]
    s3.delete_object(Bucket=BUCKET, Key=prefix + "dir/a/deep.txt")
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "dir/", Delimiter="/")
    assert "CommonPrefixes" not in page  # dir/a/ went away with its last object
    s3.delete_object(Bucket=BUCKET, Key=prefix + "dir/b.txt")
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, Delimiter="/")
    assert "CommonPrefixes" not in page


def test_directory_bucket_listing_rules(s3, prefix):
    s3.put_object(Bucket=BUCKET, Key=prefix + "x", Body=b"")
    for kwargs, code in [({"Prefix": prefix + "x"}, "InvalidRequest"),
                         ({"Prefix": prefix, "Delimiter": "-"}, "InvalidArgument"),
                         ({"Prefix": prefix, "StartAfter": prefix + "a"}, "InvalidArgument")]:
        with pytest.raises(ClientError) as excinfo:
            s3.list_objects_v2(Bucket=BUCKET, **kwargs)
        assert error_code(excinfo) == code, kwargs


def test_in_progress_multipart_upload_creates_a_prefix(s3, prefix):
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=prefix + "pending/file")
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == [prefix + "pending/"]
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)["Uploads"]
    assert [u["UploadId"] for u in uploads] == [upload["UploadId"]]
    s3.abort_multipart_upload(Bucket=BUCKET, Key=prefix + "pending/file", UploadId=upload["UploadId"])
    assert "CommonPrefixes" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, Delimiter="/")


def test_multipart_upload(s3, prefix):
    key = prefix + "big"
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1 * MiB)]
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key, ChecksumAlgorithm="CRC32")
    done = []
    for number, data in enumerate(parts, 1):
        reply = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data,
                               ChecksumAlgorithm="CRC32")
        done.append({"PartNumber": number, "ETag": reply["ETag"], "ChecksumCRC32": reply["ChecksumCRC32"]})
    listed = s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"])["Parts"]
    assert [p["Size"] for p in listed] == [len(p) for p in parts]
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": done})
    got = s3.get_object(Bucket=BUCKET, Key=key)
    assert got["Body"].read() == b"".join(parts)
    assert got["PartsCount"] == 3
    part2 = s3.get_object(Bucket=BUCKET, Key=key, PartNumber=2)
    assert part2["Body"].read() == parts[1]
    attributes = s3.get_object_attributes(Bucket=BUCKET, Key=key, ObjectAttributes=["ObjectParts", "ObjectSize", "Checksum"])
    assert attributes["ObjectSize"] == sum(map(len, parts))
    assert attributes["ObjectParts"]["TotalPartsCount"] == 3
    assert attributes["Checksum"]["ChecksumCRC32"].endswith("-3")


def test_multipart_rules_of_directory_buckets(s3, prefix):
    key = prefix + "bad"
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)
    small = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"tiny")
    last = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=3, Body=b"end")
    with pytest.raises(ClientError) as excinfo:  # 1, 3: not consecutive
        s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": small["ETag"]}, {"PartNumber": 3, "ETag": last["ETag"]}]})
    assert error_code(excinfo) == "InvalidPartOrder"
    second = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=2, Body=b"end")
    with pytest.raises(ClientError) as excinfo:  # part 1 is below 5 MiB and not the last
        s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": small["ETag"]}, {"PartNumber": 2, "ETag": second["ETag"]}]})
    assert error_code(excinfo) == "EntityTooSmall"
    with pytest.raises(ClientError) as excinfo:
        s3.upload_part(Bucket=BUCKET, Key=key, UploadId="no-such-upload", PartNumber=1, Body=b"x")
    assert error_code(excinfo) == "NoSuchUpload"


def test_rename_is_atomic_and_keeps_the_object(s3, prefix):
    put = s3.put_object(Bucket=BUCKET, Key=prefix + "old name", Body=b"payload", Metadata={"k": "v"})
    s3.rename_object(Bucket=BUCKET, Key=prefix + "new/name", RenameSource=prefix + "old name")
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket=BUCKET, Key=prefix + "old name")
    assert excinfo.value.response["Error"]["Code"] == "404"
    moved = s3.get_object(Bucket=BUCKET, Key=prefix + "new/name")
    assert moved["Body"].read() == b"payload"
    assert moved["ETag"] == put["ETag"] and moved["Metadata"] == {"k": "v"}


def test_rename_conditions_and_errors(s3, prefix):
    s3.put_object(Bucket=BUCKET, Key=prefix + "src", Body=b"1")
    s3.put_object(Bucket=BUCKET, Key=prefix + "dst", Body=b"2")
    with pytest.raises(ClientError) as excinfo:
        s3.rename_object(Bucket=BUCKET, Key=prefix + "dst", RenameSource=prefix + "src", DestinationIfNoneMatch="*")
    assert error_code(excinfo) == "PreconditionFailed"
    s3.rename_object(Bucket=BUCKET, Key=prefix + "dst", RenameSource=prefix + "src")  # replaces
    assert s3.get_object(Bucket=BUCKET, Key=prefix + "dst")["Body"].read() == b"1"
    with pytest.raises(ClientError) as excinfo:
        s3.rename_object(Bucket=BUCKET, Key=prefix + "other", RenameSource=prefix + "missing")
    assert error_code(excinfo) == "NoSuchKey"


def test_append_with_write_offset(s3, prefix):
    key = prefix + "log"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"first\n", WriteOffsetBytes=0)
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"second\n", WriteOffsetBytes=6)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"first\nsecond\n"
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x", WriteOffsetBytes=3)
    assert error_code(excinfo) == "InvalidWriteOffset"
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket=BUCKET, Key=prefix + "missing", Body=b"x", WriteOffsetBytes=5)
    assert error_code(excinfo) == "NoSuchKey"


def test_conditional_writes(s3, prefix):
    key = prefix + "cond"
    first = s3.put_object(Bucket=BUCKET, Key=key, Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"2", IfNoneMatch="*")
    assert error_code(excinfo) == "PreconditionFailed"
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"2", IfMatch='"not-the-etag"')
    assert error_code(excinfo) == "PreconditionFailed"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"3", IfMatch=first["ETag"])
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"3"
    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket=BUCKET, Key=key, IfMatch=first["ETag"])
    assert error_code(excinfo) == "PreconditionFailed"


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "SHA1", "SHA256"])
def test_checksums_are_verified_and_returned(s3, prefix, algorithm):
    key = prefix + algorithm
    if algorithm == "CRC32C":  # botocore computes CRC32C only with awscrt; give it the value instead
        value = base64.b64encode(google_crc32c.value(b"checked data").to_bytes(4, "big")).decode()
        put = s3.put_object(Bucket=BUCKET, Key=key, Body=b"checked data", ChecksumCRC32C=value)
    else:
        put = s3.put_object(Bucket=BUCKET, Key=key, Body=b"checked data", ChecksumAlgorithm=algorithm)
    got = s3.get_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert got["Body"].read() == b"checked data"
    assert got[f"Checksum{algorithm}"] == put[f"Checksum{algorithm}"]
    with pytest.raises(ClientError) as excinfo:  # a value that does not match the body
        s3.put_object(Bucket=BUCKET, Key=key + "-bad", Body=b"checked data!", **{f"Checksum{algorithm}": put[f"Checksum{algorithm}"]})
    assert error_code(excinfo) == "BadDigest"


def test_delete_and_delete_objects(s3, prefix):
    for name in "abc":
        s3.put_object(Bucket=BUCKET, Key=prefix + name, Body=b"x")
    s3.delete_object(Bucket=BUCKET, Key=prefix + "a")
    result = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": prefix + "b"}, {"Key": prefix + "c"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == [prefix + "b", prefix + "c"]
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["KeyCount"] == 0


def test_copy_object_uses_iam_credentials(localzone: LocalZone, s3, prefix):
    s3.put_object(Bucket=BUCKET, Key=prefix + "source", Body=b"copy me", Metadata={"a": "1"})
    s3.copy_object(Bucket=BUCKET, Key=prefix + "copy", CopySource={"Bucket": BUCKET, "Key": prefix + "source"})
    copied = s3.get_object(Bucket=BUCKET, Key=prefix + "copy")
    assert copied["Body"].read() == b"copy me" and copied["Metadata"] == {"a": "1"}
    rows = [row for row in localzone.access_log() if row[2] == "CopyObject" and row[4].endswith("copy")]
    assert rows and rows[-1][7] == "IAM"


def test_head_bucket_reports_the_zone(s3):
    headers = s3.head_bucket(Bucket=BUCKET)["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amz-bucket-location-type"] == "AvailabilityZone"
    assert headers["x-amz-bucket-location-name"] == "usw2-az1"
    assert headers["x-amz-bucket-arn"].endswith(f":bucket/{BUCKET}")


def test_presigned_get(s3, prefix):
    s3.put_object(Bucket=BUCKET, Key=prefix + "shared file", Body=b"presigned")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": prefix + "shared file"}, ExpiresIn=60)
    assert "X-Amz-S3session-Token" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned"


def test_large_object_streams_both_ways(s3, prefix, localzone: LocalZone):
    size = 64 * MiB
    chunk = os.urandom(MiB)
    data = chunk * (size // MiB)
    s3.put_object(Bucket=BUCKET, Key=prefix + "large", Body=data)
    body = s3.get_object(Bucket=BUCKET, Key=prefix + "large")["Body"]
    digest = hashlib.sha256()
    for piece in iter(lambda: body.read(4 * MiB), b""):
        digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
