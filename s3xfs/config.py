"""All settings of a mount in one frozen dataclass; each default says why it is what it is."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

INDEFINITE = math.inf


def default_staging_dir() -> Path:
    """Per user, so two users' mounts never share (or fight over the mode of) one directory."""
    return Path(f"/var/tmp/s3xfs-{os.getuid()}")


@dataclass(frozen=True)
class MountConfig:
    bucket: str
    prefix: str
    mountpoint: Path
    region: str
    read_only: bool = False
    endpoint_url: str | None = None  # None: AWS's zonal endpoint for the bucket
    profile: str | None = None  # None: the standard boto3 credential chain
    foreground: bool = False
    uid: int = os.getuid()  # files belong to whoever mounted, like Mountpoint and s3fs
    gid: int = os.getgid()
    file_mode: int = 0o644  # S3 has no per-object permissions: a conventional file mode
    dir_mode: int = 0o755
    allow_other: bool = False  # FUSE's safe default: only the mounting user sees the files
    allow_root: bool = False
    # Attributes, entries and listings are trusted this long (seconds) before asking the bucket
    # again: 1 s keeps close-to-open consistency with other writers within a second while
    # sparing `ls -l`/`stat` storms a request per file (Mountpoint's default too).
    metadata_ttl: float = 1.0
    negative_ttl: float = 1.0  # "no such file" trusted this long: repeated failed stats are free
    # File names with their attributes kept in memory once the kernel has forgotten them (~600
    # bytes each): a dataset of half a million files stays wholly cached, and what a walk over
    # millions of files leaves in the daemon stays under ~300 MiB (directories are not counted).
    max_cached_entries: int = 500_000
    max_threads: int = 32  # concurrent S3 requests (worker threads and pooled connections)
    part_size: int = 8 * 1024 * 1024  # ranged GET size: large enough to amortise a request, small enough to start fast
    read_buffer: int = 256 * 1024 * 1024  # all read-ahead buffers of the mount together
    # Out-of-order writes are staged here, and the data of failed uploads is rescued here: on disk,
    # not in /tmp (often RAM, often wiped at boot) so a crash or a failed upload loses nothing.
    staging_dir: Path = field(default_factory=default_staging_dir)
    # --cache: off by default (a disk cache is a decision about someone's disk). With it, data blocks
    # and metadata are kept there across mounts; the cap defaults to a share of the free space
    # (core/cache/store.py: DEFAULT_SHARE, 10%) measured at mount time.
    cache_dir: Path | None = None
    max_cache_size: int | None = None  # None: the default share of free disk
    # Cache blocks of 1 MiB: the size of the kernel's largest FUSE read here, a divisor of every part
    # size, and small enough that a random 256 KiB read caches little it did not ask for.
    cache_block_size: int = 1024 * 1024
    read_ahead_kb: int = 1024  # kernel read-ahead for the mount: lets the kernel send 1 MiB reads (FUSE max_pages 256)
    fsname: str = "s3xfs"  # the SOURCE column of the mount table; cli sets the source as given
    # WARNING: a healthy mount logs nothing; failures the user sees (EIO, refused uploads) always are.
    log_level: str = "WARNING"
    log_file: Path | None = None  # None: stderr in the foreground, the journal or syslog when detached
    debug_modules: tuple[str, ...] = ()  # loggers at DEBUG whatever log_level says (--debug)
    kernel_flags: tuple[str, ...] = ()  # -o nosuid, noexec, noatime...: passed on to the FUSE mount
