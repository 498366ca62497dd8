"""``s3xfs warm PATH...``: fill the caches of an s3xfs mount by reading files through it.

Reading through the mount (rather than talking to the bucket) is what makes the daemon store the
blocks in its ``--cache`` directory, and the directory walk fills its metadata cache, so the next
job (or the next mount) finds both on disk. The phases:

1. walk the paths (``os.scandir``, one stat per file) to know what is asked for;
2. ask the mount how much of each file its cache already holds (``user.s3xfs.cached``), so a run
   after an interruption reads only what is missing;
3. plan against the cap (``user.s3xfs.cache_limit`` of the mount root): warming more than fits
   would only evict what was just warmed, so files beyond it are left out, in walk order;
4. read, ``--jobs`` files at a time, 1 MiB at a time into one buffer per thread. The kernel's page
   cache is dropped for each file before (or a cached page would never reach the daemon) and after
   (warming must not fill the page cache). No O_DIRECT: the daemon deliberately bypasses its disk
   cache for O_DIRECT handles;
5. verify: the daemon writes fetched blocks to disk behind the reads, so wait until the cache holds
   every file read before saying so (exit 0 means "all of it is in the cache").

Exit status: 0 everything requested is cached, 1 something was left out, failed or is not in the
cache, 2 a usage mistake (one line, no traceback), 130 interrupted (Ctrl-C; a new run resumes).
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from .cli import UsageError, _positive_int, _seconds
from .mount_table import FSTYPE, mount_of, parse_mountinfo, read_mountinfo
from .progress import Progress, human_bytes, human_duration

T = TypeVar("T")

XATTR_LIMIT = "user.s3xfs.cache_limit"  # answered by the mount root only with --cache
XATTR_CACHED = "user.s3xfs.cached"  # bytes of the file's current version in the cache
CHUNK = 1 << 20  # the kernel's largest FUSE read on these mounts: fewer, fuller requests
DEFAULT_JOBS = 8  # enough parallel files to keep the daemon's ranged GETs busy on small files
DEFAULT_INTERVAL = 10.0  # seconds between progress lines when not on a terminal
TICK = 0.1  # seconds between progress samples in the main thread
STOP_GRACE = 10.0  # seconds to let readers finish their current chunk after Ctrl-C
SETTLE_TIMEOUT = 10.0  # seconds without progress before a file read but not in the cache is reported
# (the daemon's write queue holds at most 64 MiB: it drains in well under that on any disk)
SETTLE_POLL = 0.2  # seconds between checks while the daemon writes the last blocks
PREFIX = "s3xfs warm: "


def headroom(limit: int) -> int:
    """Bytes of the cap not planned for data: the cache's database, block headers and the metadata
    entries the walk itself stores also count against it, and overshooting would evict warmed blocks."""
    return max(1 << 20, limit // 100)


# --- finding the mount ------------------------------------------------------------------------------


@dataclass
class Mount:
    """An s3xfs mount with a disk cache, and the budget of this run against its cap."""

    root: str
    limit: int
    budget: int = 0
    full: bool = False  # a file did not fit: the rest of this mount's files are left out


def find_mount(path: str, mounts: dict[str, Mount], mountinfo: str | None = None) -> Mount:
    """The s3xfs mount holding ``path`` (which must exist); UsageError for anything else."""
    entry = mount_of(path, read_mountinfo() if mountinfo is None else parse_mountinfo(mountinfo))
    if entry is None or entry.fstype != FSTYPE:
        where = f" (it is on {entry.mountpoint}, type {entry.fstype})" if entry is not None else ""
        raise UsageError(f"{path} is not inside an s3xfs mount{where}")
    if entry.mountpoint in mounts:
        return mounts[entry.mountpoint]
    try:
        limit = int(os.getxattr(entry.mountpoint, XATTR_LIMIT))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            raise UsageError(f"the mount at {entry.mountpoint} has no --cache: there is nothing to warm "
                             "(remount it with --cache DIR)") from None
        raise UsageError(f"cannot ask the mount at {entry.mountpoint} for its cache: {exc.strerror}") from None
    except ValueError:
        raise UsageError(f"the mount at {entry.mountpoint} reports no usable cache size") from None
    mounts[entry.mountpoint] = Mount(entry.mountpoint, limit)
    return mounts[entry.mountpoint]


# --- what to read ---------------------------------------------------------------------------------


@dataclass
class Item:
    path: str
    size: int
    mount: Mount
    cached: int = 0  # bytes of it the cache held when asked
    cacheable: bool = True  # False: the mount cannot cache it (written here, not in the bucket yet)
    failed: bool = False  # asking the cache failed (reported): neither read nor counted again

    @property
    def complete(self) -> bool:
        return self.cached >= self.size


@dataclass
class Plan:
    read: list[Item] = field(default_factory=list)
    already: list[Item] = field(default_factory=list)
    left_out: list[Item] = field(default_factory=list)
    uncacheable: list[Item] = field(default_factory=list)


def make_plan(items: list[Item]) -> Plan:
    """Split the walked files: already cached, to read, left out because the cap is reached.

    Per mount, what these files already hold in the cache stays there; of the rest, files are
    taken in walk order while the bytes they still miss fit in the cap (less :func:`headroom`).
    """
    plan = Plan()
    items = [item for item in items if not item.failed]
    for mount in {id(item.mount): item.mount for item in items}.values():
        held = sum(min(item.cached, item.size) for item in items if item.mount is mount and item.cacheable)
        mount.budget = mount.limit - headroom(mount.limit) - held
        mount.full = False
    for item in items:
        if not item.cacheable:
            plan.uncacheable.append(item)
        elif item.complete:
            plan.already.append(item)
        else:
            missing = item.size - item.cached
            if not item.mount.full and missing <= item.mount.budget:
                item.mount.budget -= missing
                plan.read.append(item)
            else:
                item.mount.full = True
                plan.left_out.append(item)
    return plan


def cached_bytes(path: str) -> int | None:
    """``user.s3xfs.cached`` of a file; None when the mount cannot cache it (ENODATA)."""
    try:
        return int(os.getxattr(path, XATTR_CACHED))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise
    except ValueError:
        return 0


# --- the command ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """What happened, for the summary and the exit status."""

    found: int = 0
    found_bytes: int = 0
    plan: Plan = field(default_factory=Plan)
    read_files: int = 0
    failed: list[str] = field(default_factory=list)
    not_kept: list[Item] = field(default_factory=list)
    read_seconds: float = 0.0
    interrupted: str | None = None  # the phase Ctrl-C stopped
    lock: threading.Lock = field(default_factory=threading.Lock)


class Warmer:
    def __init__(self, paths: list[str], jobs: int, progress: Progress, *, mountinfo: str | None = None) -> None:
        self.paths = paths
        self.jobs = jobs
        self.progress = progress
        self.mountinfo = mountinfo
        self.stop = threading.Event()
        self.run = Run()
        self._buffers = threading.local()

    def fail(self, text: str) -> None:
        with self.run.lock:
            self.run.failed.append(text)
        self.progress.error(PREFIX + text)

    # 1. walk

    def roots(self) -> list[tuple[str, Mount]]:
        """Every path checked before anything is read: a mistake costs nothing."""
        mounts: dict[str, Mount] = {}
        roots = []
        for path in self.paths:
            real = os.path.realpath(path)
            try:
                os.stat(real)
            except FileNotFoundError:
                raise UsageError(f"{path}: no such file or directory") from None
            except OSError as exc:
                raise UsageError(f"{path}: {exc.strerror}") from None
            roots.append((real, find_mount(real, mounts, self.mountinfo)))
        return roots

    def walk(self, roots: list[tuple[str, Mount]]) -> list[Item]:
        items: list[Item] = []
        seen: set[str] = set()
        self.progress.describe = lambda: f"scanning: {len(items):,} files, {human_bytes(self.run.found_bytes)}"
        for root, mount in roots:
            for path, size in self._files(root):
                if path not in seen:
                    seen.add(path)
                    items.append(Item(path, size, mount))
                    self.run.found += 1
                    self.run.found_bytes += size
                self.progress.tick()
        return items

    def _files(self, root: str) -> Iterator[tuple[str, int]]:
        """(path, size) of every regular file under ``root`` (or ``root`` itself), in name order."""
        try:
            info = os.stat(root)
        except OSError as exc:
            self.fail(f"{root}: {exc.strerror}")
            return
        if not stat.S_ISDIR(info.st_mode):
            yield root, info.st_size
            return
        try:
            with os.scandir(root) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            self.fail(f"{root}: {exc.strerror}")
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._files(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path, entry.stat(follow_symlinks=False).st_size
            except OSError as exc:
                self.fail(f"{entry.path}: {exc.strerror}")

    # 2. ask the cache

    def check(self, items: list[Item]) -> None:
        asked = [0]

        def ask(item: Item) -> None:
            try:
                cached = cached_bytes(item.path)
            except OSError as exc:
                item.failed = True
                self.fail(f"{item.path}: {exc.strerror}")
                return
            finally:
                with self.run.lock:
                    asked[0] += 1
            if cached is None:
                item.cacheable = False
                self.progress.error(f"{PREFIX}{item.path}: cannot be cached: it is being written through the "
                                    "mount and is not in the bucket yet")
            else:
                item.cached = cached

        self.progress.describe = lambda: f"asking the cache: {asked[0]:,}/{len(items):,} files"
        self.parallel(items, ask)
        self.run.plan = make_plan(items)

    # 3. + 4. read

    def read(self, plan: Plan) -> None:
        self.progress.start(len(plan.read), sum(item.size for item in plan.read))
        try:
            self.parallel(plan.read, self._read_one)
        finally:
            self.run.read_seconds = self.progress.elapsed()

    def _read_one(self, item: Item) -> None:
        buffer = getattr(self._buffers, "buffer", None)
        if buffer is None:
            buffer = self._buffers.buffer = memoryview(bytearray(CHUNK))
        try:
            with io.FileIO(item.path, "rb") as handle:
                fd = handle.fileno()
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cached pages would never reach the daemon
                while not self.stop.is_set():
                    n = handle.readinto(buffer)
                    if not n:
                        break
                    self.progress.add_bytes(n)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # warming is for the disk cache, not RAM
        except OSError as exc:
            self.fail(f"{item.path}: {exc.strerror or exc}")
            return
        if not self.stop.is_set():
            with self.run.lock:
                self.run.read_files += 1
            self.progress.file_done()

    # 5. verify

    def settle(self, items: list[Item]) -> list[Item]:
        """The files read that the cache does not hold whole, after waiting for its writer."""
        order = {id(item): index for index, item in enumerate(items)}
        pending = list(items)
        last_progress = time.monotonic()
        self.progress.describe = lambda: f"waiting for the cache to store the last blocks: {len(pending):,} files"
        while pending and not self.stop.is_set():
            still: list[Item] = []

            def ask(item: Item) -> None:
                try:
                    cached = cached_bytes(item.path)
                except OSError:
                    cached = None
                if cached is None or cached < item.size:
                    with self.run.lock:
                        still.append(item)

            self.parallel(pending, ask)
            if len(still) < len(pending):
                last_progress = time.monotonic()
            pending[:] = sorted(still, key=lambda item: order[id(item)])  # reported in walk order
            if not pending or time.monotonic() - last_progress > SETTLE_TIMEOUT:
                break
            self.sleep(SETTLE_POLL)
        return pending

    # plumbing

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(TICK, left))
            self.progress.tick()

    def parallel(self, items: list[T], fn: Callable[[T], None]) -> None:
        """``fn(item)`` for every item on up to ``jobs`` daemon threads (a read stuck in the kernel
        cannot keep the command from exiting); the main thread renders progress meanwhile."""
        source = iter(items)
        take = threading.Lock()

        def worker() -> None:
            while not self.stop.is_set():
                with take:
                    item = next(source, None)
                if item is None:
                    return
                fn(item)

        threads = [threading.Thread(target=worker, daemon=True, name=f"warm-{n}")
                   for n in range(min(self.jobs, len(items)))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(TICK)
                    self.progress.tick()
        except KeyboardInterrupt:
            self.stop.set()
            deadline = time.monotonic() + STOP_GRACE
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            raise

    def execute(self, roots: list[tuple[str, Mount]]) -> int:
        phase = "scanning"
        try:
            items = self.walk(roots)
            phase = "asking the cache"
            self.check(items)
            plan = self.run.plan
            self.announce(plan)
            phase = "reading"
            self.read(plan)
            phase = "waiting for the cache"
            self.run.not_kept = self.settle(plan.read)
        except KeyboardInterrupt:
            self.run.interrupted = phase
        for item in self.run.not_kept:
            self.progress.error(f"{PREFIX}{item.path}: read, but the cache does not hold all of it "
                                "(evicted by other cached data, or the cache failed: see the mount's log)")
        self.progress.finish(self.summary())
        run = self.run
        if run.interrupted:
            return 130
        return 1 if run.failed or run.plan.left_out or run.plan.uncacheable or run.not_kept else 0

    def announce(self, plan: Plan) -> None:
        run = self.run
        self.progress.describe = None
        already = sum(item.size for item in plan.already)
        self.progress.message(f"{PREFIX}{run.found:,} files ({human_bytes(run.found_bytes)}): {len(plan.already):,} "
                              f"already cached ({human_bytes(already)}), {len(plan.read):,} to read "
                              f"({human_bytes(sum(item.size for item in plan.read))})")
        for mount in {item.mount.root: item.mount for item in plan.left_out}.values():
            mine = [item for item in plan.read + plan.already + plan.left_out if item.mount is mount]
            out = [item for item in plan.left_out if item.mount is mount]
            warmed = sum(item.mount is mount for item in plan.read)
            held = human_bytes(sum(min(item.cached, item.size) for item in mine))
            missing = human_bytes(sum(item.size - item.cached for item in mine if not item.complete))
            self.progress.error(
                f"{PREFIX}warning: {missing} still to warm does not fit the cache of {mount.root} (cap "
                f"{human_bytes(mount.limit)}, of which these files already hold {held}): warming "
                f"{warmed:,} files in walk order, leaving out "
                f"{len(out):,} ({human_bytes(sum(item.size for item in out))}); a larger --max-cache-size fits them")

    def summary(self) -> str:
        run, plan, progress = self.run, self.run.plan, self.progress
        read_bytes = progress.bytes_done
        took = human_duration(run.read_seconds)
        rate = read_bytes / run.read_seconds if run.read_seconds > 0 else None
        speed = f" at {human_bytes(rate)}/s" if rate else ""
        if run.interrupted:
            return (f"{PREFIX}interrupted while {run.interrupted}: {run.read_files:,} of {len(plan.read):,} files "
                    f"read ({human_bytes(read_bytes)}) in {took}; run it again to warm the rest")
        problems = []
        if plan.left_out:
            problems.append(f"{len(plan.left_out):,} left out (cache cap)")
        if run.failed:
            problems.append(f"{len(run.failed):,} failed")
        if run.not_kept:
            problems.append(f"{len(run.not_kept):,} not kept by the cache")
        if plan.uncacheable:
            problems.append(f"{len(plan.uncacheable):,} not cacheable (being written)")
        tail = f"; {', '.join(problems)}" if problems else ""
        if not plan.read:
            if not run.found:
                return f"{PREFIX}no files found: nothing to warm{tail}"
            if plan.already and not problems:
                return (f"{PREFIX}all {len(plan.already):,} files ({human_bytes(run.found_bytes)}) were already "
                        "cached: nothing read")
            return f"{PREFIX}nothing read, {len(plan.already):,} files already cached{tail}"
        cached = len(plan.already) + run.read_files - len(run.not_kept)
        return (f"{PREFIX}{cached:,} files cached: {run.read_files:,} read ({human_bytes(read_bytes)}) in {took}"
                f"{speed}, {len(plan.already):,} already cached{tail}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or directories inside an s3xfs mount")
    parser.add_argument("-j", "--jobs", default=str(DEFAULT_JOBS), help=f"files read at once (default: {DEFAULT_JOBS})")
    parser.add_argument("--interval", default=str(DEFAULT_INTERVAL),
                        help="seconds between progress lines when not on a terminal (default: 10)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def warm_command(args: argparse.Namespace) -> int:
    """``s3xfs warm``: every mistake is found before anything is read, and is one line with exit 2."""
    try:
        jobs = _positive_int(args.jobs, "--jobs", 1, 256)
        interval = _seconds(args.interval, "--interval", False)
        progress = Progress(sys.stderr, tty=sys.stderr.isatty(), interval=interval, quiet=args.quiet, prefix=PREFIX)
        warmer = Warmer(args.paths, jobs, progress)
        roots = warmer.roots()
    except UsageError as exc:
        print(f"s3xfs: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    try:
        return warmer.execute(roots)
    except KeyboardInterrupt:  # a second Ctrl-C while the first one was winding down
        print(f"\n{PREFIX}interrupted", file=sys.stderr)
        return 130
