"""Filesystem: POSIX semantics over an ObjectClient, on plain dataclasses.

The FUSE adapter (``s3xfs/fuse_ops.py``) translates; everything a filesystem decides is decided
here: how keys become names, what is cached for how long, what a read returns, what is refused.
Every method raises only FsError or client errors (``errors.errno_of`` turns both into errno).

Between awaits (handlers run concurrently on one trio thread):
- the inode table is only mutated synchronously, never across an await; a lookup that awaits the
  bucket re-reads the table after the await;
- a FileHandle's ETag never changes: a changed object is ESTALE for that handle, fresh on reopen.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from ..client import errors as client_errors
from ..client.protocol import ObjectClient, ObjectInfo
from .cache import BlockCache, CachedSource, CacheStore, Entry, Listing, MetadataCache
from .errors import FsError
from .gather import gather
from .handles import FileHandle, HandleTable
from .inodes import ROOT_INODE, Inode, InodeTable
from .list_ahead import ListAhead
from .names import KEY_MAX, NAME_MAX, name_problem
from .prefetch import MemoryBudget, Prefetcher, RangeSource, SharedReads
from .readdir import DirEntry, DirHandle
from .upload import AppendUpload, Condition, NotSequential, StagedFile, Staging, StreamUpload, Writer

log = logging.getLogger(__name__)

XATTR_PREFIX = "user.s3xfs."
XATTRS = ("key", "etag", "storage_class", "checksum")
KERNEL_FOREVER = 365 * 24 * 3600.0  # what "indefinite" TTLs become for the kernel (seconds)
BLOCK_SIZE = 512  # st_blocks unit
RENAME_NOREPLACE = 1  # renameat2(2) flags, as FUSE passes them
RENAME_EXCHANGE = 2
DISK_RECHECK = 1.0  # seconds before the disk cache is asked again for a listing it did not have
# A directory that needs a second remote lookup is listed instead (one LIST answers every later
# lookup in it: a dataset loader opening files by name pays 1 request per directory, not 2 per
# file), unless its listing is longer than this many pages (1,000 names each): then HEAD+LIST per name.
LIST_FOR_LOOKUPS_AFTER = 1
LIST_FOR_LOOKUPS_PAGES = 10
# Listings made ahead of a traversal (core/list_ahead.py) run this many at once, so that they take
# a share of the client's connections and never all of them from the walk's own requests.
LIST_AHEAD_CONCURRENCY = 4


@dataclass(frozen=True)
class FsOptions:
    prefix: str = ""  # the mount's key prefix ('' or ending in '/')
    read_only: bool = False
    uid: int = 0
    gid: int = 0
    file_mode: int = 0o644
    dir_mode: int = 0o755
    metadata_ttl: float = 1.0  # see s3xfs/config.py for the reasons of the defaults
    negative_ttl: float = 1.0
    part_size: int = 8 << 20
    read_buffer: int = 256 << 20
    write_buffer: int = 128 << 20  # all parts of all files waiting to be uploaded (then writers wait)
    staging_dir: str = "/var/tmp/s3xfs"  # see s3xfs/config.py
    cache_block_size: int = 1 << 20  # see s3xfs/config.py
    max_cached_entries: int = 500_000  # see s3xfs/config.py


@dataclass(frozen=True)
class Attributes:
    ino: int  # 0: a negative entry
    is_dir: bool
    size: int
    mtime: float
    mode: int
    uid: int
    gid: int
    nlink: int
    blocks: int
    blksize: int
    entry_timeout: float
    attr_timeout: float


@dataclass(frozen=True)
class OpenResult:
    fh: int
    keep_cache: bool
    direct_io: bool


@dataclass(frozen=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int
    name_max: int


class Filesystem:
    def __init__(self, client: ObjectClient, options: FsOptions, *, clock: Callable[[], float] = time.monotonic,
                 cache: CacheStore | None = None) -> None:
        self.client = client
        self.options = options
        self._clock = clock
        self.inodes = InodeTable(options.prefix, time.time(), clock, max_idle=options.max_cached_entries)
        self.budget = MemoryBudget(options.read_buffer)
        self.shared_reads = SharedReads()  # handles of one file version share their read-ahead
        self.write_budget = MemoryBudget(options.write_buffer)
        self.staging = Staging(options.staging_dir)
        self._files: HandleTable[FileHandle] = HandleTable()
        self._dirs: HandleTable[DirHandle] = HandleTable()
        self._nursery: trio.Nursery | None = None
        self._hidden_logged: set[str] = set()
        # How lookups were answered (for live stats): from the cache, negatively from the cache, or remotely.
        self.counters = {"lookups_remote": 0, "lookups_cached": 0, "lookups_negative_cached": 0, "listings": 0,
                         "listings_ahead": 0}
        self.list_ahead = ListAhead()
        self._list_ahead_limiter = trio.CapacityLimiter(LIST_AHEAD_CONCURRENCY)
        self._queued_ahead: dict[int, trio.CancelScope] = {}  # listings ahead waiting for the limiter
        # Opens, and those that kept the kernel's page cache of the file (same ETag as last time).
        self.open_counters = {"opens": 0, "opens_kept_cache": 0, "read_aheads": 0, "whole_reads": 0}
        self._prefetch_closed: Counter[str] = Counter()  # read-ahead stats of handles already released
        # --cache: data blocks and metadata on disk (None: memory only).
        self.cache = cache
        self.blocks = BlockCache(cache, options.cache_block_size) if cache is not None else None
        self.metadata = MetadataCache(cache, options.metadata_ttl) if cache is not None else None

    def attach(self, nursery: trio.Nursery) -> None:
        """The long-lived nursery that read-ahead tasks run in."""
        self._nursery = nursery
        if self.cache is not None:
            nursery.start_soon(self.cache.writer)

    # --- attributes ----------------------------------------------------------------------------

    def _ttl(self) -> float:
        return self.options.metadata_ttl

    def _kernel_ttl(self, ttl: float) -> float:
        return KERNEL_FOREVER if math.isinf(ttl) else ttl

    def attributes(self, inode: Inode) -> Attributes:
        o = self.options
        ttl = o.metadata_ttl
        if self.metadata is not None and not math.isinf(inode.expires):
            # Restored from the disk cache with part of its TTL used: the kernel keeps it no longer.
            ttl = min(ttl, max(0.0, inode.expires - self._clock())) or ttl
        ttl = self._kernel_ttl(ttl)
        uid = o.uid if inode.uid is None else inode.uid
        gid = o.gid if inode.gid is None else inode.gid
        if inode.is_dir:
            mode = o.dir_mode if inode.mode is None else inode.mode
            return Attributes(inode.ino, True, 0, inode.mtime, stat.S_IFDIR | mode, uid, gid, 2, 0, 4096, ttl, ttl)
        mode = o.file_mode if inode.mode is None else inode.mode
        blocks = (inode.size + BLOCK_SIZE - 1) // BLOCK_SIZE
        return Attributes(inode.ino, False, inode.size, inode.mtime, stat.S_IFREG | mode, uid, gid, 1,
                          blocks, o.part_size, ttl, ttl)

    def negative(self) -> Attributes:
        ttl = self._kernel_ttl(self.options.negative_ttl)
        return Attributes(0, False, 0, 0.0, 0, 0, 0, 0, 0, 0, ttl, ttl)

    def _inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            raise FsError(errno.ENOENT, f"inode {ino} is not known")
        return inode

    def _dir(self, ino: int) -> Inode:
        inode = self._inode(ino)
        if not inode.is_dir:
            raise FsError(errno.ENOTDIR)
        return inode

    # --- lookup --------------------------------------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Attributes:
        """Attributes of parent/name; ``ino == 0`` means "does not exist" (cacheable by the kernel)."""
        parent = self._dir(parent_ino)
        if name == ".":
            return self._found(parent)
        if name == "..":
            return self._found(self._inode(parent.parent))
        inode = await self._find(parent, name)
        return self.negative() if inode is None else self._found(inode)

    async def _find(self, parent: Inode, name: str) -> Inode | None:
        """The inode named parent/name, from the cache within its TTL or from the bucket; None if none."""
        if name_problem(name) is not None:
            return None
        restored = listed = False
        while True:
            now = self._clock()
            child = self.inodes.child(parent.ino, name)
            if child is not None and child.expires > now:
                self.counters["lookups_cached"] += 1
                return child
            if child is None and (self.inodes.is_negative(parent.ino, name) or self._complete_listing(parent)):
                self.counters["lookups_negative_cached"] += 1
                return None
            if not restored:
                restored = True
                if await self._restore(parent, name):
                    continue
            if not listed and self._worth_listing(parent):
                listed = True
                if await self._list_for_lookups(parent):
                    continue
            return await self._resolve(parent, name)

    def _worth_listing(self, directory: Inode) -> bool:
        return (not directory.local and not directory.too_long and directory.remote_lookups >= LIST_FOR_LOOKUPS_AFTER
                and self.options.metadata_ttl > 0)

    async def _list_for_lookups(self, directory: Inode) -> bool:
        """List the directory to answer lookups in it (concurrent lookups share one listing).
        False if it is too long to list for that (it is then never listed for lookups again)."""
        if directory.listing_done is not None:
            await directory.listing_done.wait()
            return True
        directory.listing_done = done = trio.Event()
        try:
            return await self._list_if_short(directory)
        finally:
            directory.listing_done = None
            done.set()

    async def _list_if_short(self, directory: Inode) -> bool:
        """List the directory whole if it fits ``LIST_FOR_LOOKUPS_PAGES`` pages (for lookups, or
        ahead of a walk); otherwise mark it too long, never to be listed so again. Whether listed."""
        started = time.time()
        result = await self._list_remote(directory, max_pages=LIST_FOR_LOOKUPS_PAGES)
        if result is None:
            directory.too_long = True
            return False
        self._listed(directory, *result, started)
        if directory.evicted:
            # Its names do not fit under --max-cached-entries: listing it again for lookups would
            # evict what it learns. Name by name from now on, like a directory too long to list.
            directory.too_long = True
        return True

    async def _restore(self, parent: Inode, name: str) -> bool:
        """Learn parent/name from the disk cache: the parent's listing, else the name's own entry.
        True if something was learnt (the caller looks again)."""
        if self.metadata is None or self.cache is None or parent.local:
            return False
        if await self._restore_listing(parent):
            return True
        entry = await self.cache.run(self.metadata.load_entry, parent.key + name)
        if entry is None or entry.fetched_at <= parent.changed_at:
            return False  # absent, or older than a change this mount made
        current = self.inodes.child(parent.ino, name)
        if current is not None and (current.pinned or current.expires > self._clock()):
            return True  # learnt meanwhile, better than the disk's
        remaining = self.metadata.remaining(entry.fetched_at)
        if remaining <= 0:
            return False
        if entry.info is None:
            self.inodes.upsert(parent, name, is_dir=True, key=parent.key + name + "/", ttl=remaining, mtime=parent.mtime)
        else:
            self._upsert_file(parent, name, entry.info, ttl=remaining)
        return True

    async def _restore_listing(self, directory: Inode) -> bool:
        """The directory's listing from the disk cache, if it has one within the TTL (asked at
        most once per ``DISK_RECHECK`` seconds per directory). True if the directory has a
        complete listing now."""
        if self._complete_listing(directory):
            return True
        listing = await self._load_disk_listing(directory)
        return listing is not None and self._apply_disk_listing(directory, listing)

    async def _load_disk_listing(self, directory: Inode) -> Listing | None:
        if self.metadata is None or self.cache is None or directory.local:
            return None
        if self._clock() - directory.disk_checked < DISK_RECHECK or self._complete_listing(directory):
            return None
        directory.disk_checked = self._clock()
        return await self.cache.run(self.metadata.load_listing, directory.key)

    def _apply_disk_listing(self, directory: Inode, listing: Listing) -> bool:
        """Make a listing read from disk the directory's truth, if it is still valid. Whether the
        directory now has a complete listing."""
        if listing.fetched_at <= directory.changed_at:
            return False
        if self._complete_listing(directory):
            return True  # listed meanwhile: that listing is fresher
        remaining = self.metadata.remaining(listing.fetched_at) if self.metadata is not None else 0.0
        if remaining <= 0:
            return False
        self._apply_listing(directory, set(listing.dirs), {info.key[len(directory.key):]: info for info in listing.files},
                            remaining)
        return True

    def _complete_listing(self, directory: Inode) -> bool:
        """The directory's listing is valid and every name in it is in memory."""
        return directory.listing_expires > self._clock() and not directory.evicted

    def _remember_entry(self, parent: Inode, name: str, started: float, info: ObjectInfo | None) -> None:
        """Keep what the bucket said about parent/name on disk, unless this mount changed the
        directory since the request started (then the answer may already be stale)."""
        if self.metadata is not None and self.cache is not None and parent.changed_at < started:
            self.cache.queue(self.metadata.save_entry, parent.key + name, Entry(started, info))

    def _changed(self, parent: Inode, name: str) -> None:
        """This mount changed parent/name in the bucket: what the disk cache says about it is stale."""
        parent.changed_at = time.time()
        if self.metadata is not None and self.cache is not None:
            key = parent.key + name
            self.cache.queue(self.metadata.forget, [key], [parent.key, key + "/"])

    def _found(self, inode: Inode) -> Attributes:
        self.inodes.remember(inode)
        return self.attributes(inode)

    async def _resolve(self, parent: Inode, name: str) -> Inode | None:
        """Ask the bucket: a HEAD of the key and a listing under key/ at once; a directory wins."""
        self.counters["lookups_remote"] += 1
        parent.remote_lookups += 1
        key = parent.key + name
        found: dict[str, object] = {}
        started = time.time()

        async def head() -> None:
            try:
                found["file"] = await self.client.head(key)
            except client_errors.NotFound:
                pass

        async def listing() -> None:
            async for page in self.client.list(key + "/", page_size=1):
                if page.objects or page.prefixes:
                    found["dir"] = True
                break

        await gather(head, listing)  # a refused HEAD is EACCES, not an ExceptionGroup's EIO
        if found.get("dir"):
            inode = self.inodes.upsert(parent, name, is_dir=True, key=key + "/", ttl=self._ttl(), mtime=parent.mtime)
            if "file" in found:
                self._log_hidden(key, "a directory of the same name shadows it")
            self._remember_entry(parent, name, started, None)
            return inode
        info = found.get("file")
        if isinstance(info, ObjectInfo):
            self._remember_entry(parent, name, started, info)
            return self._upsert_file(parent, name, info)
        current = self.inodes.child(parent.ino, name)
        if current is not None and current.pinned:
            return current  # made or being written here: the bucket does not know it yet
        self.inodes.remove_name(parent.ino, name)
        self.inodes.set_negative(parent.ino, name, self.options.negative_ttl)
        return None

    def _upsert_file(self, parent: Inode, name: str, info: ObjectInfo, *, ttl: float | None = None) -> Inode:
        checksum = f"{info.checksum_algorithm}:{info.checksum}" if info.checksum_algorithm and info.checksum else None
        ttl = self._ttl() if ttl is None else ttl
        mtime = info.last_modified
        known = self.inodes.child(parent.ino, name)
        if (known is not None and not known.is_dir and known.etag == info.etag and known.size == info.size
                and math.floor(known.mtime) == math.floor(mtime)):
            # The same version keeps the mtime first seen: a HEAD says whole seconds, a listing
            # milliseconds, and a changed mtime makes the kernel drop the file's page cache.
            mtime = known.mtime
        return self.inodes.upsert(parent, name, is_dir=False, key=info.key, ttl=ttl, size=info.size,
                                  etag=info.etag, mtime=mtime, storage_class=info.storage_class,
                                  checksum=checksum)

    def _log_hidden(self, key: str, why: str) -> None:
        if key not in self._hidden_logged:
            self._hidden_logged.add(key)
            log.warning("object %r is not shown: %s", key, why)

    async def getattr(self, ino: int) -> Attributes:
        inode = self._inode(ino)
        if inode.is_dir or inode.pinned or inode.expires > self._clock():
            return self.attributes(inode)
        started = time.time()
        try:
            info = await self.client.head(inode.key)
        except client_errors.NotFound:
            raise FsError(errno.ENOENT, f"{inode.key} no longer exists") from None
        parent = self.inodes.get(inode.parent)
        if parent is not None and self.inodes.child(parent.ino, inode.name) is inode:
            self._remember_entry(parent, inode.name, started, info)
            self._upsert_file(parent, inode.name, info)
        else:  # renamed away or replaced meanwhile: refresh this inode alone
            inode.size, inode.etag, inode.mtime = info.size, info.etag, info.last_modified
            inode.expires = self._clock() + self._ttl()
        return self.attributes(inode)

    def forget(self, pairs: list[tuple[int, int]]) -> None:
        for ino, count in pairs:
            self.inodes.forget(ino, count)

    # --- directories ---------------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        handle = DirHandle(self._dir(ino))
        self._list_siblings_ahead(handle.inode)
        queued = self._queued_ahead.get(ino)
        if queued is not None:
            queued.cancel()  # its listing ahead still waits for a turn: the opendir lists it now
        if handle.inode.listing_done is not None:  # listed ahead, or for lookups, right now: share it
            await handle.inode.listing_done.wait()
        directory = handle.inode
        if not self._reuse_listing(handle):
            listing = await self._load_disk_listing(directory)
            # From here to the pin, no await: what the listing shows is never evicted before the
            # snapshot pins it, and evictions are not held back while requests are under way.
            with self.inodes.evictions_deferred():
                restored = (listing is not None and self._apply_disk_listing(directory, listing)
                            and self._reuse_listing(handle))
                if restored:
                    self._snapshot_opened(handle)
            if not restored:
                started = time.time()
                result = await self._list_remote(directory)
                assert result is not None
                with self.inodes.evictions_deferred():
                    handle.entries = self._listed(directory, *result, started)
                    self._snapshot_opened(handle)
        else:
            self._snapshot_opened(handle)
        return self._dirs.add(handle)

    def _snapshot_opened(self, handle: DirHandle) -> None:
        self.inodes.snapshot_opened(entry.inode for entry in handle.entries if entry.counted)

    def _list_siblings_ahead(self, directory: Inode) -> None:
        """A traversal opening the subdirectories of a parent one by one: list the next ones now
        (core/list_ahead.py), in the background, within the metadata TTL only."""
        parent = self.inodes.get(directory.parent)
        now = self._clock()
        if (self._nursery is None or parent is None or parent is directory or parent.listing is None
                or parent.listing_expires <= now or self.options.metadata_ttl <= 0):
            return
        for name in self.list_ahead.opened(parent.ino, parent.listing_version, parent.listing, parent.listing_dirs,
                                           directory.name, now, self.options.metadata_ttl):
            sibling = self.inodes.child(parent.ino, name)
            if (sibling is None or not sibling.is_dir or sibling.local or sibling.too_long
                    or sibling.listing_done is not None
                    or (sibling.listing is not None and self._complete_listing(sibling))):
                continue
            queued = trio.CancelScope()
            self._nursery.start_soon(self._list_ahead, sibling, queued)
            sibling.listing_done = trio.Event()  # from now on, its opendir and lookups wait for this listing
            self._queued_ahead[sibling.ino] = queued

    async def _list_ahead(self, directory: Inode, queued: trio.CancelScope) -> None:
        """List a directory before it is opened (its ``listing_done`` is set by the caller). A
        failure is left for the opendir to meet and report; nothing is raised here. While it waits
        for a turn, the directory's own opendir may cancel it and list the directory itself."""
        done = directory.listing_done
        try:
            with queued:
                try:
                    await self._list_ahead_limiter.acquire()
                finally:
                    self._queued_ahead.pop(directory.ino, None)
            if queued.cancelled_caught:
                return
            try:
                # A longer directory is left to its own opendir, which lists it page by page.
                if not await self._restore_listing(directory) and await self._list_if_short(directory):
                    self.counters["listings_ahead"] += 1
            finally:
                self._list_ahead_limiter.release()
        except Exception as exc:  # noqa: BLE001 - only an optimisation failed: the opendir lists again
            log.debug("listing %r ahead of a traversal failed: %s", directory.key, exc)
        finally:
            directory.listing_done = None
            done.set()

    def _reuse_listing(self, handle: DirHandle) -> bool:
        """Within the TTL, a directory's last listing is still the answer: no request."""
        directory = handle.inode
        if directory.listing is None or not self._complete_listing(directory):
            return False
        entries = [DirEntry(".", directory, False), DirEntry("..", self._inode(directory.parent), False)]
        for name in directory.listing:
            child = self.inodes.child(directory.ino, name)
            if child is None:
                return False  # the cache lost an entry (a lookup found it gone): list again
            entries.append(DirEntry(name, child, True))
        handle.entries = entries
        return True

    def _listed(self, directory: Inode, dirs: set[str], files: dict[str, ObjectInfo], started: float) -> list[DirEntry]:
        """A complete listing fetched now: the directory's truth for the TTL, also on disk with a cache."""
        entries = self._apply_listing(directory, dirs, files, self.options.metadata_ttl, started=started)
        if self.metadata is not None and self.cache is not None and directory.changed_at < started:
            listing = Listing(started, sorted(dirs), list(files.values()))
            self.cache.queue(self.metadata.save_listing, directory.key, listing)
        return entries

    async def _list_remote(self, directory: Inode, *,
                           max_pages: int | None = None) -> tuple[set[str], dict[str, ObjectInfo]] | None:
        """Child directory names and files of a directory, with invalid names hidden (and logged
        once); None if the listing is longer than ``max_pages``."""
        self.counters["listings"] += 1
        files: dict[str, ObjectInfo] = {}
        dirs: set[str] = set()
        prefix = directory.key
        pages = 0
        async for page in self.client.list(prefix):
            pages += 1
            if max_pages is not None and pages > max_pages:
                return None
            for info in page.objects:
                name = info.key[len(prefix):]
                if not name:
                    continue  # the directory's own zero-byte marker ('dir/')
                problem = name_problem(name)
                if problem:
                    self._log_hidden(info.key, f"its name {problem}")
                    continue
                files[name] = info
            for common in page.prefixes:
                name = common[len(prefix):-1]
                problem = name_problem(name)
                if problem:
                    self._log_hidden(common, f"its name {problem}")
                    continue
                dirs.add(name)
        for name in dirs & files.keys():
            self._log_hidden(files.pop(name).key, "a directory of the same name shadows it")
        return dirs, files

    def _apply_listing(self, directory: Inode, dirs: set[str], files: dict[str, ObjectInfo], ttl: float, *,
                       started: float | None = None) -> list[DirEntry]:
        """Make a complete listing the directory's truth for ``ttl`` seconds; its entries for readdir.

        ``started``: when the listing was asked for (time.time()). If this mount changed the directory
        since, the bucket may have answered before that change: the listing then only adds names this
        mount knows nothing of, and is not kept as the directory's truth."""
        if started is not None and directory.changed_at >= started:
            return self._apply_raced_listing(directory, dirs, files, ttl)
        directory.evicted = 0  # before the children: a listing larger than the cap evicts some of its own
        entries = [DirEntry(".", directory, False), DirEntry("..", self._inode(directory.parent), False)]
        seen: set[str] = set()
        prefix = directory.key
        for name in dirs:
            entries.append(DirEntry(name, self.inodes.upsert(directory, name, is_dir=True, key=prefix + name + "/",
                                                             ttl=ttl, mtime=directory.mtime), True))
            seen.add(name)
        for name, info in files.items():
            if name in dirs:
                continue
            entries.append(DirEntry(name, self._upsert_file(directory, name, info, ttl=ttl), True))
            seen.add(name)
        for child in self.inodes.children(directory.ino):
            if child.name in seen:
                continue
            if child.pinned:  # made here, not uploaded yet: still listed
                entries.append(DirEntry(child.name, child, True))
            else:
                self.inodes.remove_name(directory.ino, child.name)
        directory.listing_expires = self._clock() + ttl
        directory.listing = [entry.name for entry in entries[2:]]
        if directory.evicted:  # children were evicted on the way (a listing larger than the cap)
            del directory.listing[len(dirs):]
        directory.listing_dirs = len(dirs)  # listed first: the subdirectories a traversal follows
        directory.listing_version += 1
        directory.remote_lookups = 0
        return entries

    def _apply_raced_listing(self, directory: Inode, dirs: set[str], files: dict[str, ObjectInfo],
                             ttl: float) -> list[DirEntry]:
        """A listing that may predate a change of this mount: what this mount knows wins (a file it
        just committed is not dropped, one it just deleted does not come back); only unknown names
        are learnt. The next listing or lookup asks the bucket again."""
        entries = [DirEntry(".", directory, False), DirEntry("..", self._inode(directory.parent), False)]
        listed = {name: None for name in dirs} | {name: info for name, info in files.items() if name not in dirs}
        for name, info in listed.items():
            child = self.inodes.child(directory.ino, name)
            if child is None:
                if self.inodes.is_negative(directory.ino, name):
                    continue  # removed here after the bucket answered
                if info is None:
                    child = self.inodes.upsert(directory, name, is_dir=True, key=directory.key + name + "/",
                                               ttl=ttl, mtime=directory.mtime)
                else:
                    child = self._upsert_file(directory, name, info, ttl=ttl)
            entries.append(DirEntry(name, child, True))
        entries.extend(DirEntry(child.name, child, True) for child in self.inodes.children(directory.ino)
                       if child.name not in listed)
        return entries

    def readdir(self, fh: int, start: int) -> Iterator[tuple[int, DirEntry]]:
        handle = self._dirs.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle.page(start)

    def entry_accepted(self, entry: DirEntry) -> None:
        """readdir_reply took this entry: the kernel now holds one more lookup on it."""
        if entry.counted:
            self.inodes.remember(entry.inode)

    def releasedir(self, fh: int) -> None:
        handle = self._dirs.pop(fh)
        if handle is not None:
            self.inodes.snapshot_closed(entry.inode for entry in handle.entries if entry.counted)

    # --- files ---------------------------------------------------------------------------------

    def refuse_write(self) -> None:
        """Operations s3xfs never supports on a bucket (links, special files): EROFS on read-only
        mounts, so the answer does not depend on the operation; EPERM otherwise."""
        raise FsError(errno.EROFS if self.options.read_only else errno.EPERM)

    def refuse_xattr_change(self) -> None:
        """The ``user.s3xfs.*`` attributes are facts of the object; there is nowhere to keep others."""
        raise FsError(errno.EROFS if self.options.read_only else errno.ENOTSUP)

    def _check_writable(self) -> None:
        if self.options.read_only:
            raise FsError(errno.EROFS)

    async def open(self, ino: int, flags: int) -> OpenResult:
        inode = self._inode(ino)
        if inode.is_dir:
            raise FsError(errno.EISDIR)
        access = flags & os.O_ACCMODE
        writable = access != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if writable:
            self._check_writable()
        if inode.local and inode.writer is None and self.inodes.child(inode.parent, inode.name) is not inode:
            # Only the kernel's cached entry still names it: its commit failed (its content went to
            # the staging directory) or it was unlinked. ESTALE makes open(2) look the name up
            # again (LOOKUP_REVAL): the caller gets what the bucket holds, or ENOENT; not an empty file.
            raise FsError(errno.ESTALE, f"{inode.key}: no longer in this mount")
        if not inode.pinned and (inode.expires <= self._clock() or inode.etag is None):
            await self.getattr(ino)
        direct = bool(flags & getattr(os, "O_DIRECT", 0))
        keep_cache = not direct and not inode.pinned and inode.cached_etag == inode.etag
        inode.cached_etag = None if direct or inode.pinned else inode.etag
        self.open_counters["opens"] += 1
        if keep_cache:
            self.open_counters["opens_kept_cache"] += 1
        if writable and flags & os.O_TRUNC:
            async with self._lock(inode):
                await self._truncate(inode, 0, rdwr=access == os.O_RDWR)
        remote = inode.etag is not None and not inode.local
        return OpenResult(self._add_handle(inode, remote, direct, access, writable), keep_cache, direct)

    def _source(self, key: str, etag: str, size: int, direct: bool) -> RangeSource:
        """Where the bytes of one object version come from: the disk cache first, if there is one."""
        if self.blocks is not None and not direct:  # O_DIRECT bypasses every cache, this one too
            return CachedSource(self.client, self.blocks, key, etag, size)
        return self.client

    async def _prefetcher(self, inode: Inode, key: str, etag: str, size: int, direct: bool) -> Prefetcher:
        """Read-ahead of version ``etag`` of ``inode``'s object in the bucket."""
        source = self._source(key, etag, size, direct)
        self.open_counters["read_aheads"] += 1
        prefetcher = Prefetcher(source, key, size, etag, self.budget,
                                part_size=self.options.part_size, shared=self.shared_reads, identity=inode.ino)
        if self._nursery is None:
            raise FsError(errno.EIO, "filesystem not attached to a nursery")
        await prefetcher.start(self._nursery)
        return prefetcher

    def _add_handle(self, inode: Inode, remote: bool, direct: bool, access: int, writable: bool) -> int:
        inode.open_handles += 1
        if writable:
            inode.write_handles += 1
        return self._files.add(FileHandle(inode, inode.key, inode.etag, inode.size, None, direct,
                                          writable=writable, readable=access != os.O_WRONLY, remote=remote))

    def _file(self, fh: int) -> FileHandle:
        handle = self._files.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle

    def read_buffered(self, fh: int, offset: int, size: int) -> bytes | memoryview | None:
        """The hot path: data already in memory, without an await (None if it must be fetched)."""
        handle = self._file(fh)
        if handle.prefetcher is None or handle.inode.writer is not None:
            return None
        return handle.prefetcher.read_buffered(offset, size)

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle = self._file(fh)
        inode = handle.inode
        if inode.writer is not None:  # being written here: read what was written (read-your-writes)
            async with self._lock(inode):
                writer = inode.writer
                if writer is not None:
                    return await writer.read(offset, size)
        try:
            if handle.prefetcher is None:
                if handle.remote:
                    if offset == 0 and size >= handle.size:
                        return await self._read_whole(handle)
                    await self._first_prefetcher(handle)  # the version pinned at open
                # Opened while the file existed only here, and nothing writes it any more.
                elif not inode.local and inode.etag is not None:
                    await self._late_prefetcher(handle)  # committed since: read what was committed
                elif offset < inode.size:  # its commit failed: the content is in the staging directory only
                    raise FsError(errno.EIO, f"{inode.key}: its upload failed; the data is in the staging directory")
                if handle.prefetcher is None:
                    return b""
            return await handle.prefetcher.read(offset, size)
        except client_errors.PreconditionFailed:
            # The object changed since open: never mix versions. The next open sees the new one.
            handle.inode.expires = 0.0
            handle.inode.cached_etag = None
            raise FsError(errno.ESTALE, f"{handle.key} changed while open") from None

    async def _read_whole(self, handle: FileHandle) -> bytes | bytearray:
        """A first read that covers the whole object (a data loader's sample, ``cat`` of a small
        file): one fetch of the pinned version, from the disk cache when it has it, and no
        read-ahead to start and stop, as there is nothing after it to read ahead."""
        etag = handle.etag
        assert etag is not None  # a remote handle pinned a version at open
        if handle.size == 0:
            return b""
        source = self._source(handle.key, etag, handle.size, handle.direct)
        await self.budget.acquire(handle.size)
        try:
            data = await source.get_range(handle.key, 0, handle.size, if_match=etag)
        finally:
            self.budget.release(handle.size)
        if len(data) != handle.size:
            raise FsError(errno.EIO, f"{handle.key}: {len(data)} bytes read instead of {handle.size}")
        self.open_counters["whole_reads"] += 1
        return data

    async def _first_prefetcher(self, handle: FileHandle) -> None:
        """The read-ahead of a handle opened on a version in the bucket, at its first read."""
        assert handle.etag is not None
        prefetcher = await self._prefetcher(handle.inode, handle.key, handle.etag, handle.size, handle.direct)
        if handle.prefetcher is not None:  # another read of this handle did it meanwhile
            await prefetcher.close()
            return
        handle.prefetcher = prefetcher

    async def _late_prefetcher(self, handle: FileHandle) -> None:
        """Give a handle opened before its file's first commit the committed version to read."""
        inode = handle.inode
        assert inode.etag is not None
        prefetcher = await self._prefetcher(inode, inode.key, inode.etag, inode.size, handle.direct)
        if handle.prefetcher is not None:  # another read of this handle did it meanwhile
            await prefetcher.close()
            return
        handle.prefetcher, handle.etag, handle.size = prefetcher, prefetcher.etag, prefetcher.size

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh)
        if handle is None:
            return
        if handle.prefetcher is not None:
            self._prefetch_closed.update(handle.prefetcher.stats)  # now: stats() no longer sees the handle
            await handle.prefetcher.close()
        inode = handle.inode
        if handle.writable:
            inode.write_handles -= 1
            if inode.write_handles == 0:
                async with self._lock(inode):
                    await self._finish_writing(inode)
        self.inodes.release_handle(inode)

    # --- writing -------------------------------------------------------------------------------

    def _lock(self, inode: Inode) -> trio.Lock:
        """One lock per inode being written: writes, truncates, commits and reads of a writer never interleave."""
        if inode.write_lock is None:  # kept on the inode: it lives exactly as long as what it guards
            inode.write_lock = trio.Lock()
        return inode.write_lock

    async def create(self, parent_ino: int, name: str, flags: int) -> tuple[OpenResult, Attributes]:
        """A new, empty file: it exists here at once and in the bucket from its first commit."""
        self._check_writable()
        parent = self._dir(parent_ino)
        self._check_new_name(parent, name)
        inode = self.inodes.create_local(parent, name, is_dir=False, key=parent.key + name, mtime=time.time())
        self._listing_add(parent, name)
        access = flags & os.O_ACCMODE
        inode.writer = self._new_writer(inode, Condition(if_none_match=True), rdwr=access == os.O_RDWR)
        fh = self._add_handle(inode, False, bool(flags & getattr(os, "O_DIRECT", 0)), access, True)
        return OpenResult(fh, False, False), self._found(inode)

    def _check_new_name(self, parent: Inode, name: str, *, is_dir: bool = False) -> None:
        """A name this mount may create: a valid file name whose whole key S3 would accept."""
        size = len(name.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if name_problem(name) is not None:
            raise FsError(errno.EINVAL, f"{name!r} cannot be an object name")
        if len(parent.key.encode()) + size + is_dir > KEY_MAX:  # a directory's key ends in '/'
            raise FsError(errno.ENAMETOOLONG, f"the key of {name!r} would be longer than S3's {KEY_MAX} bytes")

    def _new_writer(self, inode: Inode, condition: Condition, *, rdwr: bool) -> Writer:
        """Empty new content: streamed, unless the handle also reads (then random access is likely)."""
        if rdwr:
            staged = self._staged(inode, condition)
            staged.dirty = True
            return staged
        if self._nursery is None:
            raise FsError(errno.EIO, "filesystem not attached to a nursery")
        return StreamUpload(self.client, inode.key, condition, part_size=self.options.part_size,
                            budget=self.write_budget, nursery=self._nursery)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._file(fh)
        if not handle.writable:
            raise FsError(errno.EBADF)
        inode = handle.inode
        async with self._lock(inode):
            writer = inode.writer
            if writer is None:
                writer = inode.writer = await self._writer_for(inode, offset, rdwr=handle.readable)
            try:
                await writer.write(offset, data)
            except NotSequential:
                writer = await self._restage(inode, writer)
                await writer.write(offset, data)
            inode.size = writer.size
            inode.mtime = time.time()
        return len(data)

    async def _writer_for(self, inode: Inode, offset: int, *, rdwr: bool) -> Writer:
        """The writer for a first write into existing content."""
        if not rdwr and inode.etag is not None and inode.size > 0 and offset == inode.size and self.client.directory:
            return AppendUpload(self.client, inode.key, inode.size, inode.etag, part_size=self.options.part_size)
        if not rdwr and inode.size == 0 and offset == 0:
            return self._new_writer(inode, Condition.based_on(inode.etag), rdwr=False)
        return await self._staged_copy(inode, inode.etag, inode.size)

    def _staged(self, inode: Inode, condition: Condition) -> StagedFile:
        """A new, empty staged file for the inode's key."""
        return self.staging.new_file(self.client, inode.key, condition, part_size=self.options.part_size,
                                     budget=self.write_budget)

    async def _staged_copy(self, inode: Inode, etag: str | None, size: int) -> StagedFile:
        """A staged file holding the object's current content (pinned to ``etag``)."""
        staged = self._staged(inode, Condition.based_on(etag))
        try:
            if etag is not None and size > 0:
                await staged.fill_from(inode.key, size, etag)
        except BaseException:
            staged.remove()
            raise
        return staged

    async def _restage(self, inode: Inode, writer: Writer) -> StagedFile:
        """Move a writer's content into a staged file, for writes it cannot take."""
        if isinstance(writer, StreamUpload):
            if writer.streamed:
                error = FsError(errno.EINVAL, f"{inode.key}: a write went back into data already uploaded "
                                              "(sequential writes stream; open the file read-write for random writes)")
                writer.fail(error)  # the file cannot be what was written: never commit it half way
                raise error
            staged = self._staged(inode, writer.condition)
            await staged.write(0, writer.buffered())
            await staged.truncate(writer.size)
        elif isinstance(writer, AppendUpload):
            staged = await self._staged_copy(inode, writer.etag, writer.committed)
            await staged.write(writer.committed, writer.buffered())
        else:
            return writer
        await writer.discard()
        inode.writer = staged
        return staged

    async def _truncate(self, inode: Inode, size: int, *, rdwr: bool) -> None:
        """Set the content's length (the lock is held)."""
        writer = inode.writer
        if writer is None:
            if size == 0:
                writer = self._new_writer(inode, Condition.based_on(inode.etag), rdwr=rdwr)
            else:
                writer = await self._staged_copy(inode, inode.etag, inode.size)
            inode.writer = writer
        elif size == 0 and isinstance(writer, StreamUpload) and writer.streamed:
            await writer.discard()  # start over: nothing sent so far is wanted
            writer = inode.writer = self._new_writer(inode, writer.condition, rdwr=rdwr)
        elif size == 0 and isinstance(writer, AppendUpload):
            await writer.discard()  # empty it without downloading what is about to be dropped
            writer = inode.writer = self._new_writer(inode, Condition(if_match=writer.etag), rdwr=rdwr)
        try:
            await writer.truncate(size)
        except NotSequential:
            writer = await self._restage(inode, writer)
            await writer.truncate(size)
        inode.size = size
        inode.mtime = time.time()

    @property
    def flush_needed(self) -> bool:
        """Whether close(2) can have anything to do: not on a read-only mount, which writes nothing."""
        return not self.options.read_only

    async def flush(self, fh: int) -> None:
        """close(2): commit what this handle wrote, so close reports a failed upload."""
        handle = self._file(fh)
        if handle.writable:
            async with self._lock(handle.inode):
                await self._commit(handle.inode)

    async def fsync(self, fh: int) -> None:
        await self.flush(fh)

    async def _commit(self, inode: Inode) -> None:
        """Make the inode's written content visible in the bucket (the lock is held)."""
        writer = inode.writer
        if writer is None or not writer.dirty:
            return
        current = self.inodes.child(inode.parent, inode.name)
        if current is not inode:
            parent = self.inodes.get(inode.parent)
            if inode.local or current is not None or parent is None:
                await writer.discard()  # unlinked or replaced while open: the content goes nowhere
                inode.writer = None
                return
            # The name was lost without this mount removing it (a listing that raced with a commit,
            # a directory of the same name): the file is still ours to store, under its name.
            log.warning("%r lost its name in the inode table while being written; committing it anyway", inode.key)
            self.inodes.move(inode, parent, inode.name, inode.key)
        writer.key = inode.key
        result = await writer.commit(self.staging)
        inode.etag, inode.size = result.etag, result.size
        inode.cached_etag = None
        parent = self.inodes.get(inode.parent)
        if parent is not None:
            self._changed(parent, inode.name)
        if inode.local:
            inode.local = False
            self._parents_exist(inode)
        if isinstance(writer, StreamUpload):
            inode.writer = None  # later writes at the end are appends (or a staged copy)
            inode.expires = self._clock() + self._ttl()

    def _parents_exist(self, inode: Inode) -> None:
        """A committed file makes the local directories above it real."""
        parent = self.inodes.get(inode.parent)
        while parent is not None and parent.local:
            grandparent = self.inodes.get(parent.parent)
            if grandparent is not None and grandparent is not parent:
                self._changed(grandparent, parent.name)  # the directory appears in its parent's listing
            parent.local = False
            parent.expires = self._clock() + self._ttl()
            # mkdir's listing was valid forever (nothing else could be in it): no longer
            parent.listing_expires = min(parent.listing_expires, parent.expires)
            parent = self.inodes.get(parent.parent)

    async def _finish_writing(self, inode: Inode, *, report: bool = False) -> None:
        """The last writing handle closed (the lock is held): commit if still needed, clean up.
        ``report``: raise a failed commit (after cleaning up) instead of only logging it."""
        writer = inode.writer
        if writer is None:
            return
        failure: FsError | None = None
        try:
            await self._commit(inode)
        except FsError as exc:
            failure = exc
            if not report:
                log.error("%s: %s", inode.key, exc)  # release cannot report it; flush already did
        writer = inode.writer
        inode.writer = None
        if isinstance(writer, StagedFile):
            if writer.dirty:
                writer.keep()
            else:
                writer.remove()
        # After a failed commit the size and ETag here are not the bucket's: ask it next time.
        inode.expires = self._clock() + self._ttl() if failure is None else 0.0
        if inode.local and self.inodes.child(inode.parent, inode.name) is inode:  # never made it to the bucket
            parent = self.inodes.get(inode.parent)
            if parent is not None:
                self._listing_drop(parent, inode.name)
            self.inodes.remove_name(inode.parent, inode.name)
        if failure is not None and report:
            raise failure

    async def setattr(self, ino: int, *, size: int | None = None, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, mtime: float | None = None) -> Attributes:
        """Truncate (stored), and chmod/chown/utimens, kept in memory only: S3 has no place for
        them that listings would show. Mode and owner last as long as the inode; an mtime lasts
        until the next refresh from the bucket replaces it with Last-Modified."""
        self._check_writable()
        inode = self._inode(ino)
        if size is not None:
            if inode.is_dir:
                raise FsError(errno.EISDIR)
            async with self._lock(inode):
                if not inode.pinned and inode.expires <= self._clock():
                    await self.getattr(ino)
                await self._truncate(inode, size, rdwr=True)
                if inode.write_handles == 0:  # `truncate FILE`: nobody will close it, commit now
                    await self._finish_writing(inode, report=True)
        if mode is not None:
            inode.mode = stat.S_IMODE(mode)
        if uid is not None:
            inode.uid = uid
        if gid is not None:
            inode.gid = gid
        if mtime is not None:
            inode.mtime = mtime
        return self.attributes(inode)

    async def unlink(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        parent = self._dir(parent_ino)
        inode = await self._find(parent, name)
        if inode is None:
            raise FsError(errno.ENOENT)
        if inode.is_dir:
            raise FsError(errno.EISDIR)
        async with self._lock(inode):
            if not inode.local:
                await self.client.delete(inode.key)
            if inode.writer is not None:  # unlinked while open: what is still written goes nowhere
                await inode.writer.discard()
                inode.writer = None
            inode.local = True  # no longer in the bucket: later writes on open handles are not uploaded
            inode.etag = None
        self._changed(parent, name)
        self._forget_name(parent, name)

    def _forget_name(self, parent: Inode, name: str) -> None:
        self._listing_drop(parent, name)
        self.inodes.remove_name(parent.ino, name)
        self.inodes.set_negative(parent.ino, name, self.options.negative_ttl)

    def _listing_add(self, parent: Inode, name: str) -> None:
        if parent.listing is not None and name not in parent.listing:
            parent.listing.append(name)

    def _listing_drop(self, parent: Inode, name: str) -> None:
        if parent.listing is not None and name in parent.listing:
            parent.listing.remove(name)

    async def mkdir(self, parent_ino: int, name: str) -> Attributes:
        """A local directory; it becomes real in the bucket when a file is written in it."""
        self._check_writable()
        parent = self._dir(parent_ino)
        self._check_new_name(parent, name, is_dir=True)
        if await self._find(parent, name) is not None:
            raise FsError(errno.EEXIST)
        inode = self.inodes.create_local(parent, name, is_dir=True, key=parent.key + name + "/", mtime=time.time())
        inode.listing, inode.listing_expires = [], math.inf
        self._listing_add(parent, name)
        return self._found(inode)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        self._check_writable()
        parent = self._dir(parent_ino)
        inode = await self._find(parent, name)
        if inode is None:
            raise FsError(errno.ENOENT)
        if not inode.is_dir:
            raise FsError(errno.ENOTDIR)
        if any(child.pinned for child in self.inodes.children(inode.ino)):
            raise FsError(errno.ENOTEMPTY)
        if not inode.local:
            marker = False
            async for page in self.client.list(inode.key, page_size=2):
                if page.prefixes or any(info.key != inode.key for info in page.objects):
                    raise FsError(errno.ENOTEMPTY)
                marker = bool(page.objects)
                break
            if marker:  # a zero-byte 'dir/' object (general purpose buckets): the directory itself
                await self.client.delete(inode.key)
            self._changed(parent, name)
        self._forget_name(parent, name)

    async def rename(self, old_parent_ino: int, old: str, new_parent_ino: int, new: str, flags: int) -> None:
        self._check_writable()
        if flags & RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE cannot be done atomically on S3")
        old_parent, new_parent = self._dir(old_parent_ino), self._dir(new_parent_ino)
        self._check_new_name(new_parent, new)
        source = await self._find(old_parent, old)
        if source is None:
            raise FsError(errno.ENOENT)
        target = await self._find(new_parent, new)
        if target is source:
            return
        if target is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST)
        if source.is_dir:
            await self._rename_dir(source, target, new_parent, new)
        else:
            if target is not None and target.is_dir:
                raise FsError(errno.EISDIR)
            await self._rename_file(source, target, new_parent, new, noreplace=bool(flags & RENAME_NOREPLACE))
        self._listing_drop(old_parent, old)
        self._listing_add(new_parent, new)

    async def _rename_dir(self, source: Inode, target: Inode | None, new_parent: Inode, new: str) -> None:
        """Only a local, empty directory moves (nothing in the bucket to move); any other directory
        is EXDEV, so `mv` falls back to copying and deleting file by file."""
        if target is not None and not target.is_dir:
            raise FsError(errno.ENOTDIR)
        if not source.local or any(True for _ in self.inodes.children(source.ino)):
            raise FsError(errno.EXDEV, "directories are not renamed in place; mv copies them")
        if target is not None and (not target.local or any(True for _ in self.inodes.children(target.ino))):
            raise FsError(errno.ENOTEMPTY if target.local else errno.EXDEV)
        self.inodes.move(source, new_parent, new, new_parent.key + new + "/")

    async def _rename_file(self, source: Inode, target: Inode | None, new_parent: Inode, new: str, *,
                           noreplace: bool) -> None:
        if not self.client.directory:
            raise FsError(errno.EXDEV, "general purpose buckets have no atomic rename; mv copies the file")
        key = new_parent.key + new
        async with self._lock(source):
            await self._commit(source)  # a file being written is uploaded first
            if source.local:
                raise FsError(errno.EIO, f"{source.key}: not in the bucket yet")
            try:
                await self.client.rename(source.key, key, if_none_match=noreplace)
            except client_errors.PreconditionFailed:
                raise FsError(errno.EEXIST if noreplace else errno.ESTALE) from None
            old_parent = self.inodes.get(source.parent)
            if old_parent is not None:
                self._changed(old_parent, source.name)
            self._changed(new_parent, new)
            if target is not None:
                if target.writer is not None:
                    await target.writer.discard()  # replaced while being written: that content is gone
                    target.writer = None
                # No longer in the bucket, as after unlink: what its open handles write later goes
                # nowhere (its commit must not recreate the name the rename's source now holds).
                target.local = True
            self.inodes.move(source, new_parent, new, key)
            self._parents_exist(source)  # renamed into a local directory: it is in the bucket now
            if source.writer is not None:
                source.writer.key = key
            for handle in self._files.values():  # RenameObject keeps the ETag: open handles read on
                if handle.inode is source:
                    handle.key = key
                    if handle.prefetcher is not None:
                        handle.prefetcher.key = key

    # --- misc ----------------------------------------------------------------------------------

    def statfs(self) -> StatFs:
        # A bucket has no capacity limit: report a large, stable size (as Mountpoint does).
        return StatFs(block_size=self.options.part_size, blocks=1 << 40, blocks_free=1 << 40, files=1 << 40,
                      files_free=1 << 40, name_max=255)

    def listxattr(self, ino: int) -> list[str]:
        inode = self._inode(ino)
        if inode.is_dir:
            names = ["key", "cache_limit"] if self.cache is not None and ino == ROOT_INODE else ["key"]
            return [XATTR_PREFIX + name for name in names]
        names = [name for name in XATTRS if self._xattr_value(inode, name) is not None]
        if self.blocks is not None and inode.etag is not None and not inode.pinned:
            names.append("cached")
        return [XATTR_PREFIX + name for name in names]

    async def getxattr(self, ino: int, name: str) -> bytes:
        inode = self._inode(ino)
        if not name.startswith("user."):
            # Other namespaces (security.*, system.posix_acl_*) are not supported at all: saying
            # so (rather than ENODATA) lets `ls -l` stop asking for them on every file.
            raise FsError(errno.EOPNOTSUPP)
        if not name.startswith(XATTR_PREFIX):
            raise FsError(errno.ENODATA)
        if name == XATTR_PREFIX + "cached" and self.blocks is not None and self.cache is not None:
            # How many bytes of this version the data cache holds: `s3xfs warm` skips complete files.
            if inode.is_dir or inode.etag is None or inode.pinned:
                raise FsError(errno.ENODATA)
            if inode.expires <= self._clock():
                await self.getattr(ino)  # answer for the version an open would read now
            return str(await self.cache.run(self.blocks.cached_bytes, inode.key, inode.etag, inode.size)).encode()
        if name == XATTR_PREFIX + "cache_limit" and self.cache is not None and ino == ROOT_INODE:
            return str(self.cache.size_limit).encode()
        value = self._xattr_value(inode, name[len(XATTR_PREFIX):])
        if value is None:
            raise FsError(errno.ENODATA)
        return value.encode()

    def _xattr_value(self, inode: Inode, name: str) -> str | None:
        if name == "key":
            return inode.key
        if inode.is_dir:
            return None
        return {"etag": inode.etag, "storage_class": inode.storage_class, "checksum": inode.checksum}.get(name)

    def stats(self) -> dict[str, Any]:
        """The live counters of the filesystem and the layers below it, as plain JSON-ready values
        (for ``s3xfs stats``). Synchronous and cheap: call it on the trio thread."""
        client_stats = getattr(self.client, "stats", None)
        client: dict[str, Any] = client_stats() if callable(client_stats) else {
            "requests": dict(getattr(self.client, "requests", {}))}
        prefetch = Counter(self._prefetch_closed)
        for handle in self._files.values():
            if handle.prefetcher is not None:
                prefetch.update(handle.prefetcher.stats)
        cache = None
        if self.cache is not None and self.blocks is not None and self.metadata is not None:
            cache = {"directory": str(self.cache.directory), "size_limit": self.cache.size_limit,
                     "block_size": self.blocks.block_size, "blocks": self.blocks.counters(),
                     "metadata": dict(self.metadata.stats), "errors": self.cache.errors,
                     "block_writer": self.cache.block_writer.state() if self.cache.block_writer is not None else None}
        return {
            "s3": {"requests": client.get("requests", {}), "failures": client.get("failures", {}),
                   "retries": client.get("retries", 0), "bytes_received": client.get("bytes_received", 0),
                   "bytes_sent": client.get("bytes_sent", 0), "lost_answers": client.get("lost_answers", 0)},
            "sessions": client.get("sessions"),
            "lookups": dict(self.counters),
            "opens": dict(self.open_counters),
            "prefetch": {key: prefetch[key] for key in sorted(prefetch)},
            "cache": cache,
            "memory": {"read_buffer_used": self.budget.used, "read_buffer_peak": self.budget.peak,
                       "read_buffer_limit": self.budget.limit, "write_buffer_used": self.write_budget.used,
                       "write_buffer_limit": self.write_budget.limit},
            "handles": {"files": len(self._files), "directories": len(self._dirs), "inodes": len(self.inodes),
                        "inodes_evicted": self.inodes.evictions},
        }

    async def close(self) -> None:
        """Unmounting: stop read-ahead, and try once more to commit what is still being written."""
        for handle in self._files.values():
            if handle.prefetcher is not None:
                await handle.prefetcher.close()
        for handle in self._files.values():
            inode = handle.inode
            if handle.writable and inode.writer is not None:
                async with self._lock(inode):
                    await self._finish_writing(inode)
        if self.cache is not None:
            await self.cache.flush()  # what was fetched or listed is on disk for the next mount
