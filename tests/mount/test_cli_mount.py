"""`s3xfs mount` / `s3xfs unmount` as a user runs them: daemon mode, errors, signals, -o options."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, REGION, LocalZone
from tests.support.mount import block_writers, daemon_pids, force_unmount, mount_env, needs_fuse, s3xfs_command

pytestmark = [pytest.mark.fuse, needs_fuse]


@pytest.fixture
def server(localzone_factory) -> LocalZone:
    server = localzone_factory("--bucket", BUCKET)
    server.client().put_object(Bucket=BUCKET, Key="hello.txt", Body=b"hello\n")
    return server


@pytest.fixture
def mountpoint(tmp_path: Path):
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        yield path
    finally:
        force_unmount(path)


def run(*args: str, env=None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(s3xfs_command(*args), env=env or mount_env(), capture_output=True, text=True, timeout=timeout)


def test_mount_detaches_when_ready_and_unmount_ends_it(server, mountpoint):
    result = run("mount", BUCKET, str(mountpoint), "--endpoint-url", server.url, "--region", REGION, "--read-only")
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mountpoint)  # usable the moment the command returned
        assert (mountpoint / "hello.txt").read_text() == "hello\n"
        pids = daemon_pids(mountpoint)
        assert len(pids) == 1
        assert run("unmount", str(mountpoint)).returncode == 0
        assert not os.path.ismount(mountpoint)
        assert daemon_pids(mountpoint) == []  # unmount waited for the daemon to exit
    finally:
        force_unmount(mountpoint)
        for pid in daemon_pids(mountpoint):
            os.kill(pid, signal.SIGKILL)


def test_unmount_returns_once_the_daemon_and_its_block_writer_are_gone(server, mountpoint, tmp_path):
    """A script may remove the cache directory or mount again as soon as `s3xfs unmount` returns:
    the daemon has stored what its caches held and ended its block writer by then."""
    bodies = {f"f{n}.bin": os.urandom(4 << 20) for n in range(6)}
    for key, body in bodies.items():
        server.client().put_object(Bucket=BUCKET, Key=key, Body=body)
    cache = tmp_path / "cache"
    args = ("--endpoint-url", server.url, "--region", REGION, "--read-only", "--cache", str(cache))
    result = run("mount", BUCKET, str(mountpoint), *args)
    try:
        assert result.returncode == 0, result.stderr
        for key, body in bodies.items():
            assert (mountpoint / key).read_bytes() == body
        (daemon,) = daemon_pids(mountpoint)
        deadline = time.monotonic() + 10
        while not (writers := block_writers(daemon)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert writers  # the block writer, storing the 24 blocks just fetched
        done = run("unmount", str(mountpoint))
        assert done.returncode == 0, done.stderr
        assert daemon_pids(mountpoint) == []
        assert not any(Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes()
                       for pid in writers)  # gone, not even a zombie with a command line
        server.reset_stats()
        result = run("mount", BUCKET, str(mountpoint), *args)
        assert result.returncode == 0, result.stderr
        assert all((mountpoint / key).read_bytes() == body for key, body in bodies.items())
        assert server.stats()["requests"].get("GetObject", 0) == 0  # every block was on disk
        assert run("unmount", str(mountpoint)).returncode == 0
    finally:
        force_unmount(mountpoint)
        for pid in daemon_pids(mountpoint):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_unmounts_cleanly(server, mountpoint):
    proc = subprocess.Popen(s3xfs_command("mount", BUCKET, str(mountpoint), "-f", "--endpoint-url", server.url,
                                          "--region", REGION), env=mount_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not os.path.ismount(mountpoint)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args, code, words", [
    (["Bad_Bucket"], 2, "lowercase"),
    (["data--usw2-az1--x-s3/a//b/"], 2, "empty"),
    (["missing--usw2-az1--x-s3"], 1, "does not exist"),
    ([BUCKET, "--metadata-ttl", "soon"], 2, "--metadata-ttl"),
    ([BUCKET, "--part-size", "1K"], 2, "--part-size"),
    ([BUCKET, "-o", "bogus=1"], 2, "unknown mount option"),
    ([BUCKET, "--file-mode", "999"], 2, "octal"),
])
def test_mount_errors_are_one_line(server, mountpoint, args, code, words):
    result = run("mount", args[0], str(mountpoint), *args[1:], "--endpoint-url", server.url, "--region", REGION)
    assert result.returncode == code, result.stderr
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not os.path.ismount(mountpoint)


def test_mountpoint_problems(server, tmp_path, mountpoint):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target, words in [(tmp_path / "absent", "does not exist"), (afile, "not a directory")]:
        result = run("mount", BUCKET, str(target), "--endpoint-url", server.url, "--region", REGION)
        assert result.returncode == 2 and words in result.stderr
    first = run("mount", BUCKET, str(mountpoint), "--endpoint-url", server.url, "--region", REGION, "--read-only")
    assert first.returncode == 0, first.stderr
    try:
        busy = run("mount", BUCKET, str(mountpoint), "--endpoint-url", server.url, "--region", REGION)
        assert busy.returncode == 2 and "busy" in busy.stderr
    finally:
        run("unmount", str(mountpoint))


def test_permission_denied_says_what_to_do(localzone_factory, tmp_path, mountpoint):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"principals": [
        {"name": "reader", "access_key": "AKIAREADER0000000001", "secret_key": "reader-secret",
         "buckets": {BUCKET: ["ReadOnly"]}},
        {"name": "nobody", "access_key": "AKIANOBODY0000000001", "secret_key": "nobody-secret", "buckets": {}}]}))
    server = localzone_factory("--bucket", BUCKET, "--users", str(users))
    reader = mount_env("AKIAREADER0000000001", "reader-secret")
    result = run("mount", BUCKET, str(mountpoint), "--endpoint-url", server.url, "--region", REGION, env=reader)
    assert result.returncode == 1 and "--read-only" in result.stderr
    nobody = mount_env("AKIANOBODY0000000001", "nobody-secret")
    result = run("mount", BUCKET, str(mountpoint), "--endpoint-url", server.url, "--region", REGION, "--read-only", env=nobody)
    assert result.returncode == 1 and "ReadOnly session" in result.stderr
    result = run("mount", BUCKET, str(mountpoint), "--endpoint-url", server.url, "--region", REGION, "-o", "ro", env=reader)
    try:
        assert result.returncode == 0, result.stderr
        assert server.stats()["sessions"]["ReadWrite"] == 0
    finally:
        run("unmount", str(mountpoint))


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("s3xfs ")


def test_missing_credentials_are_named(server, mountpoint):
    env = {k: v for k, v in mount_env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    result = run("mount", BUCKET, str(mountpoint), "--endpoint-url", server.url, "--region", REGION, env=env)
    assert result.returncode == 1 and "no AWS credentials found" in result.stderr


def test_systemd_notifications_ready_and_stopping(server, mountpoint, tmp_path):
    from tests.support.mount import NotifySocket

    with NotifySocket(tmp_path / "notify.sock") as notify:
        env = dict(mount_env(), NOTIFY_SOCKET=str(notify.path))
        proc = subprocess.Popen(s3xfs_command("mount", BUCKET, str(mountpoint), "-f", "--endpoint-url", server.url,
                                              "--region", REGION, "--read-only"), env=env, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while "READY=1" not in notify.messages:
                assert proc.poll() is None and time.monotonic() < deadline
                notify.receive(0.1)
            assert os.path.ismount(mountpoint)  # READY=1 means usable
            assert any(m.startswith("MAINPID=") and m.endswith(str(proc.pid)) for m in notify.messages)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            notify.receive(1.0)
            assert "STOPPING=1" in notify.messages
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
