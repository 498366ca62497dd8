"""The inode table: inode numbers, (parent, name) -> inode, kernel lookup counts, TTLs.

Kept apart from the operations (Mountpoint's "superblock"). Rules:
- inode numbers are allocated here, never reused while the process lives;
- an inode lives while the kernel holds lookups on it, a handle is open on it or an open
  directory snapshot lists it, even after its name vanished from the bucket; ``forget`` only
  ever decrements and never raises;
- when a name changes kind (a file replaced by a directory), the name gets a new inode; the old
  one lives on until the kernel forgets it;
- attributes and negative entries carry expiry times (monotonic seconds; ``math.inf`` for
  indefinite), the same TTLs that are handed to the kernel;
- a named file inode nothing holds (no kernel lookup, no handle, nothing being written) stays as
  the metadata cache of later lookups, but at most ``max_idle`` of them: beyond that the least
  recently idle one is evicted, and its parent counts it in ``evicted``: its listing no longer
  proves a missing name absent, and keeps only its subdirectories until the next listing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

ROOT_INODE = 1  # FUSE_ROOT_ID


@dataclass(slots=True)  # no per-instance dict: at 30 fields CPython 3.11 stops sharing dict keys (1.6 KB each)
class Inode:
    ino: int
    parent: int
    name: str
    is_dir: bool
    key: str  # a file's object key; a directory's prefix, ending in '/' (or '' for a bucket root)
    size: int = 0
    etag: str | None = None
    mtime: float = 0.0  # seconds since the epoch
    storage_class: str | None = None
    checksum: str | None = None  # "<ALGORITHM>:<base64>" when the bucket reported one
    expires: float = 0.0  # attributes valid until (monotonic)
    listing_expires: float = 0.0  # directories: a complete listing of the children is valid until
    listing: list[str] | None = None  # directories: that listing's child names (only subdirectories once ``evicted``)
    listing_dirs: int = 0  # directories: how many names at the front of ``listing`` are subdirectories
    listing_version: int = 0  # directories: which listing ``listing`` is (each complete listing adds one)
    evicted: int = 0  # directories: children evicted from memory since ``listing`` was made
    lookups: int = 0
    open_handles: int = 0
    cached_etag: str | None = None  # the ETag whose data the kernel page cache may hold
    local: bool = False  # made here (mkdir, create) and not in the bucket yet: listings keep it
    writer: Any = None  # a file's uncommitted content (core.upload.Writer) while it is being written
    write_handles: int = 0  # open handles that may write
    snapshots: int = 0  # open directory snapshots listing it (readdir may still hand it to the kernel)
    write_lock: Any = None  # a trio.Lock serialising the writer's operations (made on first use)
    remote_lookups: int = 0  # directories: lookups that asked the bucket since the last listing
    too_long: bool = False  # directories: too long to list for lookups (HEAD+LIST per name instead)
    listing_done: Any = None  # directories: a trio.Event while a listing for lookups is under way
    disk_checked: float = -math.inf  # directories: when the disk cache was last asked for the listing (monotonic)
    changed_at: float = 0.0  # directories: when this mount last changed a child in the bucket (time.time())
    mode: int | None = None  # chmod/chown/utimens: kept in memory for the inode's life, never stored
    uid: int | None = None
    gid: int | None = None

    @property
    def pinned(self) -> bool:
        """Known here better than the bucket knows it: listings and HEADs must not overwrite it."""
        return self.local or self.writer is not None


class InodeTable:
    def __init__(self, root_prefix: str, mount_time: float, clock: Callable[[], float], *,
                 max_idle: int) -> None:
        if max_idle < 1:  # a cap of 0 would evict each inode between its lookup and its answer
            raise ValueError(f"max_idle must be at least 1, not {max_idle}")
        self._clock = clock
        self.max_idle = max_idle
        # Named file inodes that nothing holds, least recently idle first: the eviction candidates.
        # Checked again when their turn comes (an open does not tell the table).
        self._idle: OrderedDict[int, None] = OrderedDict()
        self._deferring = 0  # evictions_deferred() blocks under way
        self.evictions = 0
        root = Inode(ROOT_INODE, ROOT_INODE, "", True, root_prefix, mtime=mount_time, expires=math.inf)
        root.lookups = 1  # the kernel never forgets the root
        self._inodes: dict[int, Inode] = {ROOT_INODE: root}
        self._names: dict[tuple[int, str], int] = {}
        self._kids: dict[int, dict[str, int]] = {}  # the same names by parent: listings walk one directory
        self._negative: dict[tuple[int, str], float] = {}
        self._next = ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self._inodes)

    def get(self, ino: int) -> Inode | None:
        return self._inodes.get(ino)

    def child(self, parent: int, name: str) -> Inode | None:
        ino = self._names.get((parent, name))
        return self._inodes.get(ino) if ino is not None else None

    def children(self, parent: int) -> list[Inode]:
        return [self._inodes[ino] for ino in self._kids.get(parent, {}).values() if ino in self._inodes]

    def _name(self, parent: int, name: str, ino: int) -> None:
        self._names[(parent, name)] = ino
        self._kids.setdefault(parent, {})[name] = ino

    def _unname(self, parent: int, name: str) -> int | None:
        ino = self._names.pop((parent, name), None)
        kids = self._kids.get(parent)
        if kids is not None:
            kids.pop(name, None)
            if not kids:
                del self._kids[parent]
        return ino

    def upsert(self, parent: Inode, name: str, *, is_dir: bool, key: str, ttl: float, size: int = 0,
               etag: str | None = None, mtime: float = 0.0, storage_class: str | None = None,
               checksum: str | None = None) -> Inode:
        """Record what the bucket says ``parent/name`` is, valid for ``ttl`` seconds."""
        self._negative.pop((parent.ino, name), None)
        inode = self.child(parent.ino, name)
        if inode is None or inode.is_dir != is_dir:
            replaced = inode
            inode = Inode(self._next, parent.ino, name, is_dir, key)
            self._next += 1
            self._inodes[inode.ino] = inode
            self._name(parent.ino, name, inode.ino)
            if replaced is not None:
                self._maybe_drop(replaced.ino)
            self._maybe_idle(inode)
        if inode.pinned:
            return inode  # what is being written here is newer than what the bucket says
        inode.key = key
        inode.size, inode.etag, inode.mtime = size, etag, mtime
        inode.storage_class, inode.checksum = storage_class, checksum
        inode.expires = self._clock() + ttl
        return inode

    def create_local(self, parent: Inode, name: str, *, is_dir: bool, key: str, mtime: float) -> Inode:
        """A new file or directory made by this mount, not yet in the bucket (replaces the name)."""
        self.remove_name(parent.ino, name)
        self._negative.pop((parent.ino, name), None)
        inode = Inode(self._next, parent.ino, name, is_dir, key, mtime=mtime, expires=math.inf, local=True)
        self._next += 1
        self._inodes[inode.ino] = inode
        self._name(parent.ino, name, inode.ino)
        return inode

    def move(self, inode: Inode, parent: Inode, name: str, key: str) -> None:
        """``inode`` now lives at parent/name (a rename); whatever had that name loses it."""
        self.remove_name(parent.ino, name)
        if self._names.get((inode.parent, inode.name)) == inode.ino:
            self._unname(inode.parent, inode.name)
        self._negative.pop((parent.ino, name), None)
        inode.parent, inode.name, inode.key = parent.ino, name, key
        self._name(parent.ino, name, inode.ino)

    def remove_name(self, parent: int, name: str) -> None:
        """The name is gone from the bucket; its inode lives on while the kernel or a handle holds it."""
        ino = self._unname(parent, name)
        if ino is not None:
            self._maybe_drop(ino)

    def set_negative(self, parent: int, name: str, ttl: float) -> None:
        if ttl > 0:
            self._negative[(parent, name)] = self._clock() + ttl
            if len(self._negative) > 100_000:  # bounded: drop the expired ones
                now = self._clock()
                self._negative = {k: v for k, v in self._negative.items() if v > now}

    def is_negative(self, parent: int, name: str) -> bool:
        expiry = self._negative.get((parent, name))
        return expiry is not None and expiry > self._clock()

    def remember(self, inode: Inode) -> None:
        """The kernel received this inode (lookup, readdirplus, create): one more lookup to forget."""
        inode.lookups += 1
        self._idle.pop(inode.ino, None)

    def forget(self, ino: int, count: int) -> None:
        inode = self._inodes.get(ino)
        if inode is None or ino == ROOT_INODE:
            return
        inode.lookups = max(0, inode.lookups - count)
        self._maybe_drop(ino)

    def _maybe_drop(self, ino: int) -> None:
        inode = self._inodes.get(ino)
        if (inode is None or ino == ROOT_INODE or inode.lookups > 0 or inode.open_handles > 0 or inode.snapshots > 0
                or inode.writer is not None):
            return
        if self._names.get((inode.parent, inode.name)) == ino:
            self._maybe_idle(inode)  # still named: it is the metadata cache for later lookups
            return
        del self._inodes[ino]
        self._idle.pop(ino, None)

    def release_handle(self, inode: Inode) -> None:
        inode.open_handles -= 1
        self._maybe_drop(inode.ino)

    def snapshot_opened(self, inodes: Iterable[Inode]) -> None:
        """An open directory snapshot lists these: readdir may hand any of them to the kernel, so
        none is evicted or dropped while it is open."""
        for inode in inodes:
            inode.snapshots += 1
            if not inode.lookups:  # only those are ever idle (``remember`` takes them out)
                self._idle.pop(inode.ino, None)

    def snapshot_closed(self, inodes: Iterable[Inode]) -> None:
        for inode in inodes:
            inode.snapshots -= 1
            if not inode.snapshots and not inode.lookups:  # else still held: nothing to do
                self._maybe_drop(inode.ino)

    @contextmanager
    def evictions_deferred(self) -> Iterator[None]:
        """Evict nothing until the block ends: a listing larger than the cap does not evict its
        own names before its snapshot pins them."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
            self._trim()

    def _evictable(self, inode: Inode) -> bool:
        """Nothing holds it and nothing but the bucket's metadata is lost with it. Directories stay:
        they hold listings, and are few next to their files. So do modes set here (chmod), which
        exist nowhere else."""
        return (not inode.is_dir and inode.lookups == 0 and inode.open_handles == 0 and inode.snapshots == 0
                and not inode.pinned and inode.mode is None and inode.uid is None and inode.gid is None
                and self._names.get((inode.parent, inode.name)) == inode.ino)

    def _maybe_idle(self, inode: Inode) -> None:
        if not self._evictable(inode):
            return
        self._idle[inode.ino] = None
        self._idle.move_to_end(inode.ino)
        self._trim()

    def _trim(self) -> None:
        if self._deferring:
            return
        while len(self._idle) > self.max_idle:
            ino, _ = self._idle.popitem(last=False)
            candidate = self._inodes.get(ino)
            if candidate is not None and self._evictable(candidate):
                self._evict(candidate)

    def _evict(self, inode: Inode) -> None:
        self._unname(inode.parent, inode.name)
        del self._inodes[inode.ino]
        parent = self._inodes.get(inode.parent)
        if parent is not None:
            if parent.listing is not None and len(parent.listing) > parent.listing_dirs:
                # No longer complete, so no longer worth its memory: keep the subdirectories,
                # listed first, which walks follow (core/list_ahead.py).
                parent.listing = parent.listing[:parent.listing_dirs]
            parent.evicted += 1
        self.evictions += 1
