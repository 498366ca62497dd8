"""Hostile input at the command line: bucket names, mount sources, options and fstab strings.

Whatever a user, an fstab line or a systemd unit hands to ``s3xfs mount`` or ``mount.s3xfs``,
the answer is either a checked configuration or one line naming the mistake with a non-zero
exit (mount.s3xfs: 1 for a mistake, 32 for a mount that failed, as man/mount.s3xfs.8 says);
never a traceback, never a mount. Hypothesis drives the real parsing functions in-process
(fast); a handful of real subprocess runs check the exit codes and stderr end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from s3xfs import mount_helper
from s3xfs.cli import MAX_PART_SIZE, MIN_PART_SIZE, UsageError, build_parser, mount_config
from s3xfs.client.naming import NamingError, parse_bucket_name, parse_mount_source
from s3xfs.config import MountConfig
from s3xfs.mount_options import (FLAG_OPTIONS, KERNEL_FLAGS, MOUNT_TOOL_OPTIONS, VALUE_OPTIONS, OptionError,
                                 fold)
from tests.support.mount import is_mounted

BUCKET = "data--usw2-az1--x-s3"
# Few examples per property: each is cheap, and together they keep this file to a few seconds.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# Strategies: hostile text of every kind the tools could be handed


NASTY_VALUES = [
    "", " ", "-", "--", "-1", "0", "nan", "NaN", "inf", "-inf", "1e400", "1e-400", "²", "٣", "١٢", "0x10", "0o17",
    "  5", "5 ", "1_000", "99999999999999999999999", "4294967295", "4294967294", "8M", "8MiB", "5G", "6G", "0M",
    "64K", "3M", "indefinite", "INDEFINITE", "forever", "\\040", "a\\040b", "a,b", "=", "==", "a=b=c", "'", '"',
    "\n", "\t", "\x01", "\x7f", "\u202e", "\ufeff", "\u0130", "ß", "ǅ", "..", "/", "//", "../..", "/etc/passwd",
    "http://", "http://127.0.0.1:0", "http://[::1", "https://h:99999", "s3://", "s3://x", "0644", "8888", "07777",
    "DEBUG", "debug", "s3xfs.client:botocore", ":::", "us-west-2", "US-WEST-2", "x" * 70_000,
]
# Text without NUL (argv and fstab cannot carry it) and without lone surrogates (not text at all).
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
FSTAB_ALPHABET = "abz09-_.=,/\\ '\"\t\n\x01\x7f:é\u202e"
VALUES = st.one_of(st.sampled_from(NASTY_VALUES), ANY_TEXT, st.text(FSTAB_ALPHABET, max_size=20))

# --cache and -o cache= create the directory they name when everything else is right: keep what
# the fuzzer invents inside the working directory (relative, no '..'), never at / as root.
CACHE_VALUES = st.one_of(
    st.sampled_from(["", "-", "--", ".", "a-file", "a-file/sub", "mnt", "c" * 300, "c/" * 3000, "x\n", "\x01", "é"]),
    st.text(FSTAB_ALPHABET, max_size=20), ANY_TEXT).filter(lambda v: not v.startswith("/") and ".." not in v)


def value_for(key: str) -> st.SearchStrategy[str]:
    return CACHE_VALUES if key == "cache" else VALUES


LONG_VALUE_OPTIONS = sorted(VALUE_OPTIONS)
LONG_FLAGS = ["read-only", "foreground", "allow-other", "allow-root"]


@st.composite
def option_items(draw: st.DrawFn) -> str:
    """One fstab-style ``-o`` item: known, unknown, mangled, escaped, empty, huge."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(sorted(FLAG_OPTIONS)))
    if kind == 1:
        return draw(st.sampled_from(sorted(KERNEL_FLAGS | MOUNT_TOOL_OPTIONS)))
    if kind in (2, 3, 4):
        key = draw(st.sampled_from(LONG_VALUE_OPTIONS))
        value = draw(value_for(key))
        key = key.replace("-", "_") if draw(st.booleans()) else key
        return f"{key}={value}"
    if kind == 5:  # a flag or kernel flag given a value, a value key given none
        return draw(st.sampled_from(sorted(FLAG_OPTIONS | {k: () for k in KERNEL_FLAGS}))) + "=" + draw(VALUES)
    if kind == 6:
        return draw(st.sampled_from(LONG_VALUE_OPTIONS))
    if kind == 7:
        return draw(st.sampled_from(["x-systemd.automount", "x-systemd.mount-timeout=30", "comment=systemd.x",
                                     "x-", "x-gvfs-hide", "_netdev"]))
    return draw(VALUES.filter(lambda v: not v.startswith("cache=")))


