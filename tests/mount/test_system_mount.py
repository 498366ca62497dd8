"""s3xfs the way operators use it: mount -t s3xfs, fstab with mount -a, findmnt, umount (all for real).

mount(8) runs /sbin/mount.s3xfs; the fixture links it there for the test (with `s3xfs install-helper`)
and removes the link afterwards, unless this machine already has this installation's helper.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, REGION, LocalZone
from tests.support.mount import daemon_pids, force_unmount, is_mounted, mount_env, needs_fuse

pytestmark = [pytest.mark.fuse, needs_fuse,
              pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) with a helper and fstab needs root")]

HELPER = Path("/sbin/mount.s3xfs")
SCRIPTS = Path(sys.executable).parent


@pytest.fixture(scope="module")
def helper() -> Iterator[Path]:
    ours = SCRIPTS / "mount.s3xfs"
    if HELPER.is_symlink() and Path(os.readlink(HELPER)) == ours:
        yield HELPER  # installed by the administrator: leave it
        return
    if HELPER.exists():
        pytest.skip(f"{HELPER} belongs to another installation; not replacing it")
    result = subprocess.run([str(SCRIPTS / "s3xfs"), "install-helper"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    try:
        yield HELPER
    finally:
        subprocess.run([str(SCRIPTS / "s3xfs"), "install-helper", "--remove"], capture_output=True)


@pytest.fixture
def server(localzone_factory) -> LocalZone:
    server = localzone_factory("--bucket", BUCKET)
    client = server.client()
    client.put_object(Bucket=BUCKET, Key="hello.txt", Body=b"hello\n")
    client.put_object(Bucket=BUCKET, Key="train/a.bin", Body=b"a" * 1000)
    return server


@pytest.fixture
def mountpoints(tmp_path: Path) -> Iterator[list[Path]]:
    """Three mount points; whatever is mounted on them is unmounted and its daemon stopped, also on failure."""
    paths = [tmp_path / f"m{index}" for index in range(3)]
    for path in paths:
        path.mkdir()
    try:
        yield paths
    finally:
        for path in paths:
            pids = daemon_pids(path)
            force_unmount(path)
            _wait_gone(pids, 10)
            for pid in daemon_pids(path):
                os.kill(pid, signal.SIGKILL)


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], env=mount_env(), capture_output=True, text=True, timeout=60)


def _findmnt(path: Path) -> dict[str, str] | None:
    result = subprocess.run(["findmnt", "--json", "--output", "TARGET,SOURCE,FSTYPE,OPTIONS", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)["filesystems"][0]


def _where(server: LocalZone) -> str:
    return f"endpoint-url={server.url},region={REGION}"


def test_mount_t_s3xfs_findmnt_and_umount(helper, server, mountpoints):
    target = mountpoints[0]
    result = _mount("-t", "s3xfs", "-o", f"ro,{_where(server)},_netdev,nofail,noatime", f"{BUCKET}/train/", str(target))
    assert result.returncode == 0, result.stderr
    assert (target / "a.bin").read_bytes() == b"a" * 1000  # usable the moment mount returned
    found = _findmnt(target)
    assert found is not None
    assert found["fstype"] == "fuse.s3xfs" and found["source"] == f"{BUCKET}/train/"
    options = found["options"].split(",")
    assert "ro" in options and "noatime" in options  # a kernel flag passed on to the FUSE mount
    with pytest.raises(OSError) as refused:
        (target / "new.txt").write_text("x")
    assert refused.value.errno == 30  # EROFS
    pids = daemon_pids(target)
    assert len(pids) == 1
    result = subprocess.run(["umount", str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not is_mounted(target)
    assert _wait_gone(pids, 10), "the daemon did not exit after umount"


def test_fstab_mount_a_is_idempotent_and_skips_noauto(helper, server, mountpoints, tmp_path):
    auto, manual, _ = mountpoints
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a read-only dataset and a scratch space, as on a training node\n"
        f"{BUCKET}/train/ {auto} s3xfs ro,_netdev,nofail,x-systemd.automount,x-systemd.mount-timeout=30,"
        f"metadata-ttl=indefinite,{_where(server)} 0 0\n"
        f"s3://{BUCKET}/ {manual} s3xfs defaults,noauto,user,{_where(server)} 0 0\n")
    result = _mount("-a", "-T", str(fstab))
    assert result.returncode == 0, result.stderr
    assert is_mounted(auto) and not is_mounted(manual)
    assert (auto / "a.bin").stat().st_size == 1000
    again = _mount("-a", "-T", str(fstab))  # already mounted: mount(8) recognises the line, nothing happens
    assert again.returncode == 0, again.stderr
    assert len(daemon_pids(auto)) == 1
    result = _mount("-T", str(fstab), str(manual))  # a noauto line, mounted by its mount point
    assert result.returncode == 0, result.stderr
    options = _findmnt(manual)["options"].split(",")
    assert {"rw", "nosuid", "nodev", "noexec"} <= set(options)  # `user` makes mount(8) add these
    (manual / "written.txt").write_text("from fstab\n")
    assert server.client().get_object(Bucket=BUCKET, Key="written.txt")["Body"].read() == b"from fstab\n"
    for path in (auto, manual):
        pids = daemon_pids(path)
        assert subprocess.run(["umount", str(path)], capture_output=True).returncode == 0
        assert _wait_gone(pids, 10)


def test_mount_failures_use_mounts_exit_codes(helper, server, mountpoints):
    target = mountpoints[0]
    unknown = _mount("-t", "s3xfs", "-o", f"{_where(server)},colour=blue", BUCKET, str(target))
    assert unknown.returncode == 1 and "unknown mount option -o 'colour=blue'" in unknown.stderr
    sloppy = _mount("-s", "-t", "s3xfs", "-o", f"ro,{_where(server)},colour=blue", BUCKET, str(target))
    assert sloppy.returncode == 0, sloppy.stderr
    assert "ignoring unknown mount option 'colour=blue'" in sloppy.stderr
    assert subprocess.run(["umount", str(target)], capture_output=True).returncode == 0
    no_bucket = _mount("-t", "s3xfs", "-o", _where(server), "other--usw2-az1--x-s3", str(target))
    assert no_bucket.returncode == 32 and "other--usw2-az1--x-s3" in no_bucket.stderr
    assert no_bucket.stderr.startswith("mount.s3xfs: ")
    assert not is_mounted(target)
    fake = _mount("-f", "-t", "s3xfs", "-o", _where(server), BUCKET, str(target))
    assert fake.returncode == 0 and not is_mounted(target)
