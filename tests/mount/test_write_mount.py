"""Writing through a real read-write mount of s3xfs on s3xfs-localzone.

Everyday tools (cp, rsync, tar, mv, rm, the shell) and Python programs write through the mount;
the result is checked through the mount, in the bucket (boto3, byte for byte) and in the
endpoint's request counters (appends are PutObject with a write offset, renames RenameObject).
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, LocalZone
from tests.support.mount import Mount, is_mounted, needs_fuse

pytestmark = [pytest.mark.fuse, needs_fuse]
KiB = 1024
MiB = 1024 * KiB
RENAME_NOREPLACE = 1  # renameat2(2) flags
RENAME_EXCHANGE = 2


@pytest.fixture
def server(localzone_factory) -> LocalZone:
    return localzone_factory("--bucket", BUCKET)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


@pytest.fixture
def rw_mount(server, mount_factory, staging):
    """Mount the bucket read-write (staging under the test's tmp_path); extra options pass through."""
    def make(*args: str, name: str = "mnt") -> Mount:
        return mount_factory(server, BUCKET, "--staging-dir", str(staging), *args, name=name)
    return make


# --- helpers -------------------------------------------------------------------------------------

def make_tree(root: Path, big: int = 20 * MiB, seed: int = 1) -> dict[str, bytes]:
    """A local tree: nested directories, an empty directory, files of 0 B, 1 B, 100 KiB and ``big``."""
    rng = random.Random(seed)
    files = {
        "empty": b"",
        "one.byte": b"x",
        "a/hundred.kib": rng.randbytes(100 * KiB),
        "a/b/big.bin": rng.randbytes(big),
        "a/b/c/d/deep.txt": b"deep\n",
        "a/b/zero-length": b"",
        "ünïcode name+%.txt": "ünïcode\n".encode(),
    }
    for n in range(5):
        files[f"many/file{n}.txt"] = rng.randbytes(rng.randrange(1, 5000))
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "a" / "empty-dir").mkdir()
    return files


