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
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from ..client import errors as client_errors
from ..client.protocol import ObjectClient, ObjectInfo
from .errors import FsError
from .handles import FileHandle, HandleTable
from .inodes import Inode, InodeTable
from .names import name_problem
from .prefetch import MemoryBudget, Prefetcher
from .readdir import DirEntry, DirHandle

log = logging.getLogger(__name__)

XATTR_PREFIX = "user.s3xfs."
XATTRS = ("key", "etag", "storage_class", "checksum")
KERNEL_FOREVER = 365 * 24 * 3600.0  # what "indefinite" TTLs become for the kernel (seconds)
BLOCK_SIZE = 512  # st_blocks unit


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
    def __init__(self, client: ObjectClient, options: FsOptions, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.options = options
        self._clock = clock
        self.inodes = InodeTable(options.prefix, time.time(), clock)
        self.budget = MemoryBudget(options.read_buffer)
        self._files: HandleTable[FileHandle] = HandleTable()
        self._dirs: HandleTable[DirHandle] = HandleTable()
        self._nursery: trio.Nursery | None = None
        self._hidden_logged: set[str] = set()
        # How lookups were answered (for live stats): from the cache, negatively from the cache, or remotely.
        self.counters = {"lookups_remote": 0, "lookups_cached": 0, "lookups_negative_cached": 0, "listings": 0}

    def attach(self, nursery: trio.Nursery) -> None:
        """The long-lived nursery that read-ahead tasks run in."""
        self._nursery = nursery

    # --- attributes ----------------------------------------------------------------------------

    def _ttl(self) -> float:
        return self.options.metadata_ttl

    def _kernel_ttl(self, ttl: float) -> float:
        return KERNEL_FOREVER if math.isinf(ttl) else ttl

    def attributes(self, inode: Inode) -> Attributes:
        o = self.options
        ttl = self._kernel_ttl(o.metadata_ttl)
        if inode.is_dir:
            return Attributes(inode.ino, True, 0, inode.mtime, stat.S_IFDIR | o.dir_mode, o.uid, o.gid, 2, 0, 4096, ttl, ttl)
        blocks = (inode.size + BLOCK_SIZE - 1) // BLOCK_SIZE
        return Attributes(inode.ino, False, inode.size, inode.mtime, stat.S_IFREG | o.file_mode, o.uid, o.gid, 1,
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
        if name_problem(name) is not None:
            return self.negative()
        now = self._clock()
        child = self.inodes.child(parent.ino, name)
        if child is not None and child.expires > now:
            self.counters["lookups_cached"] += 1
            return self._found(child)
        if child is None and (self.inodes.is_negative(parent.ino, name) or parent.listing_expires > now):
            self.counters["lookups_negative_cached"] += 1
            return self.negative()
        return await self._resolve(parent, name)

    def _found(self, inode: Inode) -> Attributes:
        self.inodes.remember(inode)
        return self.attributes(inode)

    async def _resolve(self, parent: Inode, name: str) -> Attributes:
        """Ask the bucket: a HEAD of the key and a listing under key/ at once; a directory wins."""
        self.counters["lookups_remote"] += 1
        key = parent.key + name
        found: dict[str, object] = {}

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

        async with trio.open_nursery() as nursery:
            nursery.start_soon(head)
            nursery.start_soon(listing)
        if found.get("dir"):
            inode = self.inodes.upsert(parent, name, is_dir=True, key=key + "/", ttl=self._ttl(), mtime=parent.mtime)
            if "file" in found:
                self._log_hidden(key, "a directory of the same name shadows it")
            return self._found(inode)
        info = found.get("file")
        if isinstance(info, ObjectInfo):
            return self._found(self._upsert_file(parent, name, info))
        self.inodes.remove_name(parent.ino, name)
        self.inodes.set_negative(parent.ino, name, self.options.negative_ttl)
        return self.negative()

    def _upsert_file(self, parent: Inode, name: str, info: ObjectInfo) -> Inode:
        checksum = f"{info.checksum_algorithm}:{info.checksum}" if info.checksum_algorithm and info.checksum else None
        return self.inodes.upsert(parent, name, is_dir=False, key=info.key, ttl=self._ttl(), size=info.size,
                                  etag=info.etag, mtime=info.last_modified, storage_class=info.storage_class,
                                  checksum=checksum)

    def _log_hidden(self, key: str, why: str) -> None:
        if key not in self._hidden_logged:
            self._hidden_logged.add(key)
            log.warning("object %r is not shown: %s", key, why)

    async def getattr(self, ino: int) -> Attributes:
        inode = self._inode(ino)
        if inode.is_dir or inode.expires > self._clock():
            return self.attributes(inode)
        try:
            info = await self.client.head(inode.key)
        except client_errors.NotFound:
            raise FsError(errno.ENOENT, f"{inode.key} no longer exists") from None
        parent = self.inodes.get(inode.parent)
        if parent is not None and self.inodes.child(parent.ino, inode.name) is inode:
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
        if not self._reuse_listing(handle):
            await self._load(handle)
        return self._dirs.add(handle)

    def _reuse_listing(self, handle: DirHandle) -> bool:
        """Within the TTL, a directory's last listing is still the answer: no request."""
        directory = handle.inode
        if directory.listing is None or directory.listing_expires <= self._clock():
            return False
        entries = [DirEntry(".", directory, False), DirEntry("..", self._inode(directory.parent), False)]
        for name in directory.listing:
            child = self.inodes.child(directory.ino, name)
            if child is None:
                return False  # the cache lost an entry (a lookup found it gone): list again
            entries.append(DirEntry(name, child, True))
        handle.entries = entries
        return True

    async def _load(self, handle: DirHandle) -> None:
        directory = handle.inode
        self.counters["listings"] += 1
        files: dict[str, ObjectInfo] = {}
        dirs: set[str] = set()
        prefix = directory.key
        async for page in self.client.list(prefix):
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
        entries = [DirEntry(".", directory, False), DirEntry("..", self._inode(directory.parent), False)]
        seen: set[str] = set()
        for name in dirs:
            if name in files:
                self._log_hidden(files.pop(name).key, "a directory of the same name shadows it")
            entries.append(DirEntry(name, self.inodes.upsert(directory, name, is_dir=True, key=prefix + name + "/",
                                                             ttl=self._ttl(), mtime=directory.mtime), True))
            seen.add(name)
        for name, info in files.items():
            entries.append(DirEntry(name, self._upsert_file(directory, name, info), True))
            seen.add(name)
        for child in self.inodes.children(directory.ino):
            if child.name not in seen:
                self.inodes.remove_name(directory.ino, child.name)
        directory.listing_expires = self._clock() + self.options.metadata_ttl
        directory.listing = [entry.name for entry in entries[2:]]
        handle.entries = entries

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
        self._dirs.pop(fh)

    # --- files ---------------------------------------------------------------------------------

    def refuse_write(self) -> None:
        raise FsError(errno.EROFS if self.options.read_only else errno.EOPNOTSUPP)

    async def open(self, ino: int, flags: int) -> OpenResult:
        inode = self._inode(ino)
        if inode.is_dir:
            raise FsError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            self.refuse_write()
        if inode.expires <= self._clock() or inode.etag is None:
            await self.getattr(ino)
        assert inode.etag is not None
        direct = bool(flags & getattr(os, "O_DIRECT", 0))
        keep_cache = not direct and inode.cached_etag == inode.etag
        inode.cached_etag = None if direct else inode.etag
        prefetcher = Prefetcher(self.client, inode.key, inode.size, inode.etag, self.budget,
                                part_size=self.options.part_size)
        if self._nursery is None:
            raise FsError(errno.EIO, "filesystem not attached to a nursery")
        await prefetcher.start(self._nursery)
        inode.open_handles += 1
        fh = self._files.add(FileHandle(inode, inode.key, inode.etag, inode.size, prefetcher, direct))
        return OpenResult(fh, keep_cache, direct)

    def _file(self, fh: int) -> FileHandle:
        handle = self._files.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle

    def read_buffered(self, fh: int, offset: int, size: int) -> bytes | memoryview | None:
        """The hot path: data already in memory, without an await (None if it must be fetched)."""
        return self._file(fh).prefetcher.read_buffered(offset, size)

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle = self._file(fh)
        try:
            return await handle.prefetcher.read(offset, size)
        except client_errors.PreconditionFailed:
            # The object changed since open: never mix versions. The next open sees the new one.
            handle.inode.expires = 0.0
            handle.inode.cached_etag = None
            raise FsError(errno.ESTALE, f"{handle.key} changed while open") from None

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh)
        if handle is None:
            return
        await handle.prefetcher.close()
        self.inodes.release_handle(handle.inode)

    # --- misc ----------------------------------------------------------------------------------

    def statfs(self) -> StatFs:
        # A bucket has no capacity limit: report a large, stable size (as Mountpoint does).
        return StatFs(block_size=self.options.part_size, blocks=1 << 40, blocks_free=1 << 40, files=1 << 40,
                      files_free=1 << 40, name_max=255)

    def listxattr(self, ino: int) -> list[str]:
        inode = self._inode(ino)
        if inode.is_dir:
            return [XATTR_PREFIX + "key"]
        return [XATTR_PREFIX + name for name in XATTRS if self._xattr_value(inode, name) is not None]

    def getxattr(self, ino: int, name: str) -> bytes:
        inode = self._inode(ino)
        if not name.startswith("user."):
            # Other namespaces (security.*, system.posix_acl_*) are not supported at all: saying
            # so (rather than ENODATA) lets `ls -l` stop asking for them on every file.
            raise FsError(errno.EOPNOTSUPP)
        if not name.startswith(XATTR_PREFIX):
            raise FsError(errno.ENODATA)
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

    async def close(self) -> None:
        for handle in self._files.values():
            await handle.prefetcher.close()
