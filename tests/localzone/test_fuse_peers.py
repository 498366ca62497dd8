"""Other people's S3 filesystems on the local endpoint: s3fs-fuse and ``rclone mount``.

Both mount the GENERAL PURPOSE bucket (neither speaks S3 Express sessions). Files are written
and read through the mount and checked with boto3 straight on the endpoint; rename, delete,
mkdir/rmdir and metadata changes go through the real FUSE clients. Each variant gets its own
endpoint, so its counters tell which S3 operations that client used (printed at teardown; run
with ``-s`` to see them).

Every mount is undone in the fixture teardown, also when a test fails: ``fusermount3 -u -z``,
then the client process, which we started, is stopped by its PID.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.localzone import ACCESS_KEY, GENERAL_BUCKET, REGION, SECRET_KEY, LocalZone

MiB = 1024 * 1024
MOUNT_TIMEOUT = 20.0
SETTLE_TIMEOUT = 15.0  # rclone's VFS cache uploads in the background
# Answers that are part of normal operation for these clients: probing HEADs for keys that are
# not there (s3fs tries "x", "x/" and "x_$folder$"), and rclone's CreateBucket on an existing bucket.
EXPECTED_ERRORS = {"NoSuchKey", "BucketAlreadyOwnedByYou"}


def _missing(tool: str) -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    if shutil.which(tool) is None:
        return f"{tool} is not installed"
    return None


@dataclass
class Variant:
    tool: str  # "s3fs" or "rclone"
    name: str
    options: list[str] = field(default_factory=list)
    region_option: bool = True  # s3fs: pass endpoint=<region>, or let s3fs find it out

    @property
    def random_writes(self) -> bool:  # rclone without a VFS cache only streams sequential writes
        return not (self.tool == "rclone" and "off" in self.options)


VARIANTS = [
    Variant("s3fs", "s3fs-listv1"),
    # Without endpoint=us-west-2 s3fs signs for us-east-1 first and learns the region from the
    # <Region> of the 400 AuthorizationHeaderMalformed answer, as it does with S3.
    Variant("s3fs", "s3fs-listv2", ["listobjectsv2", "enable_content_md5"], region_option=False),
    # rclone's defaults for provider = Other: ListObjects (v1), no URL encoding of listings
    Variant("rclone", "rclone-cache-off", ["--vfs-cache-mode", "off"]),
    # ... and with ListObjectsV2 plus encoding-type=url, what rclone does for provider = AWS
    Variant("rclone", "rclone-cache-full", ["--vfs-cache-mode", "full", "--vfs-write-back", "100ms",
                                            "--s3-list-version", "2", "--s3-list-url-encode", "true"]),
]


def variant_params() -> list:
    return [pytest.param(v, id=v.name, marks=[pytest.mark.fuse, pytest.mark.skipif(
        _missing(v.tool) is not None, reason=f"{v.name}: {_missing(v.tool)}")]) for v in VARIANTS]


def rclone_env() -> dict[str, str]:
    # rclone's AWS SDK reads AWS_CA_BUNDLE (set on some hosts) and then refuses its own HTTP
    # transport ("LoadCustomCABundleError"); its credentials come from the config file anyway.
    return {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}


def write_rclone_config(path: Path, zone: LocalZone) -> Path:
    path.write_text(
        "[lz]\ntype = s3\nprovider = Other\n"
        f"endpoint = {zone.url}\nregion = {REGION}\n"
        f"access_key_id = {ACCESS_KEY}\nsecret_access_key = {SECRET_KEY}\n"
        "force_path_style = true\n")
    return path


# --- the endpoint and the mount ----------------------------------------------------------------------

@dataclass
class Peer:
    variant: Variant
    zone: LocalZone
    workdir: Path
    own: Counter[str] = field(default_factory=Counter)  # requests the tests' boto3 checks made
    _s3: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def s3(self) -> Any:
        """boto3 on the endpoint for checks; its requests are counted apart from the client's."""
        if self._s3 is None:
            self._s3 = self.zone.client()
            self._s3.meta.events.register("after-call.s3", self._count)
        return self._s3

    def _count(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.own[model.name] += 1

    def client_operations(self) -> dict[str, int]:
        """What the FUSE client sent: the endpoint's counters minus the tests' own checks."""
        total = Counter(self.zone.stats()["requests"])
        with self._lock:
            total.subtract(self.own)
        return {op: n for op, n in sorted(total.items()) if n > 0}


@pytest.fixture(scope="module", params=variant_params())
def peer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """A fresh endpoint (general purpose bucket only) per client variant."""
    variant: Variant = request.param
    workdir = tmp_path_factory.mktemp(variant.name)
    zone = LocalZone(workdir, "--bucket", GENERAL_BUCKET).start()
    try:
        peer = Peer(variant, zone, workdir)
        yield peer
        stats = zone.stats()
        summary = {"client_requests": peer.client_operations(), "statuses": stats["statuses"],
                   "errors": stats["errors"]}
        (workdir / "operations.json").write_text(json.dumps(summary, indent=1))
        print(f"\n[{variant.name}] S3 operations used: {json.dumps(summary)}")
    finally:
        zone.stop()


@dataclass
class Mount:
    path: Path
    peer: Peer
    proc: subprocess.Popen
    log: Path
    baseline: dict[str, int]

    def operations(self) -> dict[str, int]:
        """S3 requests the client sent since this mount started."""
        now = Counter(self.peer.client_operations())
        now.subtract(self.baseline)
        return {op: n for op, n in now.items() if n > 0}

    @property
    def zone(self) -> LocalZone:
        return self.peer.zone

    @property
    def variant(self) -> Variant:
        return self.peer.variant


def _mount_command(peer: Peer, mountpoint: Path, scratch: Path) -> tuple[list[str], dict[str, str]]:
    variant, zone = peer.variant, peer.zone
    if variant.tool == "s3fs":
        passwd = scratch / "passwd-s3fs"  # s3fs refuses a password file others can read
        with os.fdopen(os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        options = [
            f"passwd_file={passwd}", f"url={zone.url}", "use_path_request_style", "sigv4",
            *([f"endpoint={REGION}"] if variant.region_option else []),
            "multipart_size=5",  # so the 12 MiB file goes up in parts
            "use_xattr",  # extended attributes in x-amz-meta-xattr
            f"tmpdir={scratch}", "connect_timeout=5", "readwrite_timeout=20", "retries=2", "dbglevel=warn",
            *variant.options,
        ]
        return ["s3fs", f"{GENERAL_BUCKET}", str(mountpoint), "-f", "-o", ",".join(options)], dict(os.environ)
    config = write_rclone_config(scratch / "rclone.conf", zone)
    command = [
        "rclone", "--config", str(config), "mount", f"lz:{GENERAL_BUCKET}", str(mountpoint),
        "--cache-dir", str(scratch / "cache"), "--dir-cache-time", "1s", "--attr-timeout", "0s",
        "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M",  # multipart for the 12 MiB file
        "--s3-copy-cutoff", "5M",  # server-side copies of big files (rename) with UploadPartCopy
        "--low-level-retries", "2", "-v", *variant.options,
    ]
    return command, rclone_env()


def _unmount(mountpoint: Path, proc: subprocess.Popen) -> None:
    """Lazy-unmount, then make sure the client process we started is gone (by its PID)."""
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=15)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def mount(peer: Peer, tmp_path: Path) -> Iterator[Mount]:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    log = tmp_path / f"{peer.variant.tool}.log"
    command, env = _mount_command(peer, mountpoint, scratch)
    baseline = peer.client_operations()
    with open(log, "wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                pytest.fail(f"{command[0]} exited with {proc.returncode} before mounting:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{command[0]} did not mount within {MOUNT_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.05)
        yield Mount(mountpoint, peer, proc, log, baseline)
    finally:
        _unmount(mountpoint, proc)
    assert not os.path.ismount(mountpoint)


# --- helpers -------------------------------------------------------------------------------------------

def wait_for(check: Callable[[], object], timeout: float = SETTLE_TIMEOUT, what: str = "condition") -> object:
    """Poll ``check`` until it returns a truthy value without raising."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (ClientError, OSError, AssertionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last error: {last!r}")
        time.sleep(0.1)


def s3_body(m: Mount, key: str) -> bytes:
    return m.peer.s3.get_object(Bucket=GENERAL_BUCKET, Key=key)["Body"].read()


def s3_metadata(m: Mount, key: str) -> dict[str, str]:
    return m.peer.s3.head_object(Bucket=GENERAL_BUCKET, Key=key)["Metadata"]


def s3_exists(m: Mount, key: str) -> bool:
    try:
        m.peer.s3.head_object(Bucket=GENERAL_BUCKET, Key=key)
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def s3_keys(m: Mount, prefix: str) -> set[str]:
    pages = m.peer.s3.get_paginator("list_objects_v2").paginate(Bucket=GENERAL_BUCKET, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def wait_body(m: Mount, key: str, data: bytes) -> None:
    wait_for(lambda: s3_body(m, key) == data, what=f"{key} on the endpoint to hold the written bytes")


def wait_gone(m: Mount, key: str) -> None:
    wait_for(lambda: not s3_exists(m, key), what=f"{key} to disappear from the endpoint")


def assert_endpoint_happy(m: Mount) -> None:
    stats = m.zone.stats()
    assert not [s for s in stats["statuses"] if s.startswith("5")], stats
    expected = EXPECTED_ERRORS if m.variant.region_option else EXPECTED_ERRORS | {"AuthorizationHeaderMalformed"}
    assert set(stats["errors"]) <= expected, stats["errors"]
    stderr = (m.peer.workdir / "localzone.stderr").read_text(errors="replace")
    assert "Traceback" not in stderr, stderr


@pytest.fixture
def base(mount: Mount) -> str:
    """A directory name of this test's own inside the mounted bucket."""
    return f"t-{uuid.uuid4().hex[:10]}"


# --- tests ---------------------------------------------------------------------------------------------

def test_write_read_nested_files(mount: Mount, base: str):
    root = mount.path / base
    files = {
        "small.txt": b"hello from a FUSE peer\n",
        "d1/mid.bin": os.urandom(3 * MiB),
        "d1/d2/d3/big.bin": os.urandom(12 * MiB),  # multipart for both clients (5 MiB parts)
        "d1/d2/name with space+plus.txt": b"odd name\n",
    }
    os.makedirs(root / "d1" / "d2" / "d3")
    for name, data in files.items():
        with open(root / name, "wb") as handle:
            handle.write(data)
    for name, data in files.items():
        assert (root / name).read_bytes() == data  # through the mount
        wait_body(mount, f"{base}/{name}", data)  # and on the endpoint
        assert os.stat(root / name).st_size == len(data)

    listing = subprocess.run(["ls", "-l", str(root / "d1")], capture_output=True, text=True, timeout=30, check=True)
    rows = {line.split(None, 8)[-1]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert set(rows) == {"d2", "mid.bin"}, listing.stdout
    assert rows["d2"][0].startswith("d")
    assert rows["mid.bin"][0].startswith("-") and int(rows["mid.bin"][4]) == 3 * MiB
    assert sorted(os.listdir(root / "d1" / "d2")) == ["d3", "name with space+plus.txt"]

    stats = mount.operations()
    assert stats.get("UploadPart", 0) >= 2 and stats.get("CompleteMultipartUpload", 0) >= 1
    assert_endpoint_happy(mount)


def test_objects_written_elsewhere_show_up(mount: Mount, base: str):
    """Keys put with boto3 (no directory marker objects) appear as files in implied directories."""
    s3 = mount.peer.s3
    s3.put_object(Bucket=GENERAL_BUCKET, Key=f"{base}/ext/x/y.txt", Body=b"from boto3")
    s3.put_object(Bucket=GENERAL_BUCKET, Key=f"{base}/ext/z.txt", Body=b"zz")
    root = mount.path / base / "ext"
    wait_for(lambda: sorted(os.listdir(root)) == ["x", "z.txt"], what="boto3's objects in the mount")
    assert os.path.isdir(root / "x")
    assert (root / "x" / "y.txt").read_bytes() == b"from boto3"
    assert os.stat(root / "z.txt").st_size == 2
    assert_endpoint_happy(mount)


def test_directory_listing_spans_pages(mount: Mount, base: str):
    """More entries than one ListObjects page (1,000): v1 pages by NextMarker, v2 by
    continuation token, and a directory's subdirectories come back as CommonPrefixes."""
    files = {f"{base}/big/f{n:04d}" for n in range(1010)}
    dirs = {f"{base}/big/sub{n:02d}/inner" for n in range(20)}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: mount.peer.s3.put_object(Bucket=GENERAL_BUCKET, Key=key, Body=b"."), files | dirs))
    expected = {key.split("/")[2] for key in files | dirs}
    wait_for(lambda: set(os.listdir(mount.path / base / "big")) == expected, what="all 1,030 entries")
    requests = mount.operations()
    assert requests.get("ListObjects", 0) + requests.get("ListObjectsV2", 0) >= 2
    assert_endpoint_happy(mount)


def test_rename_delete_mkdir_rmdir(mount: Mount, base: str):
    root = mount.path / base
    os.makedirs(root / "src")
    small, big = b"rename me\n", os.urandom(6 * MiB)
    (root / "src" / "a.txt").write_bytes(small)
    (root / "src" / "big.bin").write_bytes(big)
    wait_body(mount, f"{base}/src/a.txt", small)
    wait_body(mount, f"{base}/src/big.bin", big)

    # rename a file
    os.rename(root / "src" / "a.txt", root / "src" / "b.txt")
    assert (root / "src" / "b.txt").read_bytes() == small
    assert not (root / "src" / "a.txt").exists()
    wait_body(mount, f"{base}/src/b.txt", small)
    wait_gone(mount, f"{base}/src/a.txt")

    # rename a directory with a multipart-sized file in it (a server-side copy per object)
    os.rename(root / "src", root / "dst")
    assert sorted(os.listdir(root / "dst")) == ["b.txt", "big.bin"]
    assert (root / "dst" / "big.bin").read_bytes() == big
    wait_body(mount, f"{base}/dst/big.bin", big)
    wait_for(lambda: not s3_keys(mount, f"{base}/src/"), what="the old directory's objects to go")

    # rmdir refuses a directory with files; unlink, then rmdir works
    with pytest.raises(OSError) as excinfo:
        os.rmdir(root / "dst")
    assert excinfo.value.errno == errno.ENOTEMPTY
    os.remove(root / "dst" / "b.txt")
    os.remove(root / "dst" / "big.bin")
    wait_gone(mount, f"{base}/dst/b.txt")
    wait_gone(mount, f"{base}/dst/big.bin")
    os.rmdir(root / "dst")
    assert "dst" not in os.listdir(root)

    # an empty directory: s3fs stores a "dir/" marker object, rclone keeps it in its VFS only
    os.mkdir(root / "empty")
    assert os.path.isdir(root / "empty") and os.listdir(root / "empty") == []
    if mount.variant.tool == "s3fs":
        assert s3_exists(mount, f"{base}/empty/")
    os.rmdir(root / "empty")
    assert not (root / "empty").exists()
    wait_gone(mount, f"{base}/empty/")

    requests = mount.operations()
    assert requests.get("CopyObject", 0) + requests.get("UploadPartCopy", 0) >= 2  # renames are copies
    assert requests.get("DeleteObject", 0) >= 4
    assert_endpoint_happy(mount)


def test_overwrite_and_append(mount: Mount, base: str):
    root = mount.path / base
    os.makedirs(root)
    first = os.urandom(7 * MiB)
    (root / "f.bin").write_bytes(first)
    wait_body(mount, f"{base}/f.bin", first)
    second = b"shorter now"
    (root / "f.bin").write_bytes(second)  # O_TRUNC and rewrite
    assert (root / "f.bin").read_bytes() == second
    wait_body(mount, f"{base}/f.bin", second)
    if not mount.variant.random_writes:
        pytest.skip("rclone --vfs-cache-mode off supports only sequential writes of whole files")
    (root / "g.bin").write_bytes(first)
    wait_body(mount, f"{base}/g.bin", first)
    with open(root / "g.bin", "ab") as handle:  # s3fs keeps the unchanged range with UploadPartCopy
        handle.write(b"appended")
    assert (root / "g.bin").read_bytes() == first + b"appended"
    wait_body(mount, f"{base}/g.bin", first + b"appended")
    with open(root / "g.bin", "r+b") as handle:  # a write in the middle
        handle.seek(1000)
        handle.write(b"XYZ")
    expected = first[:1000] + b"XYZ" + first[1003:] + b"appended"
    assert (root / "g.bin").read_bytes() == expected
    wait_body(mount, f"{base}/g.bin", expected)
    assert_endpoint_happy(mount)


def test_metadata_changes(mount: Mount, base: str):
    """chmod/utime/symlink: s3fs keeps them in x-amz-meta-* (rewritten with a CopyObject onto
    itself, metadata directive REPLACE); rclone keeps the mtime in x-amz-meta-mtime."""
    root = mount.path / base
    os.makedirs(root)
    path = root / "meta.txt"
    path.write_bytes(b"metadata")
    wait_body(mount, f"{base}/meta.txt", b"metadata")
    stamp = 1_600_000_000
    os.utime(path, (stamp, stamp))
    assert int(os.stat(path).st_mtime) == stamp

    def remote_mtime() -> float:
        return float(s3_metadata(mount, f"{base}/meta.txt")["mtime"])

    wait_for(lambda: int(remote_mtime()) == stamp, what="the mtime in the object's metadata")
    assert s3_body(mount, f"{base}/meta.txt") == b"metadata"  # the copy kept the bytes

    if mount.variant.tool == "s3fs":
        os.chmod(path, 0o640)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        metadata = s3_metadata(mount, f"{base}/meta.txt")
        assert int(metadata["mode"]) == stat.S_IFREG | 0o640
        os.symlink("meta.txt", root / "link")
        assert os.readlink(root / "link") == "meta.txt"
        assert (root / "link").read_bytes() == b"metadata"
        assert s3_body(mount, f"{base}/link") == b"meta.txt"
        os.setxattr(path, "user.colour", b"blue")
        assert os.getxattr(path, "user.colour") == b"blue"
        metadata = s3_metadata(mount, f"{base}/meta.txt")
        assert "user.colour" in urllib.parse.unquote(metadata["xattr"])
    assert mount.operations().get("CopyObject", 0) >= 1
    assert_endpoint_happy(mount)


# --- rclone without a mount: presigned PUTs -------------------------------------------------------------

@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
def test_rclone_presigned_uploads(localzone_factory, tmp_path: Path):
    """``--s3-use-presigned-request`` PUTs carry Content-Length twice (same value): S3 takes
    that as one value, and so must the endpoint's framing and SigV4 canonical headers."""
    zone = localzone_factory("--bucket", GENERAL_BUCKET)
    config = write_rclone_config(tmp_path / "rclone.conf", zone)
    data = os.urandom(3 * MiB)
    (tmp_path / "up.bin").write_bytes(data)
    (tmp_path / "tiny.txt").write_bytes(b"tiny")
    for name in ("up.bin", "tiny.txt"):
        result = subprocess.run(
            ["rclone", "--config", str(config), "copyto", str(tmp_path / name), f"lz:{GENERAL_BUCKET}/pre/{name}",
             "--s3-use-presigned-request", "--low-level-retries", "1", "--retries", "1"],
            env=rclone_env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    s3 = zone.client()
    assert s3.get_object(Bucket=GENERAL_BUCKET, Key="pre/up.bin")["Body"].read() == data
    assert s3.get_object(Bucket=GENERAL_BUCKET, Key="pre/tiny.txt")["Body"].read() == b"tiny"
    stats = zone.stats()
    assert stats["requests"].get("PutObject") == 2
    assert "SignatureDoesNotMatch" not in stats["errors"]