def bucket_objects(server: LocalZone, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix`` (keys relative to it) with its content."""
    s3 = server.client()
    out: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            if item["Key"].startswith(prefix) and not item["Key"].endswith("/"):
                out[item["Key"][len(prefix):]] = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return out


def object_exists(server: LocalZone, key: str) -> bool:
    try:
        server.client().head_object(Bucket=BUCKET, Key=key)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in ("404", "NoSuchKey")
        return False
    return True


def diff(a: Path, b: Path) -> None:
    result = subprocess.run(["diff", "-r", str(a), str(b)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def requests(server: LocalZone) -> dict[str, int]:
    return server.stats()["requests"]


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def renameat2(src: Path, dst: Path, flags: int) -> None:
    if not hasattr(_libc, "renameat2"):
        pytest.skip("the C library has no renameat2")
    if _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(src), None, str(dst))


def oserror(call, *args) -> int:
    with pytest.raises(OSError) as excinfo:
        call(*args)
    return excinfo.value.errno


def vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- 1-3: copying trees in with cp, rsync, tar ----------------------------------------------------

def test_cp_r_tree_is_stored_byte_for_byte(tmp_path, server, rw_mount):
    src = tmp_path / "src"
    files = make_tree(src)
    mount = rw_mount()
    subprocess.run(["cp", "-r", str(src), str(mount.path / "copy")], check=True, capture_output=True)
    diff(src, mount.path / "copy")  # the empty directory too: it lives in the mount until a file is written in it
    assert bucket_objects(server, "copy/") == files
    assert tree_files(mount.path / "copy") == files


def test_rsync_a_in_and_out(tmp_path, server, rw_mount):
    src = tmp_path / "src"
    files = make_tree(src, big=9 * MiB)
    mount = rw_mount()
    into = subprocess.run(["rsync", "-a", f"{src}/", f"{mount.path}/synced/"], capture_output=True, text=True)
    assert into.returncode == 0, into.stderr
    assert bucket_objects(server, "synced/") == files  # rsync's temporary names were renamed away
    out = tmp_path / "out"
    back = subprocess.run(["rsync", "-a", f"{mount.path}/synced/", f"{out}/"], capture_output=True, text=True)
    assert back.returncode == 0, back.stderr
    diff(src, out)
    again = subprocess.run(["rsync", "-a", "--checksum", f"{src}/", f"{mount.path}/synced/"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr


def test_tar_x_into_the_mount(tmp_path, server, rw_mount):
    src = tmp_path / "src"
    files = make_tree(src, big=9 * MiB)
    tarball = tmp_path / "tree.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(src, arcname="tree")
    mount = rw_mount()
    result = subprocess.run(["tar", "xf", str(tarball), "-C", str(mount.path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    diff(src, mount.path / "tree")
    assert bucket_objects(server, "tree/") == files


# --- 4-5: Python programs ----------------------------------------------------------------------

def random_writes(f, model: bytearray, rng: random.Random, count: int, max_offset: int) -> None:
    """Write at random offsets (also past the end) through ``f``, mirroring into ``model``; read back."""
    for _ in range(count):
        offset = rng.randrange(0, max_offset)
        data = rng.randbytes(rng.choice([1, 100, 4096, 70_000, 300_000]))
        f.seek(offset)
        f.write(data)
        if offset > len(model):
            model.extend(bytes(offset - len(model)))
        model[offset:offset + len(data)] = data
        f.seek(max(0, offset - 10))
        assert f.read(len(data) + 20) == bytes(model[max(0, offset - 10):offset + len(data) + 10])
    f.seek(0)
    assert f.read() == bytes(model)


def test_random_writes_into_a_new_file_w_plus_b(server, rw_mount):
    mount = rw_mount()
    rng = random.Random(5)
    model = bytearray()
    path = mount.path / "random-new.bin"
    with open(path, "w+b") as f:
        random_writes(f, model, rng, 60, 3 * MiB)
        f.flush()
        os.fsync(f.fileno())
        assert server.client().get_object(Bucket=BUCKET, Key="random-new.bin")["Body"].read() == model
        random_writes(f, model, rng, 20, 4 * MiB)  # and on after an fsync
    assert path.read_bytes() == model
    assert os.stat(path).st_size == len(model)
    assert bucket_objects(server) == {"random-new.bin": bytes(model)}


def test_random_writes_into_an_existing_object_r_plus_b(server, rw_mount, staging):
    original = random.Random(6).randbytes(11 * MiB + 3)
    server.client().put_object(Bucket=BUCKET, Key="dir/existing.bin", Body=original)
    mount = rw_mount()
    model = bytearray(original)
    path = mount.path / "dir" / "existing.bin"
    with open(path, "r+b") as f:
        assert f.read(1000) == original[:1000]
        random_writes(f, model, random.Random(7), 50, 12 * MiB)
    assert path.read_bytes() == model
    assert server.client().get_object(Bucket=BUCKET, Key="dir/existing.bin")["Body"].read() == model
    assert not staging.exists() or list(staging.iterdir()) == []  # staged content is removed once uploaded


def test_concurrent_writers_on_distinct_files(server, rw_mount):
    mount = rw_mount()
    contents = {f"par/{n}.bin": random.Random(n).randbytes(random.Random(n).randrange(1, 13 * MiB)) for n in range(6)}
    contents["par/empty"] = b""
    failures: list[str] = []

    def writer(key: str, data: bytes) -> None:
        try:
            rng = random.Random(key)
            with open(mount.path / key, "wb") as f:
                at = 0
                while at < len(data):
                    n = rng.randrange(1, 400 * KiB)
                    f.write(data[at:at + n])
                    at += n
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(f"{key}: {exc!r}")

    os.mkdir(mount.path / "par")
    threads = [threading.Thread(target=writer, args=item) for item in contents.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    for key, data in contents.items():
        assert (mount.path / key).read_bytes() == data, key
    assert bucket_objects(server, "") == contents


# --- 6: appends ----------------------------------------------------------------------------------

def test_small_appends_are_appended_not_reuploaded(server, rw_mount):
    base = random.Random(8).randbytes(2 * MiB)
    server.client().put_object(Bucket=BUCKET, Key="log.bin", Body=base)
    mount = rw_mount()
    path = mount.path / "log.bin"
    expected = bytearray(base)
    server.reset_stats()
    for n in range(40):
        line = f"line {n}\n".encode()
        with open(path, "ab") as f:
            f.write(line)
        expected += line
        with open(path, "rb") as r:  # another fd, after each close
            assert r.read() == expected
    stats = server.stats()
    assert stats["requests"].get("PutObject", 0) == 40  # one append per close
    assert not {"CreateMultipartUpload", "UploadPart", "CopyObject"} & set(stats["requests"])
    assert stats["bytes_in"] < len(base) // 4  # the object was never sent again
    assert server.client().get_object(Bucket=BUCKET, Key="log.bin")["Body"].read() == expected


def test_appends_on_one_fd_are_read_from_another_after_each_fsync(server, rw_mount):
    server.client().put_object(Bucket=BUCKET, Key="journal", Body=b"start\n")
    mount = rw_mount()
    path = mount.path / "journal"
    expected = bytearray(b"start\n")
    reader = os.open(path, os.O_RDONLY)
    try:
        with open(path, "ab", buffering=0) as f:
            server.reset_stats()
            for n in range(25):
                record = f"record {n} ".encode() * (n + 1) + b"\n"
                f.write(record)
                os.fsync(f.fileno())
                expected += record
                assert os.pread(reader, len(expected) + 100, 0) == expected
                assert server.client().get_object(Bucket=BUCKET, Key="journal")["Body"].read() == expected
            assert requests(server).get("PutObject", 0) == 25
    finally:
        os.close(reader)
    assert path.read_bytes() == expected


def test_shell_echo_appends(server, rw_mount):
    mount = rw_mount()
    path = mount.path / "echo.txt"
    script = f'echo first > "{path}"; for i in 1 2 3 4 5; do echo "line $i" >> "{path}"; done'
    subprocess.run(["sh", "-c", script], check=True)
    expected = "first\n" + "".join(f"line {i}\n" for i in range(1, 6))
    assert path.read_text() == expected
    assert server.client().get_object(Bucket=BUCKET, Key="echo.txt")["Body"].read().decode() == expected


# --- 7: rename -----------------------------------------------------------------------------------

def test_mv_of_a_file_is_one_rename_object(server, rw_mount):
    mount = rw_mount()
    data = random.Random(9).randbytes(6 * MiB)
    (mount.path / "before.bin").write_bytes(data)
    os.mkdir(mount.path / "sub")
    server.reset_stats()
    subprocess.run(["mv", str(mount.path / "before.bin"), str(mount.path / "sub" / "after.bin")], check=True)
    counted = requests(server)
    assert counted.get("RenameObject") == 1
    assert not {"CopyObject", "PutObject", "UploadPart", "DeleteObject"} & set(counted)
    assert not (mount.path / "before.bin").exists()
    assert (mount.path / "sub" / "after.bin").read_bytes() == data
    assert bucket_objects(server) == {"sub/after.bin": data}


def test_rename_replaces_an_existing_destination(server, rw_mount):
    mount = rw_mount()
    (mount.path / "new").write_bytes(b"new content")
    (mount.path / "old").write_bytes(b"old content, longer")
    os.stat(mount.path / "old")
    os.rename(mount.path / "new", mount.path / "old")
    assert sorted(os.listdir(mount.path)) == ["old"]
    assert (mount.path / "old").read_bytes() == b"new content"
    assert os.stat(mount.path / "old").st_size == len(b"new content")
    assert bucket_objects(server) == {"old": b"new content"}


def test_renameat2_noreplace_and_exchange(server, rw_mount):
    mount = rw_mount()
    a, b, c = mount.path / "a", mount.path / "b", mount.path / "c"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    assert oserror(renameat2, a, b, RENAME_NOREPLACE) == errno.EEXIST
    assert oserror(renameat2, a, b, RENAME_EXCHANGE) == errno.EINVAL
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B"
    renameat2(a, c, RENAME_NOREPLACE)  # a free name: renamed
    assert not a.exists() and c.read_bytes() == b"A"
    os.rename(c, b)  # plain rename(2) replaces
    assert bucket_objects(server) == {"b": b"A"}


def test_rename_noreplace_is_enforced_by_the_bucket_when_the_cache_says_free(server, rw_mount):
    mount = rw_mount("--negative-ttl", "60")
    (mount.path / "src").write_bytes(b"mine")
    assert not (mount.path / "dst").exists()  # the kernel and the mount now believe 'dst' is free
    server.client().put_object(Bucket=BUCKET, Key="dst", Body=b"theirs")
    server.reset_stats()
    assert oserror(renameat2, mount.path / "src", mount.path / "dst", RENAME_NOREPLACE) == errno.EEXIST
    stats = server.stats()
    assert stats["requests"].get("RenameObject") == 1 and stats["errors"].get("PreconditionFailed") == 1
    assert bucket_objects(server) == {"src": b"mine", "dst": b"theirs"}


def test_mv_of_a_directory_tree_copies_it(tmp_path, server, rw_mount):
    src = tmp_path / "src"
    files = make_tree(src, big=6 * MiB)
    mount = rw_mount()
    subprocess.run(["cp", "-r", str(src), str(mount.path / "tree")], check=True)
    result = subprocess.run(["mv", str(mount.path / "tree"), str(mount.path / "moved")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not (mount.path / "tree").exists()
    diff(src, mount.path / "moved")
    assert bucket_objects(server) == {f"moved/{rel}": data for rel, data in files.items()}


def test_rename_of_a_file_open_for_writing(server, rw_mount):
    mount = rw_mount()
    with open(mount.path / "partial", "wb") as f:
        f.write(b"first half, ")
        f.flush()
        os.rename(mount.path / "partial", mount.path / "complete")
        f.write(b"second half")
    assert (mount.path / "complete").read_bytes() == b"first half, second half"
    assert bucket_objects(server) == {"complete": b"first half, second half"}


def test_renames_racing_with_writes_to_other_files(server, rw_mount):
    s3 = server.client()
    renamed = {f"r/{n}": f"rename me {n}\n".encode() * 1000 for n in range(6)}
    for key, data in renamed.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    mount = rw_mount()
    written = {f"w/{n}.bin": random.Random(100 + n).randbytes(3 * MiB + n) for n in range(4)}
    os.mkdir(mount.path / "w")
    failures: list[str] = []

    def writer(key: str, data: bytes) -> None:
        try:
            for _ in range(3):
                with open(mount.path / key, "wb") as f:
                    for at in range(0, len(data), 256 * KiB):
                        f.write(data[at:at + 256 * KiB])
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{key}: {exc!r}")

    threads = [threading.Thread(target=writer, args=item) for item in written.items()]
    for t in threads:
        t.start()
    rounds = 0
    while any(t.is_alive() for t in threads) or rounds < 4:
        for key in renamed:
            os.rename(mount.path / key, mount.path / f"{key}.moved")
        for key in renamed:
            os.rename(mount.path / f"{key}.moved", mount.path / key)
        rounds += 1
    for t in threads:
        t.join(60)
    assert failures == []
    expected = dict(renamed, **written)
    assert bucket_objects(server) == expected
    for key, data in expected.items():
        assert (mount.path / key).read_bytes() == data


# --- 8: conditional overwrite ---------------------------------------------------------------------

def test_overwrite_of_a_changed_object_fails_and_keeps_both_versions(server, rw_mount, staging):
    s3 = server.client()
    s3.put_object(Bucket=BUCKET, Key="guarded.txt", Body=b"original")
    mount = rw_mount()
    fd = os.open(mount.path / "guarded.txt", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"written through the mount")
        s3.put_object(Bucket=BUCKET, Key="guarded.txt", Body=b"changed by someone else")
    finally:
        assert oserror(os.close, fd) == errno.EIO
    assert s3.get_object(Bucket=BUCKET, Key="guarded.txt")["Body"].read() == b"changed by someone else"
    rescued = [p.read_bytes() for p in staging.iterdir() if p.name.endswith(".rescued")]
    assert rescued == [b"written through the mount"]  # once: the release after the failed close adds nothing


def test_large_overwrite_of_a_changed_object_leaves_the_multipart_upload(server, rw_mount):
    s3 = server.client()
    s3.put_object(Bucket=BUCKET, Key="big-guarded.bin", Body=b"original")
    mount = rw_mount("--part-size", "5M")
    data = random.Random(10).randbytes(17 * MiB)
    fd = os.open(mount.path / "big-guarded.bin", os.O_WRONLY | os.O_TRUNC)
    try:
        for at in range(0, len(data), MiB):
            os.write(fd, data[at:at + MiB])
        s3.put_object(Bucket=BUCKET, Key="big-guarded.bin", Body=b"changed")
    finally:
        assert oserror(os.close, fd) == errno.EIO
    assert s3.get_object(Bucket=BUCKET, Key="big-guarded.bin")["Body"].read() == b"changed"
    uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["big-guarded.bin"]
    # What the log tells the user to do recovers exactly what was written.
    upload_id = uploads[0]["UploadId"]
    parts = s3.list_parts(Bucket=BUCKET, Key="big-guarded.bin", UploadId=upload_id)["Parts"]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="big-guarded.bin", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]})
    assert s3.get_object(Bucket=BUCKET, Key="big-guarded.bin")["Body"].read() == data


def test_a_failed_commit_is_not_retried_with_partial_content(server, rw_mount):
    """fsync fails (the endpoint errs); the close that follows must not commit what is left (nothing)."""
    s3 = server.client()
    original = random.Random(11).randbytes(MiB)
    s3.put_object(Bucket=BUCKET, Key="precious.bin", Body=original)
    mount = rw_mount("--part-size", "5M")
    data = random.Random(12).randbytes(12 * MiB)
    fd = os.open(mount.path / "precious.bin", os.O_WRONLY | os.O_TRUNC)
    try:
        for at in range(0, len(data), MiB):
            os.write(fd, data[at:at + MiB])
        server.set_faults(internal_error_rate=1.0)
        try:
            assert oserror(os.fsync, fd) == errno.EIO
        finally:
            server.set_faults(internal_error_rate=0.0)
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            assert exc.errno == errno.EIO
    # Neither an empty object nor a tail: the original stays, the parts wait in the upload for recovery.
    assert s3.get_object(Bucket=BUCKET, Key="precious.bin")["Body"].read() == original
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])] == ["precious.bin"]


def test_a_failed_write_is_never_followed_by_a_commit_of_the_rest(server, rw_mount):
    """The first part cannot leave (the endpoint errs): write fails; close must not store the tail alone."""
    s3 = server.client()
    original = random.Random(14).randbytes(MiB)
    s3.put_object(Bucket=BUCKET, Key="tail.bin", Body=original)
    mount = rw_mount("--part-size", "5M")
    data = random.Random(15).randbytes(8 * MiB)
    fd = os.open(mount.path / "tail.bin", os.O_WRONLY | os.O_TRUNC)
    failed_at = None
    try:
        server.set_faults(internal_error_rate=1.0)
        try:
            for at in range(0, len(data), MiB):
                try:
                    os.write(fd, data[at:at + MiB])
                except OSError as exc:
                    assert exc.errno == errno.EIO
                    failed_at = at
                    break
        finally:
            server.set_faults(internal_error_rate=0.0)
        assert failed_at is not None
        for at in range(failed_at + MiB, len(data), MiB):  # a program that goes on regardless
            try:
                os.write(fd, data[at:at + MiB])
            except OSError as exc:
                assert exc.errno in (errno.EIO, errno.EINVAL)
    finally:
        close_errno = None
        try:
            os.close(fd)
        except OSError as exc:
            close_errno = exc.errno
    assert s3.get_object(Bucket=BUCKET, Key="tail.bin")["Body"].read() == original
    assert close_errno == errno.EIO


# --- 9: kill -9 ----------------------------------------------------------------------------------

def test_kill_9_while_streaming_leaves_no_partial_object(server, rw_mount):
    mount = rw_mount()
    path = mount.path / "interrupted.bin"
    chunk = random.Random(13).randbytes(MiB)
    halfway = threading.Event()
    errors: list[int | None] = []

    def writer() -> None:
        try:
            with open(path, "wb", buffering=0) as f:
                for n in range(40):
                    f.write(chunk)
                    if n == 20:
                        halfway.set()
                    time.sleep(0.05)
        except OSError as exc:
            errors.append(exc.errno)
        finally:
            halfway.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert halfway.wait(60)
    assert requests(server).get("UploadPart", 0) >= 1  # parts of it are in the bucket's upload already
    assert mount.proc is not None
    mount.proc.kill()
    mount.proc.wait(10)
    thread.join(30)
    assert not thread.is_alive()
    assert errors and errors[0] in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)
    assert not object_exists(server, "interrupted.bin")
    assert bucket_objects(server) == {}
    mount.stop()  # what the fixture does at the end: the dead mount is unmounted
    assert not is_mounted(mount.path)


# --- 10: unlink, mkdir, rmdir ----------------------------------------------------------------------

def test_unlink(server, rw_mount):
    server.client().put_object(Bucket=BUCKET, Key="d/gone.txt", Body=b"bye")
    server.client().put_object(Bucket=BUCKET, Key="d/stays.txt", Body=b"hi")
    mount = rw_mount()
    os.unlink(mount.path / "d" / "gone.txt")
    assert os.listdir(mount.path / "d") == ["stays.txt"]
    assert oserror(os.stat, mount.path / "d" / "gone.txt") == errno.ENOENT
    assert oserror(os.unlink, mount.path / "d" / "gone.txt") == errno.ENOENT
    assert oserror(os.unlink, mount.path / "d") == errno.EISDIR
    assert bucket_objects(server) == {"d/stays.txt": b"hi"}


def test_rmdir_of_a_non_empty_directory_is_enotempty(server, rw_mount):
    server.client().put_object(Bucket=BUCKET, Key="full/file", Body=b"x")
    mount = rw_mount()
    assert oserror(os.rmdir, mount.path / "full") == errno.ENOTEMPTY
    os.makedirs(mount.path / "local" / "child")  # nothing in the bucket, but not empty here
    assert oserror(os.rmdir, mount.path / "local") == errno.ENOTEMPTY
    (mount.path / "local" / "child" / "f").write_bytes(b"f")
    assert oserror(os.rmdir, mount.path / "local" / "child") == errno.ENOTEMPTY
    assert oserror(os.rmdir, mount.path / "full" / "file") == errno.ENOTDIR
    assert (mount.path / "full" / "file").read_bytes() == b"x"


def test_mkdir_is_listed_and_persists_once_a_file_is_written_in_it(server, rw_mount):
    mount = rw_mount()
    os.mkdir(mount.path / "kept")
    os.makedirs(mount.path / "empty" / "nested")
    os.mkdir(mount.path / "removed")
    assert sorted(os.listdir(mount.path)) == ["empty", "kept", "removed"]
    assert os.path.isdir(mount.path / "empty" / "nested")
    assert oserror(os.mkdir, mount.path / "kept") == errno.EEXIST
    os.rmdir(mount.path / "removed")
    assert sorted(os.listdir(mount.path)) == ["empty", "kept"]
    (mount.path / "kept" / "file.txt").write_text("persisted\n")
    assert bucket_objects(server) == {"kept/file.txt": b"persisted\n"}
    mount.stop()
    again = rw_mount(name="mnt2")
    assert os.listdir(again.path) == ["kept"]  # an empty directory lived only in the mount
    assert (again.path / "kept" / "file.txt").read_text() == "persisted\n"


def test_rm_r_of_a_tree(tmp_path, server, rw_mount):
    src = tmp_path / "src"
    make_tree(src, big=MiB)
    server.client().put_object(Bucket=BUCKET, Key="other.txt", Body=b"other")
    mount = rw_mount()
    subprocess.run(["cp", "-r", str(src), str(mount.path / "tree")], check=True)
    result = subprocess.run(["rm", "-r", str(mount.path / "tree")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.listdir(mount.path) == ["other.txt"]
    assert bucket_objects(server) == {"other.txt": b"other"}


# --- other everyday writes ---------------------------------------------------------------------

def test_touch_and_metadata_changes(server, rw_mount):
    server.client().put_object(Bucket=BUCKET, Key="existing", Body=b"0123456789")
    mount = rw_mount()
    subprocess.run(["touch", str(mount.path / "new")], check=True)
    assert bucket_objects(server) == {"existing": b"0123456789", "new": b""}
    server.reset_stats()
    path = mount.path / "existing"
    subprocess.run(["touch", str(path)], check=True)
    os.chmod(path, 0o600)
    os.utime(path, (1000, 1000))
    with open(path, "r+b") as f:  # opened for writing, nothing written
        assert f.read() == b"0123456789"
    assert server.stats()["mutating_requests"] == 0  # chmod and utimens live in memory only
    info = os.stat(path)
    assert (info.st_mode & 0o777, info.st_mtime) == (0o600, 1000)


def test_utimens_lasts_until_the_attributes_are_refreshed(server, rw_mount):
    """As docs/SEMANTICS.md says: after --metadata-ttl the object's Last-Modified is back (chmod stays)."""
    server.client().put_object(Bucket=BUCKET, Key="dated", Body=b"x")
    mount = rw_mount("--metadata-ttl", "0.2")
    os.utime(mount.path / "dated", (1000, 1000))
    os.chmod(mount.path / "dated", 0o600)
    assert os.stat(mount.path / "dated").st_mtime == 1000
    time.sleep(0.5)
    info = os.stat(mount.path / "dated")
    assert info.st_mtime > 1000 and info.st_mode & 0o777 == 0o600


def test_truncate_command_resizes_the_object(server, rw_mount):
    s3 = server.client()
    s3.put_object(Bucket=BUCKET, Key="sized", Body=b"0123456789")
    mount = rw_mount()
    subprocess.run(["truncate", "-s", "4", str(mount.path / "sized")], check=True)
    assert s3.get_object(Bucket=BUCKET, Key="sized")["Body"].read() == b"0123"
    subprocess.run(["truncate", "-s", "6", str(mount.path / "sized")], check=True)
    assert s3.get_object(Bucket=BUCKET, Key="sized")["Body"].read() == b"0123\0\0"
    subprocess.run(["truncate", "-s", "0", str(mount.path / "sized")], check=True)
    assert s3.get_object(Bucket=BUCKET, Key="sized")["Body"].read() == b""
    assert (mount.path / "sized").read_bytes() == b""


def test_sendfile_cp_over_and_dd_notrunc_into_existing_files(tmp_path, server, rw_mount):
    s3 = server.client()
    s3.put_object(Bucket=BUCKET, Key="existing", Body=b"old")
    local = tmp_path / "local.bin"
    data = random.Random(16).randbytes(9 * MiB)
    local.write_bytes(data)
    mount = rw_mount()
    shutil.copyfile(local, mount.path / "copied.bin")  # sendfile(2) into the mount
    assert s3.get_object(Bucket=BUCKET, Key="copied.bin")["Body"].read() == data
    subprocess.run(["cp", str(local), str(mount.path / "existing")], check=True)  # O_TRUNC over an object
    assert s3.get_object(Bucket=BUCKET, Key="existing")["Body"].read() == data
    subprocess.run(["dd", f"if={local}", f"of={mount.path / 'existing'}", "bs=1k", "seek=10", "count=1", "conv=notrunc"],
                   check=True, capture_output=True)  # a patch in the middle: staged, uploaded whole
    expected = data[:10 * KiB] + data[:KiB] + data[11 * KiB:]
    assert s3.get_object(Bucket=BUCKET, Key="existing")["Body"].read() == expected
    assert (mount.path / "existing").read_bytes() == expected


def test_unlink_while_writing_stores_nothing(server, rw_mount):
    mount = rw_mount("--part-size", "5M")
    with open(mount.path / "doomed.bin", "wb", buffering=0) as f:
        f.write(random.Random(17).randbytes(12 * MiB))  # parts are on their way
        os.unlink(mount.path / "doomed.bin")
        f.write(b"more")
    assert not (mount.path / "doomed.bin").exists()
    assert bucket_objects(server) == {}
    assert server.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []  # aborted


def test_replace_by_rename_while_a_reader_holds_the_old_file(server, rw_mount):
    mount = rw_mount()
    (mount.path / "cfg").write_bytes(b"v1" * 100_000)
    with open(mount.path / "cfg", "rb") as reader:
        assert reader.read(10) == b"v1" * 5
        (mount.path / "cfg.tmp").write_bytes(b"v2" * 100_000)
        os.rename(mount.path / "cfg.tmp", mount.path / "cfg")
        try:
            rest = reader.read()
        except OSError as exc:
            assert exc.errno == errno.ESTALE  # never a mix of the two versions
        else:
            assert rest == (b"v1" * 100_000)[10:]
    assert (mount.path / "cfg").read_bytes() == b"v2" * 100_000
    assert bucket_objects(server) == {"cfg": b"v2" * 100_000}


def test_local_directories_rename_and_receive_files(server, rw_mount):
    mount = rw_mount()
    os.makedirs(mount.path / "l1" / "l2")
    os.rename(mount.path / "l1" / "l2", mount.path / "l1" / "l3")  # empty and local: renamed in place
    result = subprocess.run(["mv", str(mount.path / "l1"), str(mount.path / "m1")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.listdir(mount.path) == ["m1"] and os.listdir(mount.path / "m1") == ["l3"]
    (mount.path / "f.txt").write_bytes(b"ff")
    subprocess.run(["mv", str(mount.path / "f.txt"), str(mount.path / "m1" / "l3") + "/"], check=True)
    assert bucket_objects(server) == {"m1/l3/f.txt": b"ff"}
    assert os.listdir(mount.path / "m1" / "l3") == ["f.txt"]


def test_failed_staged_upload_keeps_the_content_in_the_staging_dir(server, rw_mount, staging):
    s3 = server.client()
    original = random.Random(18).randbytes(7 * MiB)
    s3.put_object(Bucket=BUCKET, Key="staged.bin", Body=original)
    mount = rw_mount("--part-size", "5M")
    expected = bytearray(original)
    expected[MiB:MiB + 5] = b"patch"
    f = open(mount.path / "staged.bin", "r+b", buffering=0)
    try:
        f.seek(MiB)
        f.write(b"patch")
        server.set_faults(internal_error_rate=1.0)
        try:
            assert oserror(os.fsync, f.fileno()) == errno.EIO
        finally:
            server.set_faults(internal_error_rate=0.0)
    finally:
        try:
            f.close()  # may retry the whole content (safe: it is complete) or report EIO again
        except OSError as exc:
            assert exc.errno == errno.EIO
    body = s3.get_object(Bucket=BUCKET, Key="staged.bin")["Body"].read()
    assert body in (original, expected)
    if body == original:
        assert [p.read_bytes() for p in staging.iterdir()] == [bytes(expected)]


# --- 11: memory while streaming 2 GiB --------------------------------------------------------------

def test_2_gib_streaming_write_keeps_rss_bounded(server, rw_mount):
    mount = rw_mount()
    assert mount.proc is not None
    pid = mount.proc.pid
    peak = [vmrss_kib(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], vmrss_kib(pid))
            except OSError:
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={mount.path / 'two-gib'}", "bs=1M", "count=2048"],
                       check=True, capture_output=True)
    finally:
        done.set()
        sampler.join()
    head = server.client().head_object(Bucket=BUCKET, Key="two-gib")
    assert head["ContentLength"] == 2048 * MiB
    assert os.stat(mount.path / "two-gib").st_size == 2048 * MiB
    assert peak[0] <= 300 * 1024, f"peak RSS {peak[0] // 1024} MiB"


# --- 12: a read-only mount ------------------------------------------------------------------------

def test_read_only_mount_refuses_what_test_read_mount_does_not_try(server, mount_factory, staging):
    server.client().put_object(Bucket=BUCKET, Key="f", Body=b"f")
    server.client().put_object(Bucket=BUCKET, Key="g", Body=b"g")
    mount = mount_factory(server, BUCKET, "--read-only", "--staging-dir", str(staging))
    server.reset_stats()
    attempts = [
        lambda: os.chmod(mount.path / "f", 0o600),
        lambda: os.utime(mount.path / "f", (0, 0)),
        lambda: os.close(os.open(mount.path / "f", os.O_RDONLY | os.O_TRUNC)),
        lambda: os.close(os.open(mount.path / "f", os.O_RDWR)),
        lambda: open(mount.path / "f", "ab"),
        lambda: os.symlink("f", mount.path / "link"),
        lambda: os.link(mount.path / "f", mount.path / "hard"),
        lambda: os.mkfifo(mount.path / "fifo"),
        lambda: renameat2(mount.path / "f", mount.path / "g", RENAME_NOREPLACE),
        lambda: renameat2(mount.path / "f", mount.path / "h", RENAME_NOREPLACE),
    ]
    for attempt in attempts:
        assert oserror(attempt) == errno.EROFS
    assert server.stats()["mutating_requests"] == 0
    assert not staging.exists()


