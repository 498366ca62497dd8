"""The pyfuse3 adapter: FUSE types in, core calls, FUSEError out. No decisions are made here.

Every handler funnels failures through ``core.errors.errno_of`` (the one errno mapping);
only FUSEError leaves a handler, and ``forget`` never raises (pyfuse3's contract).

Live stats (``s3xfs stats``): requests by FUSE operation, failures by errno (counted in the same
funnel), bytes read and written. Counters are plain increments on the trio thread.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from .core.errors import FsError, errno_of
from .core.fs import Attributes, Filesystem

log = logging.getLogger(__name__)
T = TypeVar("T")


def _translate(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: FuseOperations, *args: Any, **kwargs: Any) -> T:
        self.requests[name] += 1
        try:
            return await handler(self, *args, **kwargs)
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENOSYS:  # ENOSYS raised here is the protocol's "not needed" (flush), no failure
                self.errors[exc.errno] += 1
            raise
        except Exception as exc:  # noqa: BLE001 - the boundary: everything becomes an errno
            code = errno_of(exc)
            self.errors[code] += 1
            if code not in (errno.ENOENT, errno.ENODATA, errno.EROFS, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTSUP):
                log.info("%s failed: %s", name, exc)
            raise pyfuse3.FUSEError(code) from None
    return wrapper


def entry(attrs: Attributes) -> pyfuse3.EntryAttributes:
    out = pyfuse3.EntryAttributes()
    out.st_ino = attrs.ino
    out.entry_timeout = attrs.entry_timeout
    out.attr_timeout = attrs.attr_timeout
    if attrs.ino == 0:
        return out
    out.generation = 0
    out.st_mode = attrs.mode
    out.st_nlink = attrs.nlink
    out.st_uid = attrs.uid
    out.st_gid = attrs.gid
    out.st_size = attrs.size
    out.st_blocks = attrs.blocks
    out.st_blksize = attrs.blksize
    ns = int(attrs.mtime * 1e9)
    out.st_atime_ns = out.st_mtime_ns = out.st_ctime_ns = ns
    return out


class FuseOperations(pyfuse3.Operations):
    """Translates pyfuse3 requests into Filesystem calls."""

    enable_writeback_cache = False

    def __init__(self, fs: Filesystem) -> None:
        super().__init__()
        self.fs = fs
        self.initialized = trio.Event()  # set once the kernel's FUSE INIT has been answered
        self.requests: Counter[str] = Counter()  # by FUSE operation (handler name)
        self.errors: Counter[int] = Counter()  # by errno; a negative lookup counts as ENOENT
        self.bytes_read = 0  # returned by read
        self.bytes_written = 0  # accepted by write

    def stats(self) -> dict[str, Any]:
        """The adapter's counters and the filesystem's (``Filesystem.stats``), JSON-ready; cheap."""
        errors = {errno.errorcode.get(code, str(code)): count for code, count in sorted(self.errors.items())}
        fuse = {"requests": dict(sorted(self.requests.items())), "errors": errors,
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written}
        return {"fuse": fuse, **self.fs.stats()}

    def init(self) -> None:
        self.initialized.set()

    @_translate
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        attrs = await self.fs.lookup(parent_inode, os.fsdecode(name))
        if attrs.ino == 0:
            self.errors[errno.ENOENT] += 1  # a negative entry: the caller sees ENOENT
        return entry(attrs)

    @_translate
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        return entry(await self.fs.getattr(inode))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        self.requests["forget"] += 1
        try:
            self.fs.forget(inode_list)
        except Exception:  # noqa: BLE001 - forget must never raise
            log.exception("forget failed")

    @_translate
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self.fs.opendir(inode)

    @_translate
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for next_id, item in self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(item.name), entry(self.fs.attributes(item.inode)), next_id):
                return
            self.fs.entry_accepted(item)

    @_translate
    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @_translate
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        result = await self.fs.open(inode, flags)
        return pyfuse3.FileInfo(fh=result.fh, keep_cache=result.keep_cache, direct_io=result.direct_io)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.requests["read"] += 1
        try:
            data = self.fs.read_buffered(fh, off, size)  # no await when the data is in memory
            if data is None:
                data = await self.fs.read(fh, off, size)
        except Exception as exc:  # noqa: BLE001 - inlined _translate: this is the hot path
            code = errno_of(exc)
            self.errors[code] += 1
            raise pyfuse3.FUSEError(code) from None
        self.bytes_read += len(data)
        return data

    @_translate
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    @_translate
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        info = self.fs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = info.block_size
        out.f_blocks, out.f_bfree, out.f_bavail = info.blocks, info.blocks_free, info.blocks_free
        out.f_files, out.f_ffree, out.f_favail = info.files, info.files_free, info.files_free
        out.f_namemax = info.name_max
        return out

    @_translate
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.getxattr(inode, os.fsdecode(name))

    @_translate
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(name) for name in self.fs.listxattr(inode)]

    @_translate
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        if mode & os.W_OK and self.fs.options.read_only:
            raise FsError(errno.EROFS)
        return True

    # --- writing (read-only mounts: the core answers EROFS) ------------------------------------

    @_translate
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if not stat.S_ISREG(mode):
            self.fs.refuse_write()
        result, attrs = await self.fs.create(parent_inode, os.fsdecode(name), flags)
        return pyfuse3.FileInfo(fh=result.fh, keep_cache=False, direct_io=result.direct_io), entry(attrs)

    @_translate
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        written = await self.fs.write(fh, off, buf)
        self.bytes_written += written
        return written

    @_translate
    async def flush(self, fh: int) -> None:
        if not self.fs.flush_needed:
            # ENOSYS is the protocol's way to say "never send FLUSH again" (the kernel sets no_flush
            # for the connection, so this happens once): one round trip less per close(2).
            raise pyfuse3.FUSEError(errno.ENOSYS)
        await self.fs.flush(fh)

    @_translate
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh)

    @_translate
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return entry(await self.fs.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mtime=attr.st_mtime_ns / 1e9 if fields.update_mtime else None))

    @_translate
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return entry(await self.fs.mkdir(parent_inode, os.fsdecode(name)))

    @_translate
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.unlink(parent_inode, os.fsdecode(name))

    @_translate
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rmdir(parent_inode, os.fsdecode(name))

    @_translate
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rename(parent_inode_old, os.fsdecode(name_old), parent_inode_new, os.fsdecode(name_new), flags)

    # What a bucket cannot hold: special files, links, and extended attributes of one's own.
    @_translate
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        self.fs.refuse_write()

    @_translate
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        self.fs.refuse_write()

    @_translate
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        self.fs.refuse_write()

    @_translate
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self.fs.refuse_xattr_change()

    @_translate
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self.fs.refuse_xattr_change()
