"""The AWS CLI (awscli 1.x, botocore underneath) as a real client of the local endpoint.

Every command runs as a subprocess against ``--endpoint-url`` with the environment from
``LocalZone.env()``: for the directory bucket botocore calls CreateSession by itself and signs
with the session, for the general purpose bucket it signs plain SigV4. Bytes are compared after
each round trip, and the endpoint's counters show which S3 operations the CLI used.
"""

from __future__ import annotations

import base64
import datetime as dt
import filecmp
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.localzone import DIRECTORY_BUCKET, GENERAL_BUCKET, LocalZone

pytestmark = pytest.mark.skipif(importlib.util.find_spec("awscli") is None, reason="awscli is not installed")

MiB = 1024 * 1024
BIG = 20 * MiB  # the CLI's multipart threshold and chunk size are 8 MiB: three parts
BUCKETS = [pytest.param(DIRECTORY_BUCKET, id="directory"), pytest.param(GENERAL_BUCKET, id="general")]

Aws = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def aws(localzone: LocalZone, own_requests: Counter[str]) -> Aws:
    """Run ``aws <args>`` against the endpoint; asserts the exit code (``expect``) by default."""
    base_env = localzone.env()

    def run(*args: str, expect: int | None = 0, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "awscli", *args, "--endpoint-url", localzone.url]
        result = subprocess.run(command, env={**base_env, **(env or {})}, capture_output=True, text=True,
                                timeout=timeout)
        if expect is not None:
            assert result.returncode == expect, (
                f"aws {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    return run


@pytest.fixture(scope="module")
def own_requests(localzone: LocalZone) -> Iterator[Counter[str]]:
    """Requests the tests' own boto3 checks make; at the end of the module the endpoint's counters
    minus these (what the CLI sent) are printed (run with ``-s`` to see them)."""
    own: Counter[str] = Counter()
    before = Counter(localzone.stats()["requests"])
    yield own
    sent = Counter(localzone.stats()["requests"])
    sent.subtract(before)
    sent.subtract(own)
    print(f"\n[awscli] S3 operations used: {json.dumps({op: n for op, n in sorted(sent.items()) if n > 0})}")


@pytest.fixture(scope="module")
def checks(localzone: LocalZone, own_requests: Counter[str]) -> Any:
    """boto3 straight on the endpoint, for setting up and checking; its requests are counted apart."""
    client = localzone.client()
    client.meta.events.register("after-call.s3", lambda model, **_: own_requests.update([model.name]))
    return client


@pytest.fixture
def prefix() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}/"


def requests_delta(before: dict, after: dict) -> dict[str, int]:
    old, new = before["requests"], after["requests"]
    return {op: new[op] - old.get(op, 0) for op in new if new[op] - old.get(op, 0)}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- CreateSession ---------------------------------------------------------------------------------