FSTAB_OPTIONS = st.lists(option_items(), max_size=6).map(",".join)

# --------------------------------------------------------------------------------------------
# In-process drivers


@contextlib.contextmanager
def captured_stderr() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        yield buffer


def one_line(message: str) -> None:
    """What a user sees: one line, no traceback."""
    assert message, "an error needs a message"
    assert "\n" not in message.rstrip("\n"), f"not one line: {message!r}"
    assert "Traceback" not in message


def check_config(config: MountConfig, args: argparse.Namespace) -> None:
    """A configuration that passed every check holds only sane values."""
    assert reference_bucket_ok(config.bucket)
    assert config.prefix == "" or (config.prefix.endswith("/") and not config.prefix.startswith("/"))
    assert re.fullmatch(r"[a-z]{2,}(-[a-z]+)+-[0-9]{1,3}", config.region)
    assert config.endpoint_url is None or re.fullmatch(r"https?://[^/?#@\s]+", config.endpoint_url)
    assert 0 <= config.uid < 2**32 - 1 and 0 <= config.gid < 2**32 - 1
    assert 0 <= config.file_mode <= 0o7777 and 0 <= config.dir_mode <= 0o7777
    for ttl in (config.metadata_ttl, config.negative_ttl):
        assert ttl >= 0 and not math.isnan(ttl)
    assert 1 <= config.max_threads <= 1024 and MIN_PART_SIZE <= config.part_size <= MAX_PART_SIZE
    assert set(config.kernel_flags) <= KERNEL_FLAGS
    assert config.log_level in ("DEBUG", "INFO", "WARNING", "ERROR")
    for name in LONG_VALUE_OPTIONS:  # an empty value is a mistake, never a silent default
        assert getattr(args, name.replace("-", "_")) != "", name


def s3xfs_mount(argv: list[str]) -> tuple[str, MountConfig | None]:
    """``s3xfs mount ARGV`` up to the point where the daemon would start: ('ok', config),
    ('usage', None) for an argparse mistake (exit 2), or ('error', None) for a UsageError."""
    with captured_stderr() as err:
        try:
            args = build_parser().parse_args(["mount", *argv])
        except SystemExit as exc:
            assert exc.code == 2, exc.code
            assert "Traceback" not in err.getvalue() and "error:" in err.getvalue()
            return "usage", None
        try:
            config = mount_config(args)
        except UsageError as exc:
            one_line(str(exc))
            return "error", None
    check_config(config, args)
    return "ok", config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory to run in: relative --cache values a fuzzer invents are created here, not in the repo."""
    path = tmp_path_factory.mktemp("hostile-cli")
    (path / "mnt").mkdir()
    (path / "a-file").write_text("not a directory\n")
    (path / "loop").symlink_to("loop")  # stat() fails with ELOOP, mkdir() with EEXIST
    return path


# --------------------------------------------------------------------------------------------
# Bucket names and mount sources against a reference model of the rules

_LOWER_DIGITS = "abcdefghijklmnopqrstuvwxyz0123456789"
_DIRECTORY_NAME = re.compile(r"[a-z0-9][a-z0-9-]*--[a-z]+[0-9]+(-[a-z0-9]+)*-az[0-9]+--x-s3")


def reference_bucket_ok(name: str) -> bool:
    """S3's bucket naming rules as s3xfs documents them, written independently of naming.py."""
    directory = name.endswith("--x-s3")
    allowed = set(_LOWER_DIGITS + "-" + ("" if directory else "."))
    if not 3 <= len(name) <= 63 or not set(name) <= allowed:
        return False
    if name[0] not in _LOWER_DIGITS or name[-1] not in _LOWER_DIGITS or ".." in name:
        return False
    if re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", name):
        return False
    if name.startswith(("xn--", "sthree-", "amzn-s3-demo-")):
        return False
    if name.endswith(("-s3alias", "--ol-s3", ".mrap", "--table-s3", "--xa-s3")):
        return False
    return not directory or _DIRECTORY_NAME.fullmatch(name) is not None


