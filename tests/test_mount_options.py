"""The -o vocabulary (s3xfs/mount_options.py), mount.s3xfs's conventions and `s3xfs install-helper`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3xfs import mount_helper
from s3xfs.cli import build_parser, mount_config
from s3xfs.mount_options import OptionError, fold

BUCKET = "data--usw2-az1--x-s3"


def parsed(tmp_path: Path, *extra: str):
    return build_parser().parse_args(["mount", BUCKET, str(tmp_path), *extra])


def test_fstab_options_map_onto_long_options(tmp_path):
    args = parsed(tmp_path, "-o", "ro,metadata_ttl=indefinite,region=us-west-2", "-o", "cache-block-size=2M")
    folded = fold(args, args.o)
    assert args.read_only is True and args.metadata_ttl == "indefinite" and args.region == "us-west-2"
    assert args.cache_block_size == "2M" and folded.kernel_flags == [] and folded.ignored == []


def test_mount_and_systemd_options_are_ignored_and_kernel_flags_passed_on(tmp_path):
    args = parsed(tmp_path, "-o", "defaults,_netdev,nofail,noauto,auto,user,users,x-systemd.automount,"
                                  "x-systemd.requires=network-online.target,comment=systemd.automount,nosuid,noatime")
    folded = fold(args, args.o)
    assert folded.kernel_flags == ["nosuid", "noatime"]
    assert "x-systemd.requires=network-online.target" in folded.ignored and "_netdev" in folded.ignored
    assert args.read_only is None


def test_flags_last_wins_but_an_explicit_long_option_wins_over_o(tmp_path):
    args = parsed(tmp_path, "-o", "ro,rw")
    fold(args, args.o)
    assert args.read_only is False
    args = parsed(tmp_path, "--read-only", "-o", "rw")
    fold(args, args.o)
    assert args.read_only is True
    args = parsed(tmp_path, "--region", "eu-west-1", "-o", "region=us-west-2")
    fold(args, args.o)
    assert args.region == "eu-west-1"


@pytest.mark.parametrize("item, words", [
    ("colour=blue", "unknown mount option -o 'colour=blue'"),
    ("region", "-o region needs a value"),
    ("ro=1", "-o ro takes no value"),
    ("noatime=yes", "-o noatime takes no value"),
])
def test_mistakes_are_named(tmp_path, item, words):
    args = parsed(tmp_path, "-o", item)
    with pytest.raises(OptionError, match=words):
        fold(args, args.o)


def test_sloppy_ignores_unknown_options_with_a_warning(tmp_path):
    args = parsed(tmp_path, "-o", "ro,colour=blue")
    warnings: list[str] = []
    folded = fold(args, args.o, sloppy=True, warn=warnings.append)
    assert args.read_only is True and folded.ignored == ["colour=blue"]
    assert warnings == ["ignoring unknown mount option 'colour=blue' (-s)"]


def test_mount_config_carries_kernel_flags_debug_modules_and_the_source_as_fsname(tmp_path):
    args = parsed(tmp_path, "-o", "nodev,noexec,debug=s3xfs.client:botocore,log-level=info")
    config = mount_config(args)
    assert config.kernel_flags == ("nodev", "noexec") and config.debug_modules == ("s3xfs.client", "botocore")
    assert config.log_level == "INFO" and config.fsname == BUCKET
    comma = build_parser().parse_args(["mount", f"{BUCKET}/a,b/", str(tmp_path)])
    assert mount_config(comma).fsname == f"{BUCKET}/a\\,b/"  # escaped for the FUSE option string


def test_max_cached_entries_from_o_or_long_option_and_mistakes_named(tmp_path):
    from s3xfs.cli import UsageError
    from s3xfs.config import MountConfig

    assert mount_config(parsed(tmp_path)).max_cached_entries == MountConfig.max_cached_entries
    assert mount_config(parsed(tmp_path, "-o", "max_cached_entries=1000")).max_cached_entries == 1000
    assert mount_config(parsed(tmp_path, "--max-cached-entries", "1")).max_cached_entries == 1
    for bad in ("0", "-1", "many", "1e6"):
        with pytest.raises(UsageError, match=f"--max-cached-entries must be a whole number from 1 to .*{bad}"):
            mount_config(parsed(tmp_path, "--max-cached-entries", bad))


def helper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "s3xfs.mount_helper", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args, words", [
    ([BUCKET], "the following arguments are required: DIR"),
    ([BUCKET, "{dir}", "-N", "/proc/1/ns/mnt"], "-N (mounting in another mount namespace) is not supported"),
    ([BUCKET, "{dir}", "-t", "ext4"], "-t must be s3xfs or fuse.s3xfs, not 'ext4'"),
    ([BUCKET, "{dir}", "-o", "colour=blue"], "unknown mount option -o 'colour=blue'"),
    (["not_a_bucket", "{dir}"], "not_a_bucket"),
    ([BUCKET, "{dir}/missing"], "does not exist"),
    ([BUCKET, "{dir}", "-o", "metadata-ttl=soon"], "--metadata-ttl must be a number"),
])
def test_helper_usage_errors_exit_1_with_one_line(tmp_path, args, words):
    result = helper(*(arg.replace("{dir}", str(tmp_path)) for arg in args))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert words in lines[-1] and lines[-1].startswith("mount.s3xfs: ") and "Traceback" not in result.stderr


def test_helper_fake_mount_checks_everything_and_mounts_nothing(tmp_path):
    result = helper(BUCKET, str(tmp_path), "-fnv", "-t", "fuse.s3xfs", "-o", "ro,_netdev,x-systemd.automount")
    assert result.returncode == 0, result.stderr
    assert f"mounting {BUCKET} at {tmp_path} (read-only)" in result.stderr
    assert not os.path.ismount(tmp_path)


def test_install_helper_links_replaces_only_its_own_and_removes(tmp_path, monkeypatch):
    script = tmp_path / "bin" / "mount.s3xfs"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script.parent / "s3xfs")])
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    link = sbin / "mount.s3xfs"
    assert mount_helper.install(sbin) == f"{link} -> {script}"
    assert os.readlink(link) == str(script)
    assert "already installed" in mount_helper.install(sbin)
    link.unlink()
    link.write_text("someone else's helper\n")
    with pytest.raises(mount_helper.UsageError, match="--force replaces it"):
        mount_helper.install(sbin)
    with pytest.raises(mount_helper.UsageError, match="not a link to a mount.s3xfs script"):
        mount_helper.install(sbin, remove=True)
    assert mount_helper.install(sbin, force=True) == f"{link} -> {script}"
    assert mount_helper.install(sbin, remove=True) == f"removed {link}"
    assert not link.exists() and script.exists()
    link.symlink_to(tmp_path / "gone" / "mount.s3xfs")  # left by a deleted installation: replaced
    assert mount_helper.install(sbin) == f"{link} -> {script}"
    with pytest.raises(mount_helper.UsageError, match="is not a directory"):
        mount_helper.install(tmp_path / "nowhere")


def test_install_helper_command_reports_mistakes(tmp_path):
    result = subprocess.run([sys.executable, "-m", "s3xfs.cli", "install-helper", "--directory",
                             str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert result.returncode == 2 and "is not a directory" in result.stderr


def test_busy_means_a_mount_other_than_a_waiting_automount():
    from s3xfs.mount_table import mounted_on, parse_mountinfo

    table = parse_mountinfo(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:35 / /mnt/data\\040set rw shared:20 - autofs systemd-1 rw,fd=40\n"
        "41 22 0:36 / /mnt/other rw shared:21 - autofs systemd-1 rw,fd=41\n"
        "42 41 0:37 / /mnt/other rw,nosuid,nodev shared:22 - fuse.s3xfs bucket rw,user_id=0\n")
    assert mounted_on("/mnt/data set", table).fstype == "autofs"  # systemd waits for us: not busy
    assert mounted_on("/mnt/other", table).fstype == "fuse.s3xfs"  # mounted over the automount
    assert mounted_on("/mnt/none", table) is None
