"""Mount s3xfs on a test endpoint and always unmount it (fusermount3 -u -z) and stop the daemon by PID."""

from __future__ import annotations

import contextlib

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.localzone import ACCESS_KEY, REGION, SECRET_KEY, LocalZone

FUSE_MISSING = None
if not os.path.exists("/dev/fuse"):
    FUSE_MISSING = "/dev/fuse is absent"
elif shutil.which("fusermount3") is None:
    FUSE_MISSING = "fusermount3 is not installed (Debian package fuse3)"
needs_fuse = pytest.mark.skipif(FUSE_MISSING is not None, reason=FUSE_MISSING or "")


def mount_env(access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    return env


def s3xfs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "s3xfs.cli", *args]


def stats_of(path: Path) -> dict[str, Any]:
    """The mount's stats through the CLI (--json), as a user would get them."""
    result = subprocess.run(s3xfs_command("stats", str(path), "--json"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class NotifySocket:
    """A NOTIFY_SOCKET for one daemon: collects the sd_notify messages it sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def receive(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except (TimeoutError, socket.timeout):
            return
        self.messages.extend(data.decode().splitlines())

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "NotifySocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point, from the mount table: os.path.ismount says False for a
    dead FUSE mount (its daemon was killed: stat fails with ENOTCONN), which still needs unmounting."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                return True
    return os.path.ismount(path)


def daemon_pids(mountpoint: Path) -> list[int]:
    """PIDs of s3xfs daemons (s3xfs mount or mount.s3xfs) serving ``mountpoint``: a test's own
    processes, since every test mounts on a mount point of its own temporary directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"s3xfs" in arg for arg in cmdline) and str(mountpoint).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def block_writers(daemon: int) -> list[int]:
    """The daemon's children running the cache's block writer."""
    found = []
    with contextlib.suppress(OSError):  # a thread may end while we look
        for task in Path(f"/proc/{daemon}/task").iterdir():
            with contextlib.suppress(OSError):
                for pid in (task / "children").read_text().split():
                    if b"block-writer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.append(int(pid))
    return found


def force_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


class Mount:
    """``s3xfs mount --foreground`` in a subprocess we own; ready when the path is a mount point."""

    def __init__(self, server: LocalZone, source: str, mountpoint: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.server = server
        self.source = source
        self.path = mountpoint
        self.args = list(args)
        self.env = env or mount_env()
        self.log = mountpoint.parent / f"{mountpoint.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> "Mount":
        """Start the daemon and wait for its READY=1 (sd_notify), which it sends once the mount is usable."""
        self.path.mkdir(parents=True, exist_ok=True)
        command = s3xfs_command("mount", self.source, str(self.path), "--foreground", "--endpoint-url", self.server.url,
                                "--region", REGION, *self.args)
        with NotifySocket(self.path.parent / f".{self.path.name}.notify") as notify:
            env = dict(self.env, NOTIFY_SOCKET=str(notify.path))
            self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
            deadline = time.monotonic() + timeout
            while "READY=1" not in notify.messages:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"s3xfs exited with {self.proc.returncode}: {self.log.read_text()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mount not ready in {timeout} s: {self.log.read_text()}")
                notify.receive(0.05)
        assert os.path.ismount(self.path)
        return self

    def stop(self) -> int | None:
        """SIGTERM the daemon (it unmounts), then make sure: lazy unmount, kill by PID."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    force_unmount(self.path)
                    self.proc.kill()
                    code = self.proc.wait(timeout=10)
            else:
                code = self.proc.returncode
        force_unmount(self.path)
        return code

    def __enter__(self) -> "Mount":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
