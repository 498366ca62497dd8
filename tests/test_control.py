"""Live stats without a mount: the control socket's protocol and owner-only rule, the client's
mount lookup, the gathering of counters (adapter + core on the in-memory client), and rendering."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
import trio

from s3xfs import control
from s3xfs.client.memory import MemoryClient
from s3xfs.control import ControlServer, socket_address
from s3xfs.mount_table import MountEntry, parse_mountinfo
from s3xfs.stats import StatsError, ask, find_mount, render, size
from tests.support.core import run_filesystem

NOBODY = 65534


def entry_for(path: Path, owner: int | None = None) -> MountEntry:
    options = {"user_id": str(os.getuid() if owner is None else owner)}
    return MountEntry(control.canonical_mountpoint(path), "fuse.s3xfs", "bucket", options)


def serve(path: Path, client_work, snapshot=None, **kwargs: Any):
    """Run a ControlServer for ``path`` and ``client_work(server)`` in a worker thread; return its result."""
    snapshot = snapshot or (lambda: {"fuse": {"requests": {"read": 3}}})

    async def main():
        server = ControlServer(path, snapshot, identity={"bucket": "b--usw2-az1--x-s3"}, **kwargs)
        async with trio.open_nursery() as nursery:
            assert await nursery.start(server.serve) is True
            try:
                return await trio.to_thread.run_sync(client_work, server)
            finally:
                nursery.cancel_scope.cancel()

    return trio.run(main)


def raw_request(address: bytes, data: bytes, *, shut: bool = False) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        try:
            sock.sendall(data)
        except BrokenPipeError:
            pass  # a refusal closes the connection at once, maybe before we sent: its answer is still there
        if shut:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)


# --- names --------------------------------------------------------------------------------------------


def test_the_name_is_abstract_and_follows_the_real_path(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "mnt")
    name = socket_address(tmp_path / "mnt")
    assert name.startswith(b"\0s3xfs/") and len(name) == len(b"\0s3xfs/") + 32
    assert socket_address(tmp_path / "link") == name
    assert socket_address(str(tmp_path / "mnt") + "/") == name
    assert socket_address(tmp_path / "other") != name


# --- protocol ------------------------------------------------------------------------------------------


def test_stats_answers_one_json_line_with_identity(tmp_path: Path) -> None:
    def work(server: ControlServer) -> dict[str, Any]:
        return ask(entry_for(tmp_path))

    reply = serve(tmp_path, work)
    assert reply["protocol"] == control.PROTOCOL
    assert reply["fuse"] == {"requests": {"read": 3}}
    ident = reply["identity"]
    assert ident["bucket"] == "b--usw2-az1--x-s3" and ident["pid"] == os.getpid()
    assert ident["mountpoint"] == str(tmp_path.resolve()) and ident["uptime"] >= 0 and ident["version"]


def test_unknown_and_malformed_requests_get_an_error(tmp_path: Path) -> None:
    def work(server: ControlServer) -> list[dict[str, Any]]:
        return [raw_request(server.address, b"frobnicate\n"), raw_request(server.address, b"stats now\n"),
                raw_request(server.address, b"\n"), raw_request(server.address, b"x" * 5000 + b"\n"),
                raw_request(server.address, b"stats", shut=True),  # no newline, then EOF
                raw_request(server.address, b"stats\n")]

    unknown, extra, empty, long, cut, fine = serve(tmp_path, work)
    assert unknown["error"] == "unknown request 'frobnicate'" and unknown["code"] == "EINVAL"
    assert unknown["commands"] == ["stats"] and unknown["protocol"] == control.PROTOCOL
    assert extra["code"] == "EINVAL" and "no arguments" in extra["error"]
    assert empty["code"] == "EINVAL" and long["code"] == "EINVAL" and cut["code"] == "EINVAL"
    assert "error" not in fine  # the server still serves after bad requests


def test_a_failing_snapshot_is_reported_and_the_server_goes_on(tmp_path: Path, caplog) -> None:
    calls = []

    def snapshot() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {}

    def work(server: ControlServer):
        first = raw_request(server.address, b"stats\n")
        return first, ask(entry_for(tmp_path))

    with caplog.at_level(logging.ERROR, logger="s3xfs.control"):
        first, second = serve(tmp_path, work, snapshot)
    assert first["code"] == "EIO" and "boom" in first["error"]
    assert "identity" in second


def test_a_taken_name_means_no_stats_not_a_failure(tmp_path: Path, caplog) -> None:
    async def main() -> tuple[bool, bool]:
        first = ControlServer(tmp_path, dict)
        second = ControlServer(tmp_path, dict)
        async with trio.open_nursery() as nursery:
            one = await nursery.start(first.serve)
            two = await nursery.start(second.serve)
            nursery.cancel_scope.cancel()
        return one, two

    with caplog.at_level(logging.WARNING, logger="s3xfs.control"):
        assert trio.run(main) == (True, False)
    assert "another process serves this mount point" in caplog.text


def test_the_name_is_released_when_the_server_stops(tmp_path: Path) -> None:
    serve(tmp_path, lambda server: None)
    with pytest.raises(StatsError, match="no s3xfs daemon answers"):
        ask(entry_for(tmp_path))


def test_a_socket_held_by_another_uid_than_the_mounts_owner_is_not_trusted(tmp_path: Path) -> None:
    def work(server: ControlServer) -> str:
        with pytest.raises(StatsError) as failure:
            ask(entry_for(tmp_path, owner=os.getuid() + 1))
        return str(failure.value)

    assert "not trusting it" in serve(tmp_path, work)


# --- owner only ----------------------------------------------------------------------------------------


def _as_nobody(address: bytes, mountpoint: str, write_fd: int) -> None:
    """In a forked child: become uid 65534, ask over the raw protocol and through ``ask``, report, exit."""
    status = 1
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        raw = raw_request(address, b"stats\n")
        try:
            ask(MountEntry(mountpoint, "fuse.s3xfs", "bucket", {"user_id": "0"}))  # the server runs as root
            message = "answered"
        except StatsError as exc:
            message = str(exc)
        os.write(write_fd, json.dumps({"uid": os.getuid(), "raw": raw, "ask": message}).encode())
        status = 0
    except BaseException as exc:  # noqa: BLE001 - the child must always exit
        os.write(write_fd, json.dumps({"crash": repr(exc)}).encode())
    finally:
        os._exit(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
def test_another_uid_is_refused(tmp_path: Path) -> None:
    def work(server: ControlServer) -> dict[str, Any]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            _as_nobody(server.address, server.mountpoint, write_fd)
        os.close(write_fd)
        try:
            with os.fdopen(read_fd, "rb") as pipe:
                data = pipe.read()
        finally:
            _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), status
        result = json.loads(data)
        result["owner"] = ask(entry_for(tmp_path))  # and the owner (root) is still served
        return result

    result = serve(tmp_path, work)
    assert "crash" not in result, result
    assert result["uid"] == NOBODY
    assert result["raw"]["code"] == "EACCES" and "permission denied" in result["raw"]["error"]
    assert "identity" not in result["raw"] and "fuse" not in result["raw"]
    assert result["ask"].startswith("permission denied")
    assert "identity" in result["owner"]


def test_peer_credentials_of_a_socketpair() -> None:
    one, two = socket.socketpair()
    with one, two:
        assert control.peer_credentials(one) == (os.getpid(), os.getuid(), os.getgid())
    assert control._UCRED.size == struct.calcsize("3i")


# --- finding the mount ---------------------------------------------------------------------------------

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:40 / /mnt/data rw,nosuid,nodev,relatime shared:20 - fuse.s3xfs data--usw2-az1--x-s3 rw,user_id=1000,group_id=1000
41 22 0:41 / /mnt/with\\040space rw,relatime shared:21 - fuse.s3xfs b--usw2-az1--x-s3/p/ ro,user_id=0,group_id=0
42 22 0:42 / /mnt/other rw,relatime shared:22 - fuse.sshfs host: rw,user_id=0,group_id=0
43 22 0:43 / /mnt/data rw,relatime shared:23 - fuse.s3xfs second--usw2-az1--x-s3 rw,user_id=1001,group_id=1001
"""