def reference_prefix(raw: str) -> str | None:
    """The normalised prefix, or None when it cannot be a directory of the mount."""
    if raw == "":
        return ""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in raw) or raw.startswith("/"):
        return None
    prefix = raw if raw.endswith("/") else raw + "/"
    if any(part in ("", ".", "..") for part in prefix[:-1].split("/")) or len(prefix.encode()) > 1024:
        return None
    return prefix


NEAR_BUCKETS = st.one_of(
    st.text(_LOWER_DIGITS + "-.", min_size=0, max_size=70),
    st.builds(lambda base, zone, tail: f"{base}--{zone}{tail}",
              st.text(_LOWER_DIGITS + "-.", max_size=20),
              st.sampled_from(["usw2-az1", "use1-az4", "cnn1-pkx1-az1", "az1", "usw2", "usw2-az", "1usw-az1", "-az1",
                               "usw2-AZ1", "usw2-az1-", "usw2--az1"]),
              st.sampled_from(["--x-s3", "--x-s3 ", "--X-S3", "-x-s3", "--xa-s3", "", "--x-s3/"])),
    st.sampled_from([BUCKET, "xn--a--usw2-az1--x-s3", "sthree-a", "192.168.1.10", "a..b", "a.-b", "Data--usw2-az1--x-s3",
                     "data--usw2-az1--x-s3\u200b", "ａｂｃ", "data--usw2-az1--x-s3" * 4, "a" * 63, "a" * 64]),
    ANY_TEXT,
)


@FAST
@given(NEAR_BUCKETS)
@example("ǅ" * 5)
@example("data--usw2-az1--x-s3\u0131")
def test_bucket_names_are_accepted_exactly_by_the_rules(name: str) -> None:
    try:
        bucket = parse_bucket_name(name)
    except NamingError as exc:
        one_line(str(exc))
        assert not reference_bucket_ok(name), f"{name!r} follows every rule but was refused: {exc}"
        return
    assert reference_bucket_ok(name), f"{name!r} breaks a rule but was accepted"
    assert bucket.name == name and bucket.directory == name.endswith("--x-s3")


@FAST
@given(scheme=st.sampled_from(["", "s3://", "S3://", "s3:/", "s3a://", "https://", "file://", "://", "s3:///"]),
       bucket=st.one_of(st.just(BUCKET), NEAR_BUCKETS),
       slash=st.sampled_from(["", "/"]),
       path=st.one_of(st.sampled_from(["", "a/", "a", "a/b/", "./", "../", "a/../b/", "a//b/", "/a/", "a/./",
                                       "\\040/", "a,b/", "a\nb/", "é/" * 300, "x" * 1030]),
                      st.text(FSTAB_ALPHABET, max_size=30), ANY_TEXT),
       prefix_option=st.one_of(st.none(), st.sampled_from(["", "a", "a/", "b/", "/a", "../", "a//"]), ANY_TEXT))
def test_mount_sources_parse_or_name_the_mistake(scheme: str, bucket: str, slash: str, path: str,
                                                 prefix_option: str | None) -> None:
    text = f"{scheme}{bucket}{slash}{path}"
    try:
        source = parse_mount_source(text, prefix_option)
    except NamingError as exc:
        one_line(str(exc))
        return
    rest = text[len("s3://"):] if text.lower().startswith("s3://") else text
    bucket_text, has_slash, source_path = rest.partition("/")
    assert "://" not in text or text.lower().startswith("s3://")
    assert source.bucket.name == bucket_text and reference_bucket_ok(bucket_text)
    from_source = reference_prefix(source_path) if has_slash else ""
    assert from_source is not None, f"{source_path!r} cannot be a prefix but {text!r} was accepted"
    if prefix_option is None:
        assert source.prefix == from_source
    else:
        assert source.prefix == reference_prefix(prefix_option)
        assert not source_path or source.prefix == from_source


# --------------------------------------------------------------------------------------------
# -o strings: fold() against a model of the documented rules