def test_create_session_returns_credentials(aws: Aws, localzone: LocalZone):
    before = localzone.stats()["sessions"]
    result = aws("s3api", "create-session", "--bucket", DIRECTORY_BUCKET, "--output", "json")
    credentials = json.loads(result.stdout)["Credentials"]
    assert set(credentials) >= {"AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert all(credentials[name] for name in ("AccessKeyId", "SecretAccessKey", "SessionToken"))
    assert credentials["AccessKeyId"] != "AKIAIOSFODNN7EXAMPLE"  # session keys, not the caller's own
    expires = dt.datetime.fromisoformat(credentials["Expiration"].replace("Z", "+00:00"))
    remaining = (expires - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert 200 < remaining <= 301  # S3 Express sessions last five minutes
    after = localzone.stats()["sessions"]
    # The CLI's own s3api call (no mode header: S3 picks ReadWrite); botocore may add one of its own
    assert after["ReadWrite"] - before["ReadWrite"] >= 1
    assert after["ReadOnly"] == before["ReadOnly"]


def test_create_session_read_only_mode(aws: Aws, localzone: LocalZone):
    before = localzone.stats()["sessions"]
    result = aws("s3api", "create-session", "--bucket", DIRECTORY_BUCKET, "--session-mode", "ReadOnly",
                 "--output", "json")
    credentials = json.loads(result.stdout)["Credentials"]
    assert credentials["SessionToken"] and credentials["AccessKeyId"] and credentials["SecretAccessKey"]
    after = localzone.stats()["sessions"]
    assert after["ReadOnly"] - before["ReadOnly"] == 1


def test_create_session_missing_bucket(aws: Aws):
    result = aws("s3api", "create-session", "--bucket", "nothere--usw2-az1--x-s3", expect=None)
    assert result.returncode != 0
    assert "NoSuchBucket" in result.stderr


# --- cp up and down --------------------------------------------------------------------------------

@pytest.mark.parametrize("bucket", BUCKETS)
def test_cp_small_and_multipart_roundtrip(aws: Aws, checks: Any, localzone: LocalZone, tmp_path: Path, prefix: str,
                                          bucket: str):
    small = write(tmp_path / "up" / "small.txt", b"hello, zonal endpoint\n")
    big = write(tmp_path / "up" / "big.bin", os.urandom(BIG))
    base = f"s3://{bucket}/{prefix}"

    before = localzone.stats()
    aws("s3", "cp", str(small), base + "small.txt", "--no-progress")
    aws("s3", "cp", str(big), base + "big.bin", "--no-progress")
    uploaded = requests_delta(before, localzone.stats())
    assert uploaded.get("PutObject") == 1  # the small file
    assert uploaded.get("CreateMultipartUpload") == 1 and uploaded.get("CompleteMultipartUpload") == 1
    assert uploaded.get("UploadPart") == 3  # 8 + 8 + 4 MiB
    assert ("CreateSession" in uploaded) == (bucket == DIRECTORY_BUCKET)

    head = checks.head_object(Bucket=bucket, Key=prefix + "big.bin")
    assert head["ContentLength"] == BIG

    before = localzone.stats()
    down = tmp_path / "down"
    result = aws("s3", "cp", base + "small.txt", str(down / "small.txt"))
    assert f"download: {base}small.txt to" in result.stdout
    aws("s3", "cp", base + "big.bin", str(down / "big.bin"), "--no-progress")
    downloaded = requests_delta(before, localzone.stats())
    assert downloaded.get("GetObject", 0) >= 2
    assert not {"PutObject", "UploadPart", "DeleteObject"} & set(downloaded)
    assert (down / "small.txt").read_bytes() == small.read_bytes()
    assert filecmp.cmp(down / "big.bin", big, shallow=False)


def test_cp_and_mv_between_buckets(aws: Aws, checks: Any, localzone: LocalZone, tmp_path: Path, prefix: str):
    """Server-side copies: CopyObject (and UploadPartCopy for a multipart-sized source), which a
    directory bucket wants signed with IAM credentials rather than the session."""
    data = os.urandom(BIG)
    source = write(tmp_path / "src.bin", data)
    directory, general = f"s3://{DIRECTORY_BUCKET}/{prefix}", f"s3://{GENERAL_BUCKET}/{prefix}"
    aws("s3", "cp", str(source), directory + "a.bin", "--no-progress")
    before = localzone.stats()
    aws("s3", "mv", directory + "a.bin", directory + "b.bin", "--no-progress")
    aws("s3", "cp", directory + "b.bin", general + "c.bin", "--no-progress")
    aws("s3", "cp", general + "c.bin", directory + "d.bin", "--no-progress")
    copied = requests_delta(before, localzone.stats())
    assert copied.get("UploadPartCopy", 0) >= 3 or copied.get("CopyObject", 0) >= 3
    assert copied.get("DeleteObject") == 1  # mv removed a.bin
    for bucket, key in ((DIRECTORY_BUCKET, "b.bin"), (GENERAL_BUCKET, "c.bin"), (DIRECTORY_BUCKET, "d.bin")):
        assert checks.get_object(Bucket=bucket, Key=prefix + key)["Body"].read() == data
    listed = checks.list_objects_v2(Bucket=DIRECTORY_BUCKET, Prefix=prefix)
    assert sorted(item["Key"] for item in listed["Contents"]) == [prefix + "b.bin", prefix + "d.bin"]


# --- ls ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bucket", BUCKETS)
def test_ls_prefix_and_recursive(aws: Aws, checks: Any, prefix: str, bucket: str):
    objects = {"top.txt": b"12345", "sub/one.txt": b"1", "sub/deeper/two.bin": b"x" * 1000}
    for key, body in objects.items():
        checks.put_object(Bucket=bucket, Key=prefix + key, Body=body)

    listing = aws("s3", "ls", f"s3://{bucket}/{prefix}").stdout.splitlines()
    assert any(line.split() == ["PRE", "sub/"] for line in listing), listing
    files = [line.split() for line in listing if not line.strip().startswith("PRE")]
    assert [(fields[2], fields[3]) for fields in files] == [("5", "top.txt")]

    recursive = aws("s3", "ls", f"s3://{bucket}/{prefix}", "--recursive").stdout.splitlines()
    found = {fields[3]: int(fields[2]) for fields in (line.split() for line in recursive)}
    assert found == {prefix + key: len(body) for key, body in objects.items()}

    # Nothing under a prefix: the CLI exits 1 with no output
    empty = aws("s3", "ls", f"s3://{bucket}/{prefix}nothing/", expect=1)
    assert empty.stdout == ""


def test_ls_buckets_lists_general_purpose_buckets_only(aws: Aws):
    names = [line.split()[-1] for line in aws("s3", "ls").stdout.splitlines()]
    assert GENERAL_BUCKET in names
    assert DIRECTORY_BUCKET not in names  # ListBuckets never shows directory buckets


# --- rm ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bucket", BUCKETS)
def test_rm_single_and_recursive(aws: Aws, checks: Any, prefix: str, bucket: str):
    keys = ["keep.txt", "gone.txt", "tree/a.txt", "tree/b/c.txt", "tree/b/d.txt"]
    for key in keys:
        checks.put_object(Bucket=bucket, Key=prefix + key, Body=key.encode())

    result = aws("s3", "rm", f"s3://{bucket}/{prefix}gone.txt")
    assert result.stdout.strip() == f"delete: s3://{bucket}/{prefix}gone.txt"

    result = aws("s3", "rm", f"s3://{bucket}/{prefix}tree/", "--recursive")
    deleted = sorted(line.split("delete: ", 1)[1] for line in result.stdout.splitlines() if line.strip())
    assert deleted == sorted(f"s3://{bucket}/{prefix}{key}" for key in keys if key.startswith("tree/"))

    listed = checks.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
    assert [item["Key"] for item in listed.get("Contents", [])] == [prefix + "keep.txt"]
    assert listed.get("CommonPrefixes", []) == []  # in a directory bucket the emptied directories went too


# --- sync -------------------------------------------------------------------------------------------

def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "readme.txt": b"top level\n",
        "docs/a.txt": b"alpha\n",
        "docs/deep/b.txt": b"beta\n",
        "data/blob.bin": os.urandom(300_000),
        "name with spaces+plus.txt": b"odd name\n",
    }
    for name, data in files.items():
        write(root / name, data)
    return files


def assert_same_tree(left: Path, right: Path) -> None:
    comparison = filecmp.dircmp(left, right)
    pending = [comparison]
    while pending:
        current = pending.pop()
        assert not current.left_only and not current.right_only and not current.diff_files, current.report()
        _match, mismatch, errors = filecmp.cmpfiles(current.left, current.right, current.common_files, shallow=False)
        assert not mismatch and not errors
        pending.extend(current.subdirs.values())


def test_sync_tree_up_and_back_general_bucket(aws: Aws, localzone: LocalZone, tmp_path: Path, prefix: str):
    local = tmp_path / "tree"
    files = make_tree(local)
    remote = f"s3://{GENERAL_BUCKET}/{prefix}"

    first = aws("s3", "sync", str(local), remote, "--no-progress")
    assert len([line for line in first.stdout.splitlines() if line.startswith("upload:")]) == len(files)

    before = localzone.stats()
    again = aws("s3", "sync", str(local), remote, "--no-progress")
    assert again.stdout.strip() == ""  # sizes and times match: nothing to do
    assert not {"PutObject", "CreateMultipartUpload"} & set(requests_delta(before, localzone.stats()))

    (local / "docs" / "a.txt").write_bytes(b"alpha, longer now\n")
    (local / "readme.txt").unlink()
    changed = aws("s3", "sync", str(local), remote, "--delete", "--no-progress").stdout
    lines = sorted(changed.splitlines())  # the CLI prints local paths relative to its cwd
    assert len(lines) == 2, changed
    assert lines[0] == f"delete: {remote}readme.txt"
    assert lines[1].startswith("upload: ") and lines[1].endswith(f"tree/docs/a.txt to {remote}docs/a.txt")

    back = tmp_path / "back"
    result = aws("s3", "sync", remote, str(back), "--no-progress")
    assert len([line for line in result.stdout.splitlines() if line.startswith("download:")]) == len(files) - 1
    assert_same_tree(local, back)


def test_directory_bucket_tree_up_and_back(aws: Aws, tmp_path: Path, prefix: str):
    """awscli refuses ``s3 sync`` on directory buckets by itself (before any request); the
    recursive cp is how the CLI moves a tree there."""
    local = tmp_path / "tree"
    files = make_tree(local)
    remote = f"s3://{DIRECTORY_BUCKET}/{prefix}"

    refused = aws("s3", "sync", str(local), remote, expect=None)
    assert refused.returncode != 0 and "Cannot use sync command with a directory bucket" in refused.stderr

    up = aws("s3", "cp", str(local), remote, "--recursive", "--no-progress")
    assert len([line for line in up.stdout.splitlines() if line.startswith("upload:")]) == len(files)
    back = tmp_path / "back"
    down = aws("s3", "cp", remote, str(back), "--recursive", "--no-progress")
    assert len([line for line in down.stdout.splitlines() if line.startswith("download:")]) == len(files)
    assert_same_tree(local, back)


# --- checksums, presigned URLs, bucket management ------------------------------------------------------

def test_cp_with_sha256_checksums_on_directory_bucket(aws: Aws, tmp_path: Path, prefix: str):
    small = write(tmp_path / "small.txt", b"checksummed\n")
    big = write(tmp_path / "big.bin", os.urandom(BIG))
    base = f"s3://{DIRECTORY_BUCKET}/{prefix}"
    aws("s3", "cp", str(small), base + "small.txt", "--checksum-algorithm", "SHA256", "--no-progress")
    aws("s3", "cp", str(big), base + "big.bin", "--checksum-algorithm", "SHA256", "--no-progress")
    head = json.loads(aws("s3api", "head-object", "--bucket", DIRECTORY_BUCKET, "--key", prefix + "small.txt",
                          "--checksum-mode", "ENABLED", "--output", "json").stdout)
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(small.read_bytes()).digest()).decode()
    head = json.loads(aws("s3api", "head-object", "--bucket", DIRECTORY_BUCKET, "--key", prefix + "big.bin",
                          "--output", "json").stdout)
    assert head["ContentLength"] == BIG


