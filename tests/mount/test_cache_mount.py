"""The disk caches (--cache DIR) through real mounts, counted with the local endpoint's stats."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from s3xfs.core.cache import store
from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, SECRET_KEY, LocalZone
from tests.support.mount import block_writers, needs_fuse

pytestmark = [pytest.mark.fuse, needs_fuse]
MiB = 1024 * 1024


@pytest.fixture
def server(localzone_factory) -> LocalZone:
    return localzone_factory("--bucket", BUCKET)


def put_tree(server: LocalZone, dirs: int = 3, files: int = 4, size: int = 300_000) -> dict[str, bytes]:
    s3 = server.client()
    rng = random.Random(7)
    tree = {f"data/d{d}/f{f}.bin": rng.randbytes(size + f) for d in range(dirs) for f in range(files)}
    for key, body in tree.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return tree


def requests(server: LocalZone) -> dict[str, int]:
    return server.stats()["requests"]


def read_all(root: Path, keys) -> dict[str, bytes]:
    return {key: (root / key).read_bytes() for key in keys}


def walk(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def block_files(cache: Path) -> list[Path]:
    return [path for path in cache.rglob("*.val")]


def test_second_read_after_remount_makes_no_gets(server, mount_factory, tmp_path):
    tree = put_tree(server)
    cache = tmp_path / "cache"
    args = ("--read-only", "--cache", str(cache), "--metadata-ttl", "300")
    mount = mount_factory(server, BUCKET, *args)
    assert read_all(mount.path, tree) == tree
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    mount.stop()
    server.reset_stats()
    mount = mount_factory(server, BUCKET, *args)
    assert read_all(mount.path, tree) == tree
    counts = requests(server)
    assert counts.get("GetObject", 0) == 0, counts
    # The metadata came from the disk too: no LIST, and no HEAD but the mount's one-time probe.
    assert counts.get("HeadObject", 0) <= 1 and counts.get("ListObjectsV2", 0) == 0, counts


def test_remount_within_ttl_lists_nothing_and_after_it_lists_again(server, mount_factory, tmp_path):
    tree = put_tree(server, files=2)
    cache = tmp_path / "cache"
    args = ("--read-only", "--cache", str(cache), "--metadata-ttl", "3")
    mount = mount_factory(server, BUCKET, *args)
    first = walk(mount.path)
    assert {f"{key}" for key in tree} <= set(first)
    listed_at = time.monotonic()
    mount.stop()
    server.reset_stats()
    mount = mount_factory(server, BUCKET, *args)
    assert walk(mount.path) == first
    counts = requests(server)
    assert counts.get("ListObjectsV2", 0) == 0 and counts.get("HeadObject", 0) <= 1, counts
    assert time.monotonic() - listed_at < 3, "the machine was too slow to remount within the TTL"
    mount.stop()
    # A new object appears: past the TTL a remount lists again and sees it.
    server.client().put_object(Bucket=BUCKET, Key="data/d0/new.bin", Body=b"new")
    time.sleep(max(0.0, 3.2 - (time.monotonic() - listed_at)))
    server.reset_stats()
    mount = mount_factory(server, BUCKET, *args)
    assert (mount.path / "data/d0/new.bin").read_bytes() == b"new"
    assert walk(mount.path) == sorted(first + ["data/d0/new.bin"])
    assert requests(server).get("ListObjectsV2", 0) > 0


def test_eviction_holds_the_cap_and_keeps_the_most_recent(server, mount_factory, tmp_path):
    s3 = server.client()
    rng = random.Random(3)
    files = {f"big{n}.bin": rng.randbytes(6 * MiB) for n in range(6)}
    for key, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    cache = tmp_path / "cache"
    cap = 16 * MiB
    args = ("--read-only", "--cache", str(cache), "--max-cache-size", "16M", "--metadata-ttl", "300")
    mount = mount_factory(server, BUCKET, *args)
    for key in files:
        assert (mount.path / key).read_bytes() == files[key]
    mount.stop()
    assert store.volume(cache) <= cap
    assert sum(path.stat().st_size for path in block_files(cache)) <= cap
    # The last file read is the most recently used: it survived the evictions.
    server.reset_stats()
    mount = mount_factory(server, BUCKET, *args)
    assert (mount.path / "big5.bin").read_bytes() == files["big5.bin"]
    assert requests(server).get("GetObject", 0) == 0
    assert (mount.path / "big0.bin").read_bytes() == files["big0.bin"]
    assert requests(server).get("GetObject", 0) > 0  # evicted long ago: fetched again
    mount.stop()
    # Eviction never makes the cache forget whose entries it holds.
    assert BUCKET in s3xfs("cache", "info", str(cache)).stdout
    cleared = s3xfs("cache", "clear", str(cache), BUCKET)
    assert cleared.returncode == 0, cleared.stderr
    assert block_files(cache) == []


def test_corrupt_block_is_dropped_and_fetched_again(server, mount_factory, tmp_path):
    body = random.Random(5).randbytes(3 * MiB + 77)
    server.client().put_object(Bucket=BUCKET, Key="f.bin", Body=body)
    cache = tmp_path / "cache"
    args = ("--read-only", "--cache", str(cache), "--metadata-ttl", "300")
    mount = mount_factory(server, BUCKET, *args)
    assert (mount.path / "f.bin").read_bytes() == body
    mount.stop()
    victims = [path for path in block_files(cache) if path.stat().st_size == MiB + 4]
    assert len(victims) == 3
    raw = bytearray(victims[1].read_bytes())
    raw[1000] ^= 0x01  # one flipped bit in the data
    victims[1].write_bytes(bytes(raw))
    server.reset_stats()
    mount = mount_factory(server, BUCKET, *args)
    assert (mount.path / "f.bin").read_bytes() == body
    assert requests(server).get("GetObject", 0) == 1  # only the corrupt block
    mount.stop()
    assert "failed its checksum" in mount.log.read_text()
    server.reset_stats()
    mount = mount_factory(server, BUCKET, *args)  # the refetched block was stored again
    assert (mount.path / "f.bin").read_bytes() == body
    assert requests(server).get("GetObject", 0) == 0


def test_two_mounts_share_one_cache_directory(server, mount_factory, tmp_path):
    tree = put_tree(server, dirs=4, files=5, size=200_000)
    cache = tmp_path / "cache"
    args = ("--read-only", "--cache", str(cache), "--metadata-ttl", "300")
    a = mount_factory(server, BUCKET, *args, name="a")
    b = mount_factory(server, BUCKET, *args, name="b")
    failures: list[str] = []

    def reader(root: Path, seed: int) -> None:
        keys = list(tree)
        random.Random(seed).shuffle(keys)
        for key in keys:
            if (root / key).read_bytes() != tree[key]:
                failures.append(f"{root}: {key}")

    threads = [threading.Thread(target=reader, args=(mount.path, seed)) for seed, mount in enumerate([a, b, a, b])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    a.stop()
    b.stop()
    server.reset_stats()
    c = mount_factory(server, BUCKET, *args, name="c")
    assert read_all(c.path, tree) == tree
    assert requests(server).get("GetObject", 0) == 0


def test_changed_object_is_never_served_from_a_stale_block(server, mount_factory, tmp_path):
    s3 = server.client()
    old, new = b"A" * (2 * MiB), b"B" * (2 * MiB)  # same size: only the ETag tells them apart
    s3.put_object(Bucket=BUCKET, Key="f.bin", Body=old)
    cache = tmp_path / "cache"
    args = ("--read-only", "--cache", str(cache), "--metadata-ttl", "1")
    mount = mount_factory(server, BUCKET, *args)
    assert (mount.path / "f.bin").read_bytes() == old
    s3.put_object(Bucket=BUCKET, Key="f.bin", Body=new)
    time.sleep(1.2)
    assert (mount.path / "f.bin").read_bytes() == new  # same mount, after the TTL
    mount.stop()
    s3.put_object(Bucket=BUCKET, Key="f.bin", Body=old)
    time.sleep(1.2)
    mount = mount_factory(server, BUCKET, *args)  # remount, after the TTL
    assert (mount.path / "f.bin").read_bytes() == old


def test_writes_make_the_cached_listing_stale_for_the_next_mount(server, mount_factory, tmp_path):
    put_tree(server, dirs=1, files=2)
    cache = tmp_path / "cache"
    args = ("--cache", str(cache), "--metadata-ttl", "300")
    mount = mount_factory(server, BUCKET, *args)
    before = sorted(os.listdir(mount.path / "data/d0"))
    (mount.path / "data/d0/written.txt").write_bytes(b"hello")
    (mount.path / "data/d0/f0.bin").unlink()
    (mount.path / "data/d9").mkdir()
    (mount.path / "data/d9/deep.txt").write_bytes(b"deep")
    mount.stop()
    mount = mount_factory(server, BUCKET, *args)
    expected = sorted(set(before) - {"f0.bin"} | {"written.txt"})
    assert sorted(os.listdir(mount.path / "data/d0")) == expected
    assert (mount.path / "data/d0/written.txt").read_bytes() == b"hello"
    assert "d9" in os.listdir(mount.path / "data")
    assert (mount.path / "data/d9/deep.txt").read_bytes() == b"deep"


def test_nothing_secret_is_written_to_the_cache(server, mount_factory, tmp_path):
    tree = put_tree(server, dirs=1, files=2)
    cache = tmp_path / "cache"
    mount = mount_factory(server, BUCKET, "--read-only", "--cache", str(cache))
    assert read_all(mount.path, tree) == tree
    mount.stop()
    needles = [SECRET_KEY.encode(), b"X-Amz-Security-Token", b"SessionToken", b"SecretAccessKey"]
    for path in cache.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(needle in content for needle in needles), path


def s3xfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "s3xfs.cli", *args], capture_output=True, text=True, timeout=60)


def test_cache_info_and_clear(server, mount_factory, tmp_path):
    tree = put_tree(server, dirs=1, files=2)
    cache = tmp_path / "cache"
    args = ("--read-only", "--cache", str(cache), "--metadata-ttl", "300")
    mount = mount_factory(server, BUCKET, *args)
    assert read_all(mount.path, tree) == tree
    mount.stop()
    info = s3xfs("cache", "info", str(cache))
    assert info.returncode == 0 and BUCKET in info.stdout
    refused = s3xfs("cache", "clear", str(cache))
    assert refused.returncode == 2 and "--all" in refused.stderr
    other = s3xfs("cache", "clear", str(cache), "other--usw2-az1--x-s3")
    assert other.returncode == 2 and "holds nothing" in other.stderr
    cleared = s3xfs("cache", "clear", str(cache), BUCKET)
    assert cleared.returncode == 0, cleared.stderr
    assert block_files(cache) == []
    server.reset_stats()
    mount = mount_factory(server, BUCKET, *args)
    assert read_all(mount.path, tree) == tree
    counts = requests(server)
    assert counts.get("GetObject", 0) == len(tree) and counts.get("ListObjectsV2", 0) > 0
    mount.stop()
    assert s3xfs("cache", "clear", str(cache), "--all").returncode == 0
    assert block_files(cache) == []
    not_a_cache = s3xfs("cache", "info", str(tmp_path))
    assert not_a_cache.returncode == 2 and "not an s3xfs cache" in not_a_cache.stderr


def test_cache_directory_mistakes_are_one_line_errors(server, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    base = ["mount", BUCKET, str(mountpoint), "--endpoint-url", server.url, "--region", "us-west-2"]
    result = s3xfs(*base, "--cache", str(busy))
    assert result.returncode == 2 and "not empty and is not an s3xfs cache" in result.stderr
    assert "Traceback" not in result.stderr
    result = s3xfs(*base, "--max-cache-size", "1G")
    assert result.returncode == 2 and "needs --cache" in result.stderr
    result = s3xfs(*base, "--cache", str(tmp_path / "c"), "--cache-block-size", "3M")
    assert result.returncode == 2 and "power of two" in result.stderr
    result = s3xfs(*base, "--cache", str(tmp_path / "c"), "--max-cache-size", "1M")
    assert result.returncode == 2 and "at least" in result.stderr


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def test_a_child_process_stores_blocks_and_the_daemon_takes_over_if_it_dies(server, mount_factory, tmp_path):
    """Blocks are stored by the block writer, a child of the daemon; if it is killed, reads go on
    and the daemon stores the next blocks itself. (That an unmount waits for the child to store
    everything is what test_second_read_after_remount_makes_no_gets checks.)"""
    tree = put_tree(server, files=4)
    keys = sorted(tree)
    first, second = keys[:6], keys[6:]
    cache = tmp_path / "cache"
    args = ("--read-only", "--cache", str(cache), "--metadata-ttl", "300")
    mount = mount_factory(server, BUCKET, *args)
    assert read_all(mount.path, first) == {key: tree[key] for key in first}
    writers = wait_for(lambda: block_writers(mount.proc.pid))
    assert len(writers) == 1
    (writer,) = writers
    assert os.getsid(writer) == writer  # a session of its own: the terminal's signals are not for it
    os.kill(writer, signal.SIGKILL)
    assert wait_for(lambda: not running(writer))
    assert read_all(mount.path, second) == {key: tree[key] for key in second}
    assert mount.stop() == 0
    assert "went away" in mount.log.read_text()
    server.reset_stats()
    mount = mount_factory(server, BUCKET, *args)
    assert read_all(mount.path, second) == {key: tree[key] for key in second}
    assert requests(server).get("GetObject", 0) == 0  # stored by the daemon itself
