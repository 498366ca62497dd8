"""``s3xfs``: mount, unmount, cache, warm, stats, staging, install-helper, version. Parses and checks everything
before the daemon starts, so that mistakes get a one-line reason and a non-zero exit instead of a traceback."""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from . import __version__
from .client.naming import NamingError, check_endpoint_override, check_region, parse_mount_source, region_for
from .config import INDEFINITE, MountConfig, default_staging_dir
from .logs import LEVELS as LOG_LEVELS
from .logs import parse_debug_modules
from .mount_options import VALUE_OPTIONS, OptionError, fold
from .mount_table import mounted_on, read_mountinfo

SIZE_SUFFIXES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
MIN_PART_SIZE = 1024 * 1024  # below this, per-request overhead dominates reads
MAX_PART_SIZE = 5 * 1024**3  # S3's part and PUT limit
MIN_CACHE_BLOCK = 64 * 1024  # below this, per-block bookkeeping costs more than the bytes
MAX_CACHE_BLOCK = 16 * 1024 * 1024  # above this, one random read caches far more than it asked for
# Seconds `s3xfs unmount` waits for the daemon to exit: its own unmount waits up to 60 s for the
# cache's block writer to store its backlog, and 30 s more for the child to end.
UNMOUNT_WAIT = 120.0


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one line."""

    def __str__(self) -> str:
        # Paths and values are quoted as given: a newline or an escape sequence in them must not
        # split the message or reach the terminal raw.
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in super().__str__())


def _seconds(text: str, what: str, allow_indefinite: bool) -> float:
    if allow_indefinite and text.lower() in ("indefinite", "forever", "inf"):
        return INDEFINITE
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        extra = " or 'indefinite'" if allow_indefinite else ""
        raise UsageError(f"{what} must be a number of seconds (0 or more){extra}, not {text!r}")
    return value


def _mode(text: str, what: str) -> int:
    if not re.fullmatch(r"0?[0-7]{3,4}", text):
        raise UsageError(f"{what} must be an octal permission like 644 or 0755, not {text!r}")
    return int(text, 8)


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also says yes to '²' or '٣', which int() then refuses or misreads."""
    return text.isascii() and text.isdigit()


def _id(text: str, what: str) -> int:
    if not _digits(text) or int(text) > 2**32 - 2:
        raise UsageError(f"{what} must be a numeric id, not {text!r}")
    return int(text)


def _size(text: str, what: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)(i?[bB])?", text.strip())
    if not match:
        raise UsageError(f"{what} must be a size like 8388608, 8M or 8MiB, not {text!r}")
    return int(match.group(1)) * SIZE_SUFFIXES[match.group(2).lower()]