def test_parse_mountinfo() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert [entry.mountpoint for entry in entries] == ["/", "/mnt/data", "/mnt/with space", "/mnt/other", "/mnt/data"]
    assert entries[2].source == "b--usw2-az1--x-s3/p/" and entries[2].owner == 0
    assert entries[0].owner is None


def test_find_mount() -> None:
    assert find_mount("/mnt/with space", MOUNTINFO).source == "b--usw2-az1--x-s3/p/"
    stacked = find_mount("/mnt/data/", MOUNTINFO)
    assert stacked.source == "second--usw2-az1--x-s3" and stacked.owner == 1001  # the visible one
    with pytest.raises(StatsError, match="is not an s3xfs mount .it is a fuse.sshfs mount"):
        find_mount("/mnt/other", MOUNTINFO)
    with pytest.raises(StatsError, match="does not exist"):
        find_mount("/nonexistent/s3xfs-test", MOUNTINFO)


def test_find_mount_of_a_plain_directory(tmp_path: Path) -> None:
    with pytest.raises(StatsError, match="is not a mount point"):
        find_mount(str(tmp_path))


# --- gathering: adapter and core on the in-memory client -----------------------------------------------


def test_counters_of_the_adapter_and_the_core() -> None:
    import pyfuse3

    from s3xfs.core.inodes import ROOT_INODE
    from s3xfs.fuse_ops import FuseOperations

    async def check(fs, client):
        ops = FuseOperations(fs)
        assert (await ops.lookup(ROOT_INODE, b"missing")).st_ino == 0  # a negative entry: ENOENT
        attrs = await ops.lookup(ROOT_INODE, b"f.bin")
        info = await ops.open(attrs.st_ino, os.O_RDONLY, None)
        data = await ops.read(info.fh, 0, 100_000)  # not the whole file: a read-ahead starts
        data = bytes(data) + bytes(await ops.read(info.fh, 100_000, 1 << 20))
        await ops.release(info.fh)
        with pytest.raises(pyfuse3.FUSEError):
            await ops.getxattr(attrs.st_ino, b"security.selinux", None)  # EOPNOTSUPP, through the funnel
        with pytest.raises(pyfuse3.FUSEError):
            await ops.read(12345, 0, 10)  # EBADF on the inlined hot path
        with pytest.raises(pyfuse3.FUSEError):
            await ops.mknod(ROOT_INODE, b"node", 0, 0, None)  # EROFS raised by the core
        return len(data), ops.stats()

    n, stats = run_filesystem(check, MemoryClient(seed=1), keys={"f.bin": b"x" * 300_000}, read_only=True)
    assert n == 300_000
    fuse = stats["fuse"]
    assert fuse["requests"]["lookup"] == 2 and fuse["requests"]["read"] == 3 and fuse["requests"]["open"] == 1
    assert fuse["errors"] == {"ENOENT": 1, "EBADF": 1, "EROFS": 1, errno.errorcode[errno.EOPNOTSUPP]: 1}
    assert fuse["bytes_read"] == 300_000 and fuse["bytes_written"] == 0
    assert stats["s3"]["requests"]["GetObject"] >= 1  # MemoryClient: requests only, no byte counts
    assert stats["opens"] == {"opens": 1, "opens_kept_cache": 0, "read_aheads": 1, "whole_reads": 0}
    assert stats["prefetch"]["misses"] >= 1  # from the handle released already
    assert stats["lookups"]["lookups_remote"] >= 1 and stats["cache"] is None and stats["sessions"] is None
    assert stats["handles"]["files"] == 0
    json.dumps(stats, allow_nan=False)


