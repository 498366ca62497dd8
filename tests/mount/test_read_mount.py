"""Reading through a real mount of s3xfs on s3xfs-localzone."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, LocalZone
from tests.support.mount import needs_fuse, s3xfs_command, stats_of

pytestmark = [pytest.mark.fuse, needs_fuse]
MiB = 1024 * 1024


@pytest.fixture
def server(localzone_factory) -> LocalZone:
    return localzone_factory("--bucket", BUCKET)


def make_tree(server: LocalZone, prefix: str = "") -> dict[str, bytes]:
    """A small dataset: nested directories, empty and odd-named files."""
    s3 = server.client()
    rng = random.Random(1)
    tree: dict[str, bytes] = {}
    for d in range(3):
        for f in range(5):
            tree[f"{prefix}dir{d}/sub/file{f}.bin"] = rng.randbytes(rng.randrange(0, 200_000))
        tree[f"{prefix}dir{d}/top {d}.txt"] = f"top {d}\n".encode()
    tree[f"{prefix}empty"] = b""
    tree[f"{prefix}ünïcode name+%.txt"] = b"unicode\n"
    for key, data in tree.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    return tree


def test_find_ls_stat_cat_sha256sum(server, mount_factory):
    tree = make_tree(server)
    mount = mount_factory(server, BUCKET, "--read-only")
    found = subprocess.run(["find", ".", "-type", "f"], cwd=mount.path, capture_output=True, text=True, check=True)
    assert sorted(line[2:] for line in found.stdout.splitlines()) == sorted(tree)
    listing = subprocess.run(["ls", "-lR"], cwd=mount.path, capture_output=True, text=True, check=True)
    assert "file4.bin" in listing.stdout and "top 2.txt" in listing.stdout
    for key, data in tree.items():
        info = os.stat(mount.path / key)
        assert info.st_size == len(data)
    sums = subprocess.run(["sha256sum", *tree], cwd=mount.path, capture_output=True, text=True, check=True)
    expected = {key: hashlib.sha256(data).hexdigest() for key, data in tree.items()}
    for line in sums.stdout.splitlines():
        digest, name = line.split("  ", 1)
        assert expected[name] == digest
    assert (mount.path / "dir0" / "top 0.txt").read_text() == "top 0\n"


def test_find_lists_the_next_subdirectories_ahead_and_each_directory_once(server, mount_factory):
    s3 = server.client()
    keys = [f"walk/d{d:02}/f{f}" for d in range(12) for f in range(3)]
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    mount = mount_factory(server, BUCKET, "--read-only", "--metadata-ttl", "60")
    assert os.listdir(mount.path) == ["walk"]
    before = stats_of(mount.path)["lookups"]
    found = subprocess.run(["find", "walk", "-type", "f"], cwd=mount.path, capture_output=True, text=True, check=True)
    assert sorted(found.stdout.split()) == keys
    after = stats_of(mount.path)["lookups"]
    # walk/ and its 12 subdirectories, each listed once; the kernel opened them in readdir order,
    # so all but the first two (which make the walk a traversal) were to be listed before their
    # opendir (one whose listing ahead still waited for a turn is listed by its opendir instead).
    assert after["listings"] - before["listings"] == 13, (before, after)
    assert 5 <= after["listings_ahead"] - before["listings_ahead"] <= 10, (before, after)
    assert (mount.path / "walk" / "d11" / "f2").read_bytes() == b"walk/d11/f2"


def test_ls_r_lists_ahead_in_name_order_on_an_unordered_bucket(server, mount_factory):
    s3 = server.client()
    for d in range(12):
        s3.put_object(Bucket=BUCKET, Key=f"walk/d{d:02}/f", Body=b"x")
    mount = mount_factory(server, BUCKET, "--read-only", "--metadata-ttl", "60")
    assert os.listdir(mount.path) == ["walk"]
    before = stats_of(mount.path)["lookups"]
    listed = subprocess.run(["ls", "-R", "walk"], cwd=mount.path, capture_output=True, text=True, check=True,
                            env={**os.environ, "LC_ALL": "C"})
    assert listed.stdout.count("\nf\n") == 12
    after = stats_of(mount.path)["lookups"]
    # ls -R opens the subdirectories sorted by name, not in the bucket's (unordered) listing order.
    assert after["listings"] - before["listings"] == 13, (before, after)
    assert 5 <= after["listings_ahead"] - before["listings_ahead"] <= 10, (before, after)


def test_listing_serves_later_lookups_without_head_requests(server, mount_factory):
    make_tree(server)
    mount = mount_factory(server, BUCKET, "--read-only", "--metadata-ttl", "60")
    os.listdir(mount.path / "dir1" / "sub")
    server.reset_stats()
    for n in range(5):
        os.stat(mount.path / "dir1" / "sub" / f"file{n}.bin")
    with pytest.raises(FileNotFoundError):
        os.stat(mount.path / "dir1" / "sub" / "missing")
    requests = server.stats()["requests"]
    assert requests.get("HeadObject", 0) == 0 and requests.get("ListObjectsV2", 0) == 0


def test_large_file_sequential_and_random_reads(server, mount_factory):
    data = random.Random(2).randbytes(48 * MiB + 12345)
    server.client().put_object(Bucket=BUCKET, Key="big.bin", Body=data)
    mount = mount_factory(server, BUCKET, "--read-only")
    with open(mount.path / "big.bin", "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    rng = random.Random(3)
    fd = os.open(mount.path / "big.bin", os.O_RDONLY)
    try:
        for _ in range(200):
            offset = rng.randrange(0, len(data) + 100)
            size = rng.choice([1, 4096, 128 * 1024, 1 * MiB, 3 * MiB + 7])
            assert os.pread(fd, size, offset) == data[offset:offset + size]
    finally:
        os.close(fd)


def test_many_concurrent_readers(server, mount_factory):
    rng = random.Random(4)
    files = {f"par/{n}.bin": rng.randbytes(3 * MiB + n) for n in range(8)}
    s3 = server.client()
    for key, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    mount = mount_factory(server, BUCKET, "--read-only")
    errors: list[str] = []

    def reader(key: str, data: bytes) -> None:
        for _ in range(3):
            if (mount.path / key).read_bytes() != data:
                errors.append(key)

    threads = [threading.Thread(target=reader, args=item) for item in files.items() for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_object_replaced_behind_the_mount_is_never_mixed(server, mount_factory):
    s3 = server.client()
    old = b"A" * (24 * MiB)
    new = b"B" * (24 * MiB)
    s3.put_object(Bucket=BUCKET, Key="changing.bin", Body=old)
    mount = mount_factory(server, BUCKET, "--read-only", "--metadata-ttl", "1")
    path = mount.path / "changing.bin"
    with open(path, "rb", buffering=0) as f:
        first = f.read(MiB)
        s3.put_object(Bucket=BUCKET, Key="changing.bin", Body=new)
        rest = b""
        try:
            while chunk := f.read(4 * MiB):
                rest += chunk
        except OSError as exc:
            assert exc.errno == errno.ESTALE
        whole = first + rest
        assert set(whole) == {ord("A")}  # only the version seen at open, never a mix
    time.sleep(1.2)  # past the metadata TTL, a new open sees the new object
    assert path.read_bytes() == new


def test_read_only_mount_refuses_writes_and_sends_none(server, mount_factory):
    make_tree(server)
    server.reset_stats()
    mount = mount_factory(server, BUCKET, "--read-only")
    attempts = [
        lambda: (mount.path / "new.txt").write_text("x"),
        lambda: (mount.path / "dir0" / "top 0.txt").write_text("x"),
        lambda: os.mkdir(mount.path / "newdir"),
        lambda: os.unlink(mount.path / "empty"),
        lambda: os.rename(mount.path / "empty", mount.path / "empty2"),
        lambda: os.rmdir(mount.path / "dir0"),
        lambda: os.truncate(mount.path / "empty", 0),
        lambda: os.setxattr(mount.path / "empty", "user.x", b"1"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as excinfo:
            attempt()
        assert excinfo.value.errno == errno.EROFS
    assert (mount.path / "dir0" / "top 0.txt").read_text() == "top 0\n"
    stats = server.stats()
    assert stats["mutating_requests"] == 0
    assert stats["sessions"]["ReadWrite"] == 0 and stats["sessions"]["ReadOnly"] >= 1


def test_xattrs_expose_object_facts(server, mount_factory):
    put = server.client().put_object(Bucket=BUCKET, Key="x/facts.txt", Body=b"facts", ChecksumAlgorithm="CRC32")
    mount = mount_factory(server, BUCKET, "--read-only")
    path = mount.path / "x" / "facts.txt"
    assert os.getxattr(path, "user.s3xfs.etag").decode() == put["ETag"].strip('"')
    assert os.getxattr(path, "user.s3xfs.key").decode() == "x/facts.txt"
    assert os.getxattr(path, "user.s3xfs.storage_class").decode() == "EXPRESS_ONEZONE"
    assert "user.s3xfs.etag" in os.listxattr(path)
    with pytest.raises(OSError) as excinfo:
        os.getxattr(path, "user.other")
    assert excinfo.value.errno == errno.ENODATA


def test_name_rules_hide_what_cannot_be_a_path(server, mount_factory):
    s3 = server.client()
    for key in ["ok/visible.txt", "ok//double", "ok/./dot", "ok/../escape", "ok/" + "n" * 300,
                "clash", "clash/inside.txt"]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    mount = mount_factory(server, BUCKET, "--read-only")
    assert sorted(os.listdir(mount.path / "ok")) == ["visible.txt"]
    assert (mount.path / "clash").is_dir()  # the directory shadows the file of the same name
    assert os.listdir(mount.path / "clash") == ["inside.txt"]
    assert not (mount.path / "escape").exists()


def test_prefix_mount_shows_only_the_prefix(server, mount_factory):
    make_tree(server, prefix="datasets/v1/")
    server.client().put_object(Bucket=BUCKET, Key="outside.txt", Body=b"no")
    mount = mount_factory(server, f"s3://{BUCKET}/datasets/v1/", "--read-only")
    assert sorted(os.listdir(mount.path)) == sorted(["dir0", "dir1", "dir2", "empty", "ünïcode name+%.txt"])
    assert not (mount.path / "outside.txt").exists()
    assert (mount.path / "dir2" / "top 2.txt").read_text() == "top 2\n"


def test_o_direct_and_statfs(server, mount_factory):
    server.client().put_object(Bucket=BUCKET, Key="direct.bin", Body=b"d" * 8192)
    mount = mount_factory(server, BUCKET, "--read-only")
    fd = os.open(mount.path / "direct.bin", os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.read(fd, 8192) == b"d" * 8192
    finally:
        os.close(fd)
    assert os.statvfs(mount.path).f_namemax == 255


def test_page_cache_is_kept_while_the_etag_is_unchanged(server, mount_factory):
    data = os.urandom(4 * MiB)
    server.client().put_object(Bucket=BUCKET, Key="cached.bin", Body=data)
    mount = mount_factory(server, BUCKET, "--read-only", "--metadata-ttl", "60")
    assert (mount.path / "cached.bin").read_bytes() == data
    server.reset_stats()
    assert (mount.path / "cached.bin").read_bytes() == data
    assert server.stats()["requests"].get("GetObject", 0) == 0


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "read-write"])
def test_closes_cost_a_flush_only_where_they_can_commit(server, mount_factory, tmp_path, read_only):
    """A read-only mount answers the first FLUSH with ENOSYS, which tells the kernel to send no
    more (close(2) has nothing to commit there); a read-write mount gets one per close. Either way,
    a re-read the kernel's page cache serves whole reads nothing in the daemon."""
    files = {f"d/f{n}": os.urandom(100_000) for n in range(10)}
    for key, data in files.items():
        server.client().put_object(Bucket=BUCKET, Key=key, Body=data)
    args = ["--read-only"] if read_only else ["--staging-dir", str(tmp_path / "staging")]
    mount = mount_factory(server, BUCKET, "--metadata-ttl", "60", *args)
    for _ in range(2):
        for key, data in files.items():
            with open(mount.path / key, "rb", buffering=0) as f:
                assert f.readall() == data
    stats = stats_of(mount.path)
    assert stats["fuse"]["requests"].get("flush", 0) == (1 if read_only else 20)
    assert stats["fuse"]["errors"] == {}  # the ENOSYS is the protocol's answer, not a failure to report
    # Only the first pass read through the daemon: each file once, whole (no read-ahead needed).
    assert (stats["opens"]["whole_reads"], stats["opens"]["read_aheads"]) == (len(files), 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a mount's read-ahead needs root (sysfs)")
def test_kernel_read_ahead_is_raised_after_fuse_init(server, mount_factory):
    mount = mount_factory(server, BUCKET, "--read-only")
    device = next(line.split()[2] for line in open("/proc/self/mountinfo") if line.split()[4] == str(mount.path))
    assert Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip() == "1024"


def test_foreign_xattr_namespaces_are_unsupported(server, mount_factory):
    server.client().put_object(Bucket=BUCKET, Key="f.txt", Body=b"x")
    mount = mount_factory(server, BUCKET, "--read-only")
    for name in ("security.selinux", "system.posix_acl_access"):
        with pytest.raises(OSError) as excinfo:
            os.getxattr(mount.path / "f.txt", name)
        assert excinfo.value.errno == errno.EOPNOTSUPP


def test_a_listing_within_the_ttl_is_reused(server, mount_factory):
    make_tree(server)
    mount = mount_factory(server, BUCKET, "--read-only", "--metadata-ttl", "60")
    first = sorted(os.listdir(mount.path / "dir0" / "sub"))
    server.reset_stats()
    assert sorted(os.listdir(mount.path / "dir0" / "sub")) == first
    assert server.stats()["requests"].get("ListObjectsV2", 0) == 0


def test_handles_reading_quarters_of_one_file_fetch_it_about_once(server, mount_factory):
    """fio --numjobs=4 --offset_increment: four handles of one file, each reading its own quarter.
    Each handle's read-ahead used to run on into the next quarter and fetch it again (2.5 to 3
    times the file); now the handles leave each other's stretches alone and share their buffers."""
    data = random.Random(8).randbytes(64 * MiB)
    server.client().put_object(Bucket=BUCKET, Key="big.bin", Body=data)
    mount = mount_factory(server, BUCKET, "--read-only", "--metadata-ttl", "60")
    os.stat(mount.path / "big.bin")
    server.reset_stats()
    quarter = len(data) // 4
    got: dict[int, bytes] = {}
    start = threading.Barrier(4)

    def reader(i: int) -> None:
        fd = os.open(mount.path / "big.bin", os.O_RDONLY)
        try:
            start.wait()
            pieces = [os.pread(fd, MiB, offset) for offset in range(i * quarter, (i + 1) * quarter, MiB)]
            got[i] = b"".join(pieces)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert got[i] == data[i * quarter:(i + 1) * quarter], i
    fetched = server.stats()["bytes_out"]
    assert fetched <= 1.25 * len(data), fetched / len(data)


@pytest.mark.parametrize("cache", [False, True], ids=["memory", "disk-cache"])
def test_second_pass_on_a_read_write_mount_sends_no_gets(server, mount_factory, tmp_path, cache):
    """A read-write mount: after every read the kernel drops the file's atime, so the next fstat
    (Python's open and readall make one) asks getattr. That answer must carry the mtime the kernel
    was given at lookup: the first file of each directory was learnt by HEAD (whole seconds), the
    others by the listing a second lookup started, which must not move the first one's mtime, or
    the kernel throws away its page cache and the second pass GETs one file per directory."""
    s3 = server.client()
    rng = random.Random(6)
    tree = {f"train/d{d}/sample-{f}.bin": rng.randbytes(64 * 1024) for d in range(3) for f in range(3)}
    for key, data in tree.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    args = ["--metadata-ttl", "60", "--staging-dir", str(tmp_path / "staging")]
    if cache:
        args += ["--cache", str(tmp_path / "cache")]
    mount = mount_factory(server, BUCKET, *args)

    def read_pass() -> dict[str, bytes]:
        got = {}
        for key in tree:  # in order: each directory's first file is looked up before it is listed
            with open(mount.path / key, "rb", buffering=0) as f:
                got[key] = f.readall()
        return got

    assert read_pass() == tree
    server.reset_stats()
    before = stats_of(mount.path)
    assert read_pass() == tree
    assert server.stats()["requests"].get("GetObject", 0) == 0
    # With --cache the disk would hide a refetch from the endpoint: the kernel kept every page.
    assert stats_of(mount.path)["fuse"]["requests"].get("read", 0) == before["fuse"]["requests"].get("read", 0)


def stats_of(path: Path) -> dict:
    """The mount's live counters (``s3xfs stats --json``)."""
    result = subprocess.run(s3xfs_command("stats", str(path), "--json"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@pytest.mark.skipif(not os.access(DROP_CACHES, os.W_OK), reason="needs root to make the kernel forget its inodes")
def test_names_the_kernel_forgot_are_evicted_beyond_the_cap_and_still_served(server, mount_factory):
    s3 = server.client()
    files = {f"many/f{n:03d}": f"content {n}\n".encode() * n for n in range(60)}
    for key, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    mount = mount_factory(server, BUCKET, "--read-only", "--metadata-ttl", "3600", "--max-cached-entries", "10")
    directory = mount.path / "many"
    assert {p.name: p.stat().st_size for p in directory.iterdir()} == {k[5:]: len(v) for k, v in files.items()}
    assert stats_of(mount.path)["handles"]["inodes_evicted"] == 0  # the kernel holds every one of them
    DROP_CACHES.write_text("2")  # unused dentries and inodes: the kernel sends FORGETs for ours
    deadline = time.monotonic() + 30
    while (handles := stats_of(mount.path)["handles"])["inodes_evicted"] < 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert handles["inodes_evicted"] >= 50 and handles["inodes"] <= 10 + 12, handles
    # Evicted names are learnt again, from the bucket: the same names, sizes and contents.
    assert {p.name: p.stat().st_size for p in directory.iterdir()} == {k[5:]: len(v) for k, v in files.items()}
    for key, data in files.items():
        assert (mount.path / key).read_bytes() == data
    assert (directory / "absent").exists() is False


@pytest.mark.skipif(not os.access(DROP_CACHES, os.W_OK), reason="needs root to make the kernel forget its inodes")
def test_readers_see_no_error_while_the_kernel_forgets_and_the_daemon_evicts(server, mount_factory):
    """Stats, reads and listings of existing files from 4 threads for 8 seconds, the kernel's
    caches dropped every 0.3 s, a cap of 5: FORGETs race lookups and evictions race listings, and
    no caller may ever see an error, a wrong size or a short listing."""
    s3 = server.client()
    files = {f"d{n % 6}/f{n:03d}": f"{n}\n".encode() * (n % 7) for n in range(300)}
    for key, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    mount = mount_factory(server, BUCKET, "--read-only", "--metadata-ttl", "3600", "--max-cached-entries", "5")
    names = sorted(files)
    errors: list[str] = []
    stop = time.monotonic() + 8

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop and len(errors) < 10:
            key = rng.choice(names)
            path = mount.path / key
            try:
                kind = rng.randrange(3)
                if kind == 0 and path.stat().st_size != len(files[key]):
                    errors.append(f"size of {key}")
                elif kind == 1 and path.read_bytes() != files[key]:
                    errors.append(f"content of {key}")
                elif kind == 2 and len(os.listdir(path.parent)) != 50:
                    errors.append(f"listing of {path.parent.name}")
                if (mount.path / (key + ".absent")).exists():
                    errors.append(f"{key}.absent exists")
            except OSError as exc:
                errors.append(f"{key}: {exc!r}")

    def dropper() -> None:
        while time.monotonic() < stop:
            DROP_CACHES.write_text("2")
            time.sleep(0.3)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    threads.append(threading.Thread(target=dropper))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert stats_of(mount.path)["handles"]["inodes_evicted"] > 0