def test_presigned_get(aws: Aws, checks: Any, tmp_path: Path, prefix: str):
    """``aws s3 presign``: for a directory bucket botocore presigns with a session (s3express,
    X-Amz-S3session-Token); for general purpose buckets it presigns SigV2 unless the profile
    says ``s3.signature_version = s3v4`` (the endpoint, like newer S3 regions, takes SigV4 only)."""
    checks.put_object(Bucket=DIRECTORY_BUCKET, Key=prefix + "p.txt", Body=b"presigned directory")
    checks.put_object(Bucket=GENERAL_BUCKET, Key=prefix + "p.txt", Body=b"presigned general")

    url = aws("s3", "presign", f"s3://{DIRECTORY_BUCKET}/{prefix}p.txt", "--expires-in", "60").stdout.strip()
    assert "X-Amz-S3session-Token=" in url and "%2Fs3express%2Faws4_request" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned directory"

    config = tmp_path / "aws-config"
    config.write_text("[default]\ns3 =\n    signature_version = s3v4\n")
    url = aws("s3", "presign", f"s3://{GENERAL_BUCKET}/{prefix}p.txt", env={"AWS_CONFIG_FILE": str(config)}).stdout.strip()
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned general"


def test_mb_and_rb_general_purpose_bucket(aws: Aws, checks: Any):
    name = f"cli-bucket-{uuid.uuid4().hex[:8]}"
    assert aws("s3", "mb", f"s3://{name}").stdout.strip() == f"make_bucket: {name}"
    checks.put_object(Bucket=name, Key="inside.txt", Body=b"x")
    removed = aws("s3", "rb", f"s3://{name}", "--force").stdout
    assert f"delete: s3://{name}/inside.txt" in removed and f"remove_bucket: {name}" in removed
    names = [line.split()[-1] for line in aws("s3", "ls").stdout.splitlines()]
    assert name not in names