# --- rendering -----------------------------------------------------------------------------------------

SAMPLE: dict[str, Any] = {
    "protocol": 1,
    "identity": {"bucket": "data--usw2-az1--x-s3", "prefix": "train/", "mountpoint": "/mnt/data", "read_only": True,
                 "pid": 4242, "uid": 1000, "version": "0.1.0", "uptime": 3723.4, "endpoint_url": None,
                 "region": "us-west-2", "cache_dir": "/var/cache/s3xfs"},
    "fuse": {"requests": {"read": 12000, "lookup": 30, "getattr": 7}, "errors": {"ENOENT": 3},
             "bytes_read": 3 * 2**30 + 2**29, "bytes_written": 0},
    "s3": {"requests": {"GetObject": 420, "HeadObject": 5, "CreateSession": 2}, "failures": {"NoSuchKey": 4},
           "retries": 1, "bytes_received": 3 * 2**30, "bytes_sent": 512},
    "sessions": {"mode": "ReadOnly", "created": 2, "refreshes": 1, "failures": 0, "invalidations": 0,
                 "latency_mean": 0.012, "latency_max": 0.03, "last_error": None},
    "lookups": {"lookups_remote": 5, "lookups_cached": 20, "lookups_negative_cached": 5, "listings": 2},
    "opens": {"opens": 10, "opens_kept_cache": 3},
    "prefetch": {"hits": 11400, "misses": 600},
    "cache": {"directory": "/var/cache/s3xfs", "size_limit": 2**34, "block_size": 2**20,
              "blocks": {"block_hits": 300, "block_misses": 100, "blocks_stored": 100, "blocks_corrupt": 0},
              "metadata": {"listings_restored": 1, "listing_misses": 1}, "errors": 0,
              "block_writer": {"pid": 4250, "in_daemon": False, "sent": 100, "stored": 98}},
    "memory": {"read_buffer_used": 64 * 2**20, "read_buffer_peak": 128 * 2**20, "read_buffer_limit": 256 * 2**20,
               "write_buffer_used": 0, "write_buffer_limit": 128 * 2**20},
    "handles": {"files": 2, "directories": 0, "inodes": 40},
}