def model_fold(items: list[str], explicit: dict[str, object], sloppy: bool) -> tuple[dict[str, object], list[str]] | None:
    """What ``-o`` items should do (man/mount.s3xfs.8, docs/CONFIGURATION.md): among the items the
    last wins, an explicit long option wins over -o, empty values and unknown items are mistakes
    (unknown ones ignored with -s). Returns (attributes set, kernel flags) or None for an error."""
    values: dict[str, object] = {}
    kernel: list[str] = []
    for item in (part.strip() for group in items for part in group.split(",")):
        if not item:
            continue
        name, has_value, value = item.partition("=")
        key = name.replace("_", "-")
        if name in MOUNT_TOOL_OPTIONS or item.startswith(("x-", "comment=")):
            continue
        if name in KERNEL_FLAGS and not has_value:
            kernel.append(name)
        elif key in FLAG_OPTIONS and not has_value:
            attr, flag = FLAG_OPTIONS[key]
            values[attr] = flag
        elif key in VALUE_OPTIONS and has_value and value:
            values[key.replace("-", "_")] = value
        elif key in VALUE_OPTIONS or key in FLAG_OPTIONS or name in KERNEL_FLAGS or not sloppy:
            return None
    values.update(explicit)
    return values, kernel


@FAST
@given(groups=st.lists(FSTAB_OPTIONS, min_size=1, max_size=3), sloppy=st.booleans(),
       explicit_region=st.booleans(), explicit_ro=st.booleans())
@example(groups=["metadata-ttl=1,metadata-ttl=60"], sloppy=False, explicit_region=False, explicit_ro=False)
@example(groups=["cache=", "ro"], sloppy=False, explicit_region=False, explicit_ro=False)
@example(groups=["region=us-west-2,region=eu-west-1"], sloppy=False, explicit_region=True, explicit_ro=False)
def test_fold_follows_the_documented_rules(groups: list[str], sloppy: bool, explicit_region: bool,
                                           explicit_ro: bool) -> None:
    argv = ["mount", BUCKET, "/mnt"]
    explicit: dict[str, object] = {}
    if explicit_region:
        argv += ["--region", "ap-south-1"]
        explicit["region"] = "ap-south-1"
    if explicit_ro:
        argv += ["--read-only"]
        explicit["read_only"] = True
    args = build_parser().parse_args(argv)
    expected = model_fold(groups, explicit, sloppy)
    warnings: list[str] = []
    try:
        folded = fold(args, groups, sloppy=sloppy, warn=warnings.append)
    except OptionError as exc:
        one_line(str(exc))
        assert expected is None, f"{groups!r} should fold to {expected}, but: {exc}"
        return
    assert expected is not None, f"{groups!r} should be refused"
    values, kernel = expected
    for attr, value in values.items():
        assert getattr(args, attr) == value, (attr, groups)
    assert folded.kernel_flags == kernel
    for text in warnings:
        one_line(text)


def test_an_fstab_value_given_twice_takes_the_last_as_mount8_appends_command_line_options(workdir: Path) -> None:
    """mount(8) appends `mount -o ...` options to the fstab line's, so the later value is the user's override."""
    args = build_parser().parse_args(["mount", BUCKET, str(workdir / "mnt"), "-o",
                                      "metadata-ttl=1,ro,region=us-west-2", "-o", "metadata-ttl=60,rw"])
    config = mount_config(args)
    assert config.metadata_ttl == 60 and config.read_only is False and config.region == "us-west-2"


@pytest.mark.parametrize("argv", [
    ["-o", "cache="], ["-o", "staging-dir="], ["-o", "region="], ["-o", "uid="], ["-o", "endpoint-url="],
    ["--cache", ""], ["--region", ""], ["--staging-dir", ""], ["--uid", ""], ["--log-file", ""],
])
def test_an_empty_value_is_a_mistake_not_a_silent_default(workdir: Path, argv: list[str]) -> None:
    """`cache=` must not make the current directory the cache, nor `region=` mean 'guess'."""
    with contextlib.chdir(workdir):
        outcome, _ = s3xfs_mount([BUCKET, "mnt", *argv])
    assert outcome == "error"


# --------------------------------------------------------------------------------------------
# s3xfs mount: every option fuzzed, through argparse and mount_config


