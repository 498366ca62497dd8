"""``s3xfs warm`` through real mounts on the local endpoint, counted with its stats; and its planning."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s3xfs.core.cache import store
from s3xfs.mount_table import mount_of, parse_mountinfo
from s3xfs.warm import Item, Mount, headroom, make_plan
from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, LocalZone
from tests.support.mount import needs_fuse

MiB = 1024 * 1024
CACHED = ("--read-only", "--metadata-ttl", "300")
SUMMARY = re.compile(r"^s3xfs warm: (\d+) files cached: (\d+) read \(.+\) in \S+( at .+/s)?, (\d+) already cached")
PERIODIC = re.compile(r"^s3xfs warm: \d+/\d+ files, \S+ \S+/\S+ \S+ \(\d+%\), (\S+ \S+/s|-- B/s), ETA \S+$")


@pytest.fixture
def server(localzone_factory) -> LocalZone:
    return localzone_factory("--bucket", BUCKET)


def put_tree(server: LocalZone, prefix: str = "data", dirs: int = 3, files: int = 4, size: int = 300_000,
             seed: int = 7) -> dict[str, bytes]:
    s3 = server.client()
    rng = random.Random(seed)
    tree = {f"{prefix}/d{d}/f{f}.bin": rng.randbytes(size + f) for d in range(dirs) for f in range(files)}
    for key, body in tree.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return tree


def gets(server: LocalZone) -> int:
    return server.stats()["requests"].get("GetObject", 0)


def warm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it; stderr is a pipe, so progress is in its non-terminal form."""
    return subprocess.run([sys.executable, "-m", "s3xfs.cli", "warm", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def cached(path: Path) -> int:
    return int(os.getxattr(path, "user.s3xfs.cached"))


fuse = pytest.mark.fuse


# --- through mounts ---------------------------------------------------------------------------------


@fuse
@needs_fuse
def test_warm_fills_the_cache_so_a_remount_reads_without_gets(server, mount_factory, tmp_path):
    tree = put_tree(server)
    tree |= put_tree(server, prefix="data/big", dirs=1, files=1, size=5 * MiB + 3, seed=8)
    other = put_tree(server, prefix="other", dirs=1, files=2)
    cache = tmp_path / "cache"
    args = (*CACHED, "--cache", str(cache))
    mount = mount_factory(server, BUCKET, *args)
    server.reset_stats()
    result = warm(mount.path / "data")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert gets(server) >= len(tree)
    summary = SUMMARY.match(result.stderr.splitlines()[-1])
    assert summary and summary.group(1, 2, 4) == (str(len(tree)), str(len(tree)), "0"), result.stderr
    assert all(cached(mount.path / key) == len(body) for key, body in tree.items())
    assert all(cached(mount.path / key) == 0 for key in other)  # only what was asked for
    mount.stop()

    server.reset_stats()
    mount = mount_factory(server, BUCKET, *args)
    again = warm(mount.path / "data", mount.path / "data/d1/f0.bin")  # a file named twice counts once
    assert again.returncode == 0, again.stderr
    assert f"all {len(tree)} files" in again.stderr and "already cached: nothing read" in again.stderr
    assert gets(server) == 0
    for key, body in tree.items():
        assert (mount.path / key).read_bytes() == body
    counts = server.stats()["requests"]
    assert counts.get("GetObject", 0) == 0, counts
    # The walk filled the metadata cache too: the remount listed nothing.
    assert counts.get("ListObjectsV2", 0) == 0 and counts.get("HeadObject", 0) <= 1, counts


@fuse
@needs_fuse
def test_warm_reaches_the_daemon_when_the_page_cache_holds_the_file(server, mount_factory, tmp_path):
    body = random.Random(1).randbytes(3 * MiB)
    server.client().put_object(Bucket=BUCKET, Key="f.bin", Body=body)
    cache = tmp_path / "cache"
    mount = mount_factory(server, BUCKET, *CACHED, "--cache", str(cache))
    assert (mount.path / "f.bin").read_bytes() == body  # now in the kernel's page cache as well
    assert (mount.path / "f.bin").read_bytes() == body
    assert subprocess.run([sys.executable, "-m", "s3xfs.cli", "cache", "clear", str(cache), "--all"],
                          capture_output=True).returncode == 0
    assert cached(mount.path / "f.bin") == 0
    server.reset_stats()
    result = warm(mount.path / "f.bin")
    assert result.returncode == 0, result.stderr
    assert gets(server) > 0  # the reads were not answered from the page cache
    assert cached(mount.path / "f.bin") == len(body)


@fuse
@needs_fuse
def test_an_interrupted_warm_resumes_with_what_is_missing(server, mount_factory, tmp_path):
    tree = put_tree(server, dirs=2, files=6, size=200_000)
    mount = mount_factory(server, BUCKET, *CACHED, "--cache", str(tmp_path / "cache"))
    server.set_faults(latency_ms=150)
    proc = subprocess.Popen([sys.executable, "-m", "s3xfs.cli", "warm", "--jobs", "1", str(mount.path / "data")],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while cached(mount.path / "data/d0/f1.bin") == 0:  # a couple of files are in
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert re.search(r"interrupted while reading: \d+ of 12 files read .*run it again", stderr.splitlines()[-1]), stderr
    server.set_faults(latency_ms=0)
    done = sum(cached(mount.path / key) == len(body) for key, body in tree.items())
    assert 2 <= done < len(tree)
    server.reset_stats()
    result = warm(mount.path / "data")
    assert result.returncode == 0, result.stderr
    summary = SUMMARY.match(result.stderr.splitlines()[-1])
    assert summary, result.stderr
    assert int(summary.group(4)) >= done and int(summary.group(2)) == len(tree) - int(summary.group(4))
    assert gets(server) <= int(summary.group(2)) + 1  # at most the one file cut short is fetched twice in part
    assert all(cached(mount.path / key) == len(body) for key, body in tree.items())


@fuse
@needs_fuse
def test_warm_stops_at_the_cap_and_the_cache_stays_within_it(server, mount_factory, tmp_path):
    s3 = server.client()
    rng = random.Random(3)
    files = {f"set/f{n:02d}.bin": rng.randbytes(MiB) for n in range(30)}
    for key, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    cache = tmp_path / "cache"
    cap = 16 * MiB
    mount = mount_factory(server, BUCKET, *CACHED, "--cache", str(cache), "--max-cache-size", "16M")
    assert int(os.getxattr(mount.path, "user.s3xfs.cache_limit")) == cap
    result = warm(mount.path / "set")
    assert result.returncode == 1, result.stderr
    fits = (cap - headroom(cap)) // MiB
    assert f"does not fit the cache of {mount.path}" in result.stderr
    assert f"warming {fits} files in walk order, leaving out {30 - fits}" in result.stderr
    assert f"{30 - fits} left out (cache cap)" in result.stderr.splitlines()[-1]
    warmed = [cached(mount.path / key) == MiB for key in files]
    assert warmed == [True] * fits + [False] * (30 - fits)  # the first ones, in walk order
    # Running it again changes nothing: the warmed files stay, nothing is fetched to be evicted.
    server.reset_stats()
    again = warm(mount.path / "set", "--quiet")
    assert again.returncode == 1 and "does not fit" in again.stderr
    assert gets(server) == 0
    mount.stop()
    assert store.volume(cache) <= cap


@fuse
@needs_fuse
def test_progress_lines_when_not_on_a_terminal(server, mount_factory, tmp_path):
    tree = put_tree(server, dirs=1, files=8, size=100_000)
    mount = mount_factory(server, BUCKET, *CACHED, "--cache", str(tmp_path / "cache"))
    server.set_faults(latency_ms=150)
    result = warm(mount.path / "data", "--jobs", "1", "--interval", "0.3")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert re.fullmatch(r"s3xfs warm: 8 files \(781\.\d KiB\): 0 already cached \(0 B\), 8 to read \(781\.\d KiB\)",
                        lines[0]), lines
    periodic = [line for line in lines[1:-1] if PERIODIC.match(line)]
    assert len(periodic) >= 2 and len(periodic) == len(lines) - 2, lines
    assert SUMMARY.match(lines[-1]) and lines[-1].startswith(f"s3xfs warm: {len(tree)} files cached: 8 read"), lines
    server.set_faults(latency_ms=0)
    quiet = warm(mount.path / "data", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


@fuse
@needs_fuse
def test_mistakes_are_one_line_errors_with_exit_2(server, mount_factory, tmp_path):
    put_tree(server, dirs=1, files=1)
    outside = warm(tmp_path)
    assert outside.returncode == 2 and "is not inside an s3xfs mount" in outside.stderr
    plain = mount_factory(server, BUCKET, "--read-only", name="plain")
    no_cache = warm(plain.path / "data")
    assert no_cache.returncode == 2
    assert no_cache.stderr == f"s3xfs: the mount at {plain.path} has no --cache: there is nothing to warm " \
                              "(remount it with --cache DIR)\n"
    mount = mount_factory(server, BUCKET, "--read-only", "--cache", str(tmp_path / "cache"))
    missing = warm(mount.path / "data", mount.path / "nope")
    assert missing.returncode == 2 and "nope: no such file or directory" in missing.stderr
    jobs = warm(mount.path, "--jobs", "zero")
    assert jobs.returncode == 2 and "--jobs must be" in jobs.stderr
    for result in (outside, no_cache, missing, jobs):
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert gets(server) == 0  # nothing was read by any of them


# --- planning, without a mount ----------------------------------------------------------------------


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /mnt/data rw,nosuid,nodev,relatime shared:2 - fuse.s3xfs s3xfs:data--usw2-az1--x-s3 rw,user_id=0
41 40 0:51 / /mnt/data/inner rw,relatime - tmpfs tmpfs rw
42 22 0:52 / /mnt/my\\040data rw,relatime - fuse.s3xfs s3xfs:b rw
"""


def test_the_mount_of_a_path_is_the_longest_mount_point_above_it():
    entries = parse_mountinfo(MOUNTINFO)
    assert [entry.mountpoint for entry in entries] == ["/", "/mnt/data", "/mnt/data/inner", "/mnt/my data"]
    assert mount_of("/mnt/data/x/y", entries).fstype == "fuse.s3xfs"
    assert mount_of("/mnt/data", entries).mountpoint == "/mnt/data"
    assert mount_of("/mnt/data/inner/f", entries).fstype == "tmpfs"
    assert mount_of("/mnt/database", entries).mountpoint == "/"  # a prefix of the name is not a parent
    assert mount_of("/mnt/my data/f", entries).mountpoint == "/mnt/my data"
    stacked = parse_mountinfo(MOUNTINFO + "43 40 0:53 / /mnt/data rw - ext4 /dev/sdb rw\n")
    assert mount_of("/mnt/data/x", stacked).fstype == "ext4"  # the last mount on a point is the visible one


def test_plan_takes_files_in_walk_order_while_they_fit_the_cap():
    cap = 100 * MiB
    mount = Mount("/m", cap)
    room = cap - headroom(cap)
    items = [Item("/m/a", 40 * MiB, mount, cached=40 * MiB),  # already cached: kept, counted against the cap
             Item("/m/b", 30 * MiB, mount, cached=10 * MiB),  # 20 MiB missing
             Item("/m/c", room - 70 * MiB - (MiB - 1), mount),  # exactly fills the cap (with f's cached part)
             Item("/m/d", 1, mount),  # does not fit: left out, and so is everything after it
             Item("/m/e", 0, mount),  # empty: complete already
             Item("/m/f", MiB, mount, cached=MiB - 1),  # 1 byte missing: left out too
             Item("/m/g", 5, mount, cacheable=False),
             Item("/m/h", 5, mount, failed=True)]
    plan = make_plan(items)
    assert [item.path for item in plan.read] == ["/m/b", "/m/c"]
    assert [item.path for item in plan.already] == ["/m/a", "/m/e"]
    assert [item.path for item in plan.left_out] == ["/m/d", "/m/f"]
    assert [item.path for item in plan.uncacheable] == ["/m/g"]


def test_plan_budgets_each_mount_on_its_own():
    small, large = Mount("/s", 16 * MiB), Mount("/l", 1 << 40)
    items = [Item(f"/s/{n}", 4 * MiB, small) for n in range(5)] + [Item(f"/l/{n}", 4 * MiB, large) for n in range(5)]
    plan = make_plan(items)
    assert len(plan.read) == 3 + 5 and len(plan.left_out) == 2
    assert {item.mount.root for item in plan.left_out} == {"/s"}