def test_render_groups_aligns_and_humanises() -> None:
    text = render(SAMPLE)
    lines = text.splitlines()
    assert lines[0] == "data--usw2-az1--x-s3/train/ at /mnt/data (read-only)"
    assert lines[1] == "s3xfs 0.1.0, pid 4242, uid 1000, up 1h 02m 03s"
    assert "cache /var/cache/s3xfs" in lines[2]
    for title in ("Data", "FUSE requests", "FUSE errors", "S3 requests", "S3 failures", "Sessions (ReadOnly)",
                  "Caches", "Memory and handles"):
        assert any(line.startswith(title) for line in lines), title

    def row(label: str) -> str:
        return next(line for line in lines if line.startswith("  ") and line[2:].split("  ")[0].strip() == label)

    assert "3.50 GiB" in row("read through FUSE") and "3.00 GiB" in row("downloaded from S3")
    assert "512 B" in row("uploaded to S3")
    assert "95.0%" in row("read-ahead") and "75.0%" in row("disk cache: data") and "30.0%" in row("kernel page cache")
    assert "12,000" in row("read") and "3" in row("ENOENT") and "4" in row("NoSuchKey")
    assert "12 ms" in row("CreateSession latency")
    assert next(line for line in lines if line.startswith("S3 requests")).endswith("427  1 retry")
    # Values are right-aligned in one column across all groups.
    columns = {row(label).rstrip().rfind(value) + len(value)
               for label, value in (("read", "12,000"), ("GetObject", "420"), ("created", "2"), ("ENOENT", "3"))}
    assert len(columns) == 1, columns


def test_render_says_where_blocks_are_stored() -> None:
    """The block writer's row: its pid and progress, not started, or gone (the daemon stores blocks)."""
    def writer_row(state: dict | None) -> str | None:
        sample = {**SAMPLE, "cache": {**SAMPLE["cache"], "block_writer": state}}
        return next((line for line in render(sample).splitlines() if "disk cache: block writer" in line), None)

    assert "pid 4250, 98 of 100 blocks stored" in writer_row(SAMPLE["cache"]["block_writer"])
    assert "not started" in writer_row({"pid": None, "in_daemon": False, "sent": 0, "stored": 0})
    assert "the daemon stores blocks itself" in writer_row({"pid": None, "in_daemon": True, "sent": 5, "stored": 3})
    assert writer_row(None) is None  # an older daemon's answer: no row


def test_render_copes_with_a_minimal_answer() -> None:
    text = render({"protocol": 1, "identity": {"bucket": "b"}})
    assert "b at ?" in text and "read-ahead" in text and "-" in text


def test_sizes() -> None:
    assert size(0) == "0 B" and size(1023) == "1023 B" and size(1536) == "1.50 KiB"
    assert size(12 * 2**20) == "12.0 MiB" and size(5 * 2**40) == "5.00 TiB"