@st.composite
def mount_argvs(draw: st.DrawFn) -> list[str]:
    argv: list[str] = []
    source = draw(st.one_of(st.just(BUCKET), st.just(f"s3://{BUCKET}/p/"), NEAR_BUCKETS))
    mountpoint = draw(st.one_of(st.just("mnt"), st.sampled_from(["a-file", "missing", "x" * 300, "/proc", "/",
                                                                 "mnt/" + "y/" * 3000, "", "mnt\n", "./mnt/"]),
                                ANY_TEXT))
    argv += ["--", source, mountpoint] if draw(st.booleans()) else [source, mountpoint]
    options: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            options.append("--" + draw(st.sampled_from(LONG_FLAGS)))
        elif choice == 1:
            options += ["-o", draw(FSTAB_OPTIONS)]
        else:
            key = draw(st.sampled_from(LONG_VALUE_OPTIONS))
            options.append(f"--{key}={draw(value_for(key))}")
    return options + argv if "--" in argv else argv + options


@FAST
@given(mount_argvs())
@example(["--uid=²", BUCKET, "mnt"])
@example(["--max-threads=٣", BUCKET, "mnt"])
@example([BUCKET, "x" * 300])
@example([BUCKET, "mnt", "--cache=a-file/sub"])
@example([BUCKET, "mnt", "--cache=" + "c" * 300])
@example([BUCKET, "mnt", "-o", "cache=" + "c/" * 3000])
@example([BUCKET, "mnt", "--cache=--"])
@example([BUCKET, "mnt", "--cache=loop"])
@example([BUCKET, "loop"])
@example([BUCKET, "missing\n\x1b[31m"])
@example([BUCKET, "mnt", "-o=--"])
def test_s3xfs_mount_arguments_give_a_config_or_one_line(workdir: Path, argv: list[str]) -> None:
    with contextlib.chdir(workdir):
        outcome, config = s3xfs_mount(argv)
    if config is not None:
        assert outcome == "ok" and config.mountpoint.is_dir() and not is_mounted(config.mountpoint)


# --------------------------------------------------------------------------------------------
# mount.s3xfs: argv as mount(8) and systemd build it


class NoMount:
    """Stands in for the daemon: records that a mount would have been attempted, and fails it."""

    def __init__(self) -> None:
        self.calls: list[MountConfig] = []

    def __call__(self, config: MountConfig, program: str = "s3xfs") -> int:
        self.calls.append(config)
        return 1


@st.composite
def helper_argvs(draw: st.DrawFn) -> list[str]:
    source = draw(st.one_of(st.just(BUCKET), NEAR_BUCKETS, st.text(FSTAB_ALPHABET, max_size=20)))
    directory = draw(st.one_of(st.just("mnt"), st.sampled_from(["a-file", "missing", "-o", "--"]), ANY_TEXT))
    argv = [source, directory]
    for _ in range(draw(st.integers(0, 4))):
        flag = draw(st.sampled_from(["-s", "-f", "-n", "-v", "-t", "-N", "-o", "-o", "-o", "-x", "--bogus", "-sfnv"]))
        if flag in ("-t", "-N", "-o"):
            value = draw(FSTAB_OPTIONS) if flag == "-o" else draw(st.one_of(
                st.sampled_from(["s3xfs", "fuse.s3xfs", "fuse", "nfs", "/proc/1/ns/mnt"]), ANY_TEXT))
            argv += [f"{flag}={value}"] if draw(st.booleans()) else [flag, value]
        else:
            argv.append(flag)
    return draw(st.permutations(argv)) if draw(st.booleans()) else argv


@FAST
@given(argv=helper_argvs())
@example(argv=[BUCKET, "mnt", "-o", "ro,colour=blue"])
@example(argv=[BUCKET, "mnt", "-N", "/proc/1/ns/mnt"])
@example(argv=[BUCKET, "mnt", "-t", "nfs"])
@example(argv=[BUCKET, "mnt", "-o", "uid=²"])
@example(argv=[BUCKET, "mnt", "-o", "ro,region=us-west-2,endpoint-url=http://127.0.0.1:9"])
@example(argv=[BUCKET, "mnt", "-f", "-o", "ro,metadata_ttl=indefinite"])
@example(argv=[BUCKET, "mnt", "-o=--"])
def test_mount_helper_exits_0_1_or_32_with_one_line(workdir: Path, argv: list[str],
                                                     monkeypatch_module: pytest.MonkeyPatch) -> None:
    no_mount = NoMount()
    monkeypatch_module.setattr("s3xfs.daemon.run", no_mount)
    with contextlib.chdir(workdir), captured_stderr() as err, contextlib.redirect_stdout(io.StringIO()):
        try:
            code = mount_helper.main(argv)
        except SystemExit as exc:  # only --help and --version leave this way
            assert exc.code == 0 and {"-h", "--help", "--version"} & set(argv), (exc.code, err.getvalue())
            return
    text = err.getvalue()
    assert "Traceback" not in text
    lines = text.splitlines()
    for line in lines:  # every line is the helper's own; before the error, only -s warnings
        assert line.startswith("mount.s3xfs: "), line
    for line in lines[:-1]:
        assert line.startswith("mount.s3xfs: ignoring unknown mount option "), line
    if code == mount_helper.EXIT_USAGE:
        assert lines and not no_mount.calls
    elif code == 0:
        assert "-f" in argv or any(a.startswith("-") and not a.startswith("--") and "f" in a for a in argv)
        assert not no_mount.calls
    else:
        assert code == mount_helper.EXIT_MOUNT_FAILED and len(no_mount.calls) == 1


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    """A monkeypatch hypothesis can share across examples (function-scoped fixtures are reset per test, not per example)."""
    with pytest.MonkeyPatch.context() as patch:
        yield patch


