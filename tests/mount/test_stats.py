"""``s3xfs stats`` against real mounts: the counters move as the operations done through the mount
say they must, and agree with the local endpoint's own counts; errors are one line and exit 1."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s3xfs import control
from s3xfs.cli import build_parser
from s3xfs.cli import main as s3xfs_main
from s3xfs.stats import StatsError, ask, find_mount
from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, LocalZone
from tests.support.mount import force_unmount, is_mounted, needs_fuse, s3xfs_command, stats_of

pytestmark = [pytest.mark.fuse, needs_fuse]
MiB = 1024 * 1024
NOBODY = 65534


@pytest.fixture
def server(localzone_factory) -> LocalZone:
    return localzone_factory("--bucket", BUCKET)


def run_stats(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(s3xfs_command("stats", *args), capture_output=True, text=True, timeout=60)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in after.keys() | before.keys()
            if after.get(key, 0) != before.get(key, 0)}


def test_reading_moves_the_counters_as_the_endpoint_counts(server, mount_factory):
    body = random.Random(1).randbytes(3 * MiB + 12345)
    server.client().put_object(Bucket=BUCKET, Key="data/file.bin", Body=body)
    mount = mount_factory(server, BUCKET, "--read-only")
    server.reset_stats()
    before = stats_of(mount.path)

    assert (mount.path / "data" / "file.bin").read_bytes() == body
    with pytest.raises(FileNotFoundError):
        os.stat(mount.path / "data" / "no-such-file")

    after = stats_of(mount.path)
    endpoint = server.stats()
    fuse_before, fuse = before["fuse"], after["fuse"]
    assert fuse["bytes_read"] - fuse_before["bytes_read"] >= len(body)
    assert fuse["bytes_written"] == 0
    assert delta(fuse["requests"], fuse_before["requests"]).get("read", 0) >= 1
    assert delta(fuse["errors"], fuse_before["errors"]) == {"ENOENT": 1}
    s3_requests = delta(after["s3"]["requests"], before["s3"]["requests"])
    assert s3_requests.get("GetObject", 0) == endpoint["requests"]["GetObject"] >= 1
    s3_requests.pop("CreateSession", None)  # a background refresh may fall between the snapshots
    assert s3_requests == {op: n for op, n in endpoint["requests"].items() if op != "CreateSession"}
    received = after["s3"]["bytes_received"] - before["s3"]["bytes_received"]
    assert received == len(body) <= endpoint["bytes_out"]
    assert after["s3"]["bytes_sent"] == 0
    sessions = after["sessions"]
    assert sessions["mode"] == "ReadOnly" and sessions["created"] >= 1 and sessions["failures"] == 0
    assert after["prefetch"]["bytes_fetched"] >= len(body)
    assert after["cache"] is None


def test_identity_and_json(server, mount_factory):
    mount = mount_factory(server, f"{BUCKET}/some/prefix/", "--read-only")
    reply = stats_of(mount.path)
    ident = reply["identity"]
    assert reply["protocol"] == control.PROTOCOL
    assert ident["bucket"] == BUCKET and ident["prefix"] == "some/prefix/" and ident["read_only"] is True
    assert ident["mountpoint"] == str(mount.path.resolve()) and ident["pid"] == mount.proc.pid
    assert ident["uid"] == os.getuid() and ident["uptime"] >= 0 and ident["endpoint_url"] == server.url
    text = run_stats(str(mount.path))
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"{BUCKET}/some/prefix/ at {mount.path.resolve()} (read-only)")
    for title in ("Data", "FUSE requests", "S3 requests", "Sessions (ReadOnly)", "Caches"):
        assert f"\n{title}" in text.stdout


def test_writing_counts_bytes_and_a_readwrite_session(server, mount_factory):
    mount = mount_factory(server, BUCKET)
    server.reset_stats()
    before = stats_of(mount.path)
    body = random.Random(2).randbytes(2 * MiB + 7)
    (mount.path / "new.bin").write_bytes(body)
    after = stats_of(mount.path)
    endpoint = server.stats()
    assert after["fuse"]["bytes_written"] - before["fuse"]["bytes_written"] == len(body)
    sent = after["s3"]["bytes_sent"] - before["s3"]["bytes_sent"]
    assert len(body) <= sent <= endpoint["bytes_in"]
    s3_requests = delta(after["s3"]["requests"], before["s3"]["requests"])
    for op in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        assert s3_requests.get(op, 0) == endpoint["requests"].get(op, 0), op
    assert after["sessions"]["mode"] == "ReadWrite" and after["sessions"]["created"] >= 1


def test_a_second_read_from_the_disk_cache_counts_block_hits(server, mount_factory, tmp_path):
    body = random.Random(3).randbytes(3 * MiB + 1)
    server.client().put_object(Bucket=BUCKET, Key="cached.bin", Body=body)
    args = ("--read-only", "--cache", str(tmp_path / "cache"), "--metadata-ttl", "300")
    mount = mount_factory(server, BUCKET, *args)
    assert (mount.path / "cached.bin").read_bytes() == body
    first_reply = stats_of(mount.path)
    first = first_reply["cache"]["blocks"]
    assert first.get("block_hits", 0) == 0 and first["block_misses"] >= 4
    writer = first_reply["cache"]["block_writer"]  # the child storing the fetched blocks
    assert writer["pid"] and not writer["in_daemon"]  # sent and stored: still catching up
    assert b"block-writer" in Path(f"/proc/{writer['pid']}/cmdline").read_bytes()
    assert f"pid {writer['pid']}" in run_stats(str(mount.path)).stdout
    mount.stop()  # the kernel's page cache goes with the mount: the next read reaches the daemon
    server.reset_stats()
    mount = mount_factory(server, BUCKET, *args)
    assert (mount.path / "cached.bin").read_bytes() == body
    reply = stats_of(mount.path)
    blocks = reply["cache"]["blocks"]
    assert blocks["block_hits"] >= 4 and blocks.get("block_misses", 0) == 0  # 1 MiB blocks of a 3 MiB + 1 file
    assert reply["s3"]["requests"].get("GetObject", 0) == server.stats()["requests"].get("GetObject", 0) == 0
    assert reply["s3"]["bytes_received"] == 0
    text = run_stats(str(mount.path)).stdout
    assert "disk cache: data" in text
    assert reply["cache"]["block_writer"] == {"pid": None, "in_daemon": False, "sent": 0, "stored": 0}
    assert "not started (no block fetched yet)" in text  # every block came from the disk


def _stats_as_nobody(path: Path) -> tuple[int, str]:
    """``s3xfs stats PATH`` run by uid 65534, in a forked child (the interpreter's own files may be
    out of that user's reach, so the child runs the command in-process); (exit status, stderr)."""
    build_parser()  # every module the command needs is loaded before the child drops to a uid that may
    assert control.PROTOCOL  # not read the interpreter's files (s3xfs.control is imported lazily)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(read_fd)
            sys.stderr = open(write_fd, "w", closefd=False)  # pytest captures stderr as an object
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = s3xfs_main(["stats", str(path)])
        except BaseException as exc:  # noqa: BLE001 - the child must always exit
            os.write(write_fd, f"child failed: {exc!r}".encode())
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        err = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
def test_another_uid_is_refused(server, mount_factory):
    mount = mount_factory(server, BUCKET, "--read-only")
    code, err = _stats_as_nobody(mount.path)
    assert code == 1, err
    assert err.startswith("s3xfs: permission denied") and "root only" in err and err.count("\n") == 1
    assert stats_of(mount.path)["identity"]["pid"] == mount.proc.pid  # the owner still is served


def test_a_killed_daemon_gives_a_clear_error(server, mount_factory):
    mount = mount_factory(server, BUCKET, "--read-only")
    assert stats_of(mount.path)["identity"]["pid"] == mount.proc.pid
    os.kill(mount.proc.pid, signal.SIGKILL)
    mount.proc.wait(timeout=10)
    try:
        assert is_mounted(mount.path)  # a dead mount stays in the table until unmounted
        result = run_stats(str(mount.path))
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith(f"s3xfs: no s3xfs daemon answers for {mount.path.resolve()}")
        assert "killed" in result.stderr and "fusermount3 -u" in result.stderr and result.stderr.count("\n") == 1
    finally:
        force_unmount(mount.path)
    deadline = time.monotonic() + 10
    while is_mounted(mount.path) and time.monotonic() < deadline:
        time.sleep(0.05)
    result = run_stats(str(mount.path))
    assert result.returncode == 1 and result.stderr == f"s3xfs: {mount.path} is not a mount point\n"


def test_not_a_mount_and_not_an_s3xfs_mount(tmp_path):
    result = run_stats(str(tmp_path))
    assert result.returncode == 1 and result.stderr == f"s3xfs: {tmp_path} is not a mount point\n"
    result = run_stats("/proc")
    assert result.returncode == 1 and result.stderr == "s3xfs: /proc is not an s3xfs mount (it is a proc mount)\n"
    with pytest.raises(StatsError, match="does not exist"):
        ask(find_mount(str(tmp_path / "missing")))