def _positive_int(text: str, what: str, low: int, high: int) -> int:
    if not _digits(text) or not low <= int(text) <= high:
        raise UsageError(f"{what} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3xfs", description="Mount an S3 Express One Zone directory bucket.")
    parser.add_argument("--version", action="version", version=f"s3xfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    mount = sub.add_parser("mount", help="mount a bucket", description="Mount BUCKET[/PREFIX/] (or s3://BUCKET/PREFIX/) at MOUNTPOINT.")
    mount.add_argument("source", metavar="BUCKET[/PREFIX/]")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT")
    mount.add_argument("-f", "--foreground", action="store_true", default=None, help="stay in the foreground, log to stderr")
    mount.add_argument("--read-only", action="store_true", default=None,
                       help="mount read-only: only ReadOnly sessions, every write is EROFS")
    mount.add_argument("--region", metavar="REGION", help="the bucket's region (default: from the zone id of the bucket name)")
    mount.add_argument("--endpoint-url", metavar="URL", help="talk to this endpoint instead of AWS (e.g. s3xfs-localzone)")
    mount.add_argument("--profile", metavar="NAME", help="AWS profile for credentials (default: the standard credential chain)")
    mount.add_argument("--prefix", metavar="PREFIX", help="mount only keys under this prefix")
    mount.add_argument("--uid", metavar="UID", help="owner of files and directories (default: yours)")
    mount.add_argument("--gid", metavar="GID", help="group of files and directories (default: yours)")
    mount.add_argument("--file-mode", metavar="MODE", help="permission bits of files (default: 644)")
    mount.add_argument("--dir-mode", metavar="MODE", help="permission bits of directories (default: 755)")
    mount.add_argument("--allow-other", action="store_true", default=None, help="let other users access the mount")
    mount.add_argument("--allow-root", action="store_true", default=None, help="let root access the mount")
    mount.add_argument("--metadata-ttl", metavar="SECONDS", help="seconds to trust cached metadata, or 'indefinite' (default: 1)")
    mount.add_argument("--negative-ttl", metavar="SECONDS", help="seconds to trust 'no such file', or 'indefinite' (default: 1)")
    mount.add_argument("--max-cached-entries", metavar="N", help="file names with their attributes kept in memory "
                                                                 "once the kernel forgot them (default: 500000)")
    mount.add_argument("--max-threads", metavar="N", help="concurrent S3 requests (default: 32)")
    mount.add_argument("--part-size", metavar="SIZE", help="size of ranged GETs and of upload parts, 1M to 5G "
                                                           "(uploads use at least 5M), e.g. 8M (default: 8M)")
    mount.add_argument("--staging-dir", metavar="DIR", help="where files written out of order are kept until uploaded, and failed "
                                             "uploads are rescued (default: /var/tmp/s3xfs-UID)")
    mount.add_argument("--cache", metavar="DIR", help="keep data blocks and metadata in this directory, across "
                                                      "mounts (created 0700; default: no disk cache)")
    mount.add_argument("--max-cache-size", metavar="SIZE", help="cap of the cache directory, e.g. 20G "
                                                                "(at least 16M; default: 10%% of the free space there, at least 256M)")
    mount.add_argument("--cache-block-size", metavar="SIZE", help="size of cached data blocks, a power of two "
                                                                  "from 64K to 16M (default: 1M)")
    mount.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING (default) or ERROR")
    mount.add_argument("--log-file", metavar="PATH", help="log to this file (default: stderr in the foreground, "
                                                          "the journal or syslog when detached)")
    mount.add_argument("--debug", metavar="MODULE[:MODULE...]", help="log these modules at DEBUG whatever "
                                                                     "--log-level says, e.g. s3xfs.client:botocore")
    mount.add_argument("-o", dest="o", action="append", default=[], metavar="KEY[=VALUE],...",
                       help="the same options, fstab style: ro, rw, region=..., metadata-ttl=..., ...")
    unmount = sub.add_parser("unmount", help="unmount a mounted bucket")
    unmount.add_argument("mountpoint", metavar="MOUNTPOINT")
    cache = sub.add_parser("cache", help="inspect or clear a cache directory",
                           description="Inspect or clear a --cache directory (also while mounts use it).")
    actions = cache.add_subparsers(dest="action", required=True)
    info = actions.add_parser("info", help="what the cache holds, per bucket")
    info.add_argument("directory", metavar="DIR")
    clear = actions.add_parser("clear", help="drop cached data and metadata",
                               description="Drop the entries of the named buckets (any endpoint), or all of them.")
    clear.add_argument("directory", metavar="DIR")
    clear.add_argument("sources", nargs="*", metavar="BUCKET[/PREFIX/]", help="whose entries to drop")
    clear.add_argument("--all", action="store_true", help="drop every entry of every bucket")
    from .warm import add_arguments as warm_arguments

    warm = sub.add_parser("warm", help="fill a mount's --cache by reading files through it",
                          description="Read files and directories (recursively) through their s3xfs mount, so "
                                      "its --cache holds them; files it holds already are skipped.")
    warm_arguments(warm)
    from .stats import add_arguments as stats_arguments

    stats = sub.add_parser("stats", help="show a mount's live counters",
                           description="Show the counters of the daemon serving MOUNTPOINT: requests, bytes, "
                                       "cache hits, sessions, errors (its owner and root only).")
    stats_arguments(stats)
    from .staging_cli import add_arguments as staging_arguments

    staging = sub.add_parser("staging", help="find and recover what a mount left in its staging directory",
                             description="List, restore or discard the files a mount's --staging-dir holds: "
                                         "files being written at a crash, data of failed uploads.")
    staging_arguments(staging)
    helper = sub.add_parser("install-helper", help="link mount.s3xfs where mount(8) looks for it",
                            description="Link this installation's mount.s3xfs into DIR (default /sbin), so that "
                                        "mount -t s3xfs, fstab lines and systemd .mount units work.")
    helper.add_argument("--directory", metavar="DIR", default="/sbin", help="where to link it (default: /sbin)")
    helper.add_argument("--remove", action="store_true", help="remove the link instead")
    helper.add_argument("--force", action="store_true", help="replace a mount.s3xfs that is not this installation's")
    return parser


def mount_config(args: argparse.Namespace, *, sloppy: bool = False, program: str = "s3xfs") -> MountConfig:
    """Check every mount option and build the config; ``sloppy`` (mount(8)'s -s) ignores unknown -o items."""
    if not all(isinstance(group, str) for group in args.o):  # argparse makes `-o=--` a list
        raise UsageError("-o needs a value: -o KEY[=VALUE],...")
    try:
        folded = fold(args, args.o, sloppy=sloppy, warn=lambda text: print(f"{program}: {text}", file=sys.stderr))
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    for key in sorted(VALUE_OPTIONS):  # argparse takes '' as a value (and `--key=--` as []): never "the default"
        value = getattr(args, key.replace("-", "_"), None)
        if value is not None and (not isinstance(value, str) or value == ""):
            raise UsageError(f"--{key} needs a value, not an empty one")
    try:
        source = parse_mount_source(args.source, args.prefix)
        region = check_region(args.region) if args.region else region_for(source.bucket, None)
        endpoint = check_endpoint_override(args.endpoint_url) if args.endpoint_url else None
    except NamingError as exc:
        raise UsageError(str(exc).rstrip(".")) from None
    mountpoint = Path(args.mountpoint).absolute()
    try:
        info = mountpoint.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(f"mount point {mountpoint} does not exist") from None
    except OSError as exc:  # a name too long, a loop of links, a directory we may not search
        raise UsageError(f"mount point {mountpoint}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"mount point {mountpoint} is not a directory")
    # From the mount table: a stat() could trigger the systemd .automount that waits for this mount.
    top = mounted_on(os.path.realpath(mountpoint), read_mountinfo())
    if top is not None and top.fstype != "autofs":  # autofs there: systemd waits for us, not busy
        raise UsageError(f"mount point {mountpoint} is busy: something is already mounted there")
    level = (args.log_level or MountConfig.log_level).upper()
    if level not in LOG_LEVELS:
        raise UsageError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {args.log_level!r}")
    try:
        debug_modules = parse_debug_modules(args.debug)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    part_size = _size(args.part_size, "--part-size") if args.part_size else MountConfig.part_size
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise UsageError(f"--part-size must be between 1 MiB and 5 GiB, not {args.part_size}")
    cache_dir, max_cache_size, block_size = _cache_options(args)
    return MountConfig(
        bucket=source.bucket.name, prefix=source.prefix, mountpoint=mountpoint, region=region,
        read_only=bool(args.read_only), endpoint_url=endpoint, profile=args.profile, foreground=bool(args.foreground),
        uid=_id(args.uid, "--uid") if args.uid else os.getuid(), gid=_id(args.gid, "--gid") if args.gid else os.getgid(),
        file_mode=_mode(args.file_mode, "--file-mode") if args.file_mode else MountConfig.file_mode,
        dir_mode=_mode(args.dir_mode, "--dir-mode") if args.dir_mode else MountConfig.dir_mode,
        allow_other=bool(args.allow_other), allow_root=bool(args.allow_root),
        metadata_ttl=_seconds(args.metadata_ttl, "--metadata-ttl", True) if args.metadata_ttl else MountConfig.metadata_ttl,
        negative_ttl=_seconds(args.negative_ttl, "--negative-ttl", True) if args.negative_ttl else MountConfig.negative_ttl,
        max_threads=_positive_int(args.max_threads, "--max-threads", 1, 1024) if args.max_threads else MountConfig.max_threads,
        max_cached_entries=(_positive_int(args.max_cached_entries, "--max-cached-entries", 1, 1_000_000_000)
                            if args.max_cached_entries else MountConfig.max_cached_entries),
        part_size=part_size, staging_dir=Path(args.staging_dir).absolute() if args.staging_dir else default_staging_dir(),
        cache_dir=cache_dir, max_cache_size=max_cache_size, cache_block_size=block_size,
        log_level=level, log_file=Path(args.log_file).absolute() if args.log_file else None,
        debug_modules=debug_modules, kernel_flags=tuple(folded.kernel_flags),
        fsname=_fsname(args.source),
    )


def _fsname(source: str) -> str:
    """The mount table's SOURCE: the source as given, so that mount(8) recognises an fstab line as mounted
    (``mount -a`` twice mounts once); commas and backslashes escaped for the FUSE option string."""
    return source.replace("\\", "\\\\").replace(",", "\\,")


def _cache_options(args: argparse.Namespace) -> tuple[Path | None, int | None, int]:
    """--cache, --max-cache-size, --cache-block-size, checked (the directory is created 0700 here)."""
    from .core.cache.store import MIN_SIZE, CacheDirError, prepare_directory

    if args.cache is None:
        for name in ("max_cache_size", "cache_block_size"):
            if getattr(args, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')} needs --cache DIR")
        return None, None, MountConfig.cache_block_size
    size = _size(args.max_cache_size, "--max-cache-size") if args.max_cache_size else None
    if size is not None and size < MIN_SIZE:
        raise UsageError(f"--max-cache-size must be at least {MIN_SIZE >> 20}M, not {args.max_cache_size}")
    block = _size(args.cache_block_size, "--cache-block-size") if args.cache_block_size else MountConfig.cache_block_size
    if not MIN_CACHE_BLOCK <= block <= MAX_CACHE_BLOCK or block & (block - 1):
        raise UsageError(f"--cache-block-size must be a power of two from 64K to 16M, not {args.cache_block_size}")
    try:
        directory = prepare_directory(Path(args.cache))
    except CacheDirError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # e.g. an existing directory we cannot list
        raise UsageError(f"cannot use cache directory {args.cache}: {exc.strerror}") from None
    return directory, size, block


def cache_command(args: argparse.Namespace) -> int:
    """``s3xfs cache info|clear DIR``: works on the directory alone (no credentials, no endpoint)."""
    from .core.cache import store

    directory = Path(args.directory).absolute()
    try:
        known = store.namespaces(directory)
        if args.action == "info":
            print(f"{directory}: {store.volume(directory) / 2**20:.1f} MiB used")
            for namespace_id, facts in sorted(known.items(), key=lambda item: str(item[1].get("bucket"))):
                print(f"  {facts.get('bucket')}/{facts.get('prefix', '')} at {facts.get('endpoint')}: "
                      f"{facts['entries']} entries, {facts['bytes'] / 2**20:.1f} MiB ({namespace_id})")
            return 0
        if args.all == bool(args.sources):
            raise UsageError("name the BUCKET[/PREFIX/] whose entries to drop, or --all")
        if args.all:
            removed = store.clear(directory)
        else:
            wanted = set()
            for text in args.sources:
                try:
                    source = parse_mount_source(text)
                except NamingError as exc:
                    raise UsageError(str(exc).rstrip(".")) from None
                wanted.add((source.bucket.name, source.prefix))
            ids = [namespace_id for namespace_id, facts in known.items()
                   if (facts.get("bucket"), facts.get("prefix", "")) in wanted]
            if not ids:
                raise UsageError(f"{directory} holds nothing of {', '.join(args.sources)}")
            removed = store.clear(directory, ids)
        print(f"s3xfs: dropped {removed} cache entries from {directory}")
        return 0
    except store.CacheDirError as exc:
        raise UsageError(str(exc)) from None


def unmount(mountpoint: str) -> int:
    """Unmount, then wait for the daemon to finish (what its caches hold stored, its block writer
    ended), so that a script may remove the cache directory or mount again right after."""
    path = Path(mountpoint).absolute()
    if not os.path.ismount(path):
        print(f"s3xfs: {path} is not a mount point", file=sys.stderr)
        return 1
    daemon = _daemon_of(path)
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    command = [tool, "-u", str(path)] if tool else ["umount", str(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        print(f"s3xfs: cannot unmount {path}: {reason[-1] if reason else 'unknown error'}", file=sys.stderr)
        return 1
    if daemon is not None:
        _wait_for_exit(*daemon)
    return 0


def _daemon_of(path: Path) -> tuple[int, str] | None:
    """The pid and start time of the daemon serving ``path``, if it answers us; else None (an
    older daemon, another user's mount, or no answer: the unmount then does not wait)."""
    from .stats import StatsError, ask, find_mount

    try:
        pid = ask(find_mount(str(path)), timeout=2.0)["identity"]["pid"]
        return int(pid), _stat_fields(int(pid))[19]
    except (StatsError, OSError, KeyError, TypeError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [0] is the state, [19] the start time (field 22),
    which tells a process apart from a later one given its pid."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _wait_for_exit(pid: int, started: str) -> None:
    began = time.monotonic()
    said = False
    while time.monotonic() - began < UNMOUNT_WAIT:
        try:
            fields = _stat_fields(pid)
        except OSError:
            return  # gone
        if fields[0] == "Z" or fields[19] != started:
            return  # exited (its parent has yet to reap it), or the pid is another process's now
        if not said and time.monotonic() - began > 2:
            print(f"s3xfs: unmounted; waiting for the daemon (pid {pid}) to store what its caches hold",
                  file=sys.stderr)
            said = True
        time.sleep(0.05)
    print(f"s3xfs: unmounted; the daemon (pid {pid}) is still finishing after {UNMOUNT_WAIT:.0f} s "
          "and goes on in the background", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "unmount":
        return unmount(args.mountpoint)
    if args.command == "stats":
        from .stats import stats_command

        return stats_command(args)
    try:
        if args.command == "cache":
            return cache_command(args)
        if args.command == "install-helper":
            from .mount_helper import install

            print(f"s3xfs: {install(Path(args.directory), remove=args.remove, force=args.force)}")
            return 0
        if args.command == "warm":
            from .warm import warm_command

            return warm_command(args)
        if args.command == "staging":
            from .staging_cli import staging_command

            return staging_command(args)
        config = mount_config(args)
    except UsageError as exc:
        print(f"s3xfs: {exc}", file=sys.stderr)
        return 2
    from .daemon import run  # imports pyfuse3/boto3: only once the arguments are known good

    return run(config)


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: other modules (warm, mount_helper) raise the
    # UsageError of `s3xfs.cli`, which must be the class main() catches.
    from s3xfs.cli import main as imported_main

    raise SystemExit(imported_main())