# --------------------------------------------------------------------------------------------
# Real processes: exit codes, stderr and the mount table


def run_tool(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


HELPER = [str(Path(sys.executable).parent / "mount.s3xfs")]  # the console script mount(8) runs
S3XFS = [sys.executable, "-m", "s3xfs.cli"]

NASTY_HELPER_RUNS = [
    ([BUCKET, "mnt", "-o", "ro,cache=,x-systemd.automount"], 1),
    ([BUCKET, "mnt", "-o", "prefix=a\\040b/../c,ro"], 1),
    ([BUCKET, "mnt", "-o", "uid=²,ro"], 1),
    ([BUCKET, "mnt", "-o", "metadata-ttl=" + "9" * 50_000], 1),
    ([BUCKET, "mnt", "-o", "ro,\x01\x7f=\u202e,_netdev"], 1),
    ([f"s3://{BUCKET}/a//b/", "mnt", "-o", "ro"], 1),
    (["Data--usw2-az1--x-s3", "mnt"], 1),
    ([BUCKET, "x" * 300, "-o", "ro"], 1),
    ([BUCKET, "mnt", "-N", "/proc/1/ns/mnt"], 1),
    ([BUCKET, "mnt", "-o", "ro", "-t", "nfs"], 1),
    # Everything well formed, but the endpoint is not there: the mount fails (32) after a clear line.
    ([BUCKET, "mnt", "-o", "ro,endpoint-url=http://127.0.0.1:9,region=us-west-2"], 32),
]


@pytest.mark.parametrize("argv, status", NASTY_HELPER_RUNS)
def test_mount_helper_process_fails_cleanly_and_mounts_nothing(workdir: Path, argv: list[str], status: int) -> None:
    result = run_tool(HELPER + argv, workdir, env=dict(os.environ, AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY="x"))
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    one_line(result.stderr)
    assert result.stderr.startswith("mount.s3xfs: ")
    assert not is_mounted(workdir / "mnt")


NASTY_S3XFS_RUNS = [
    [BUCKET, "mnt", "--uid", "٣"],
    [BUCKET, "mnt", "--cache", ""],
    [BUCKET, "mnt", "--part-size", "1e400"],
    [BUCKET, "mnt", "--metadata-ttl", "nan"],
    [BUCKET, "mnt", "-o", "region=US-WEST-2,\\040"],
    [BUCKET, "mnt", "--endpoint-url", "http://[::1"],
    [BUCKET, "y" * 300],
    ["s3://" + "b" * 5000, "mnt"],
    [BUCKET + "/\t/", "mnt"],
]


@pytest.mark.parametrize("argv", NASTY_S3XFS_RUNS)
def test_s3xfs_mount_process_fails_cleanly_and_mounts_nothing(workdir: Path, argv: list[str]) -> None:
    result = run_tool(S3XFS + ["mount", *argv, "--foreground"], workdir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    one_line(result.stderr)
    assert result.stderr.startswith("s3xfs: ")
    assert not is_mounted(workdir / "mnt")


def test_s3xfs_argparse_mistakes_exit_2_without_a_traceback(workdir: Path) -> None:
    result = run_tool(S3XFS + ["mount", BUCKET, "mnt", "--metadata-ttl"], workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("s3xfs mount: error: ")
    assert not is_mounted(workdir / "mnt")
