"""The cache directory: one diskcache shared by every mount that names it.

diskcache (SQLite plus one file per large value) is process-safe, so two mounts, ``s3xfs warm`` and
``s3xfs cache clear`` may use one directory at once. Every entry is tagged with its *namespace*,
a hash of endpoint + bucket + prefix, so mounts of different buckets never see each other's
entries and one namespace can be cleared alone. Nothing secret is ever written here: keys are
object keys, ETags and sizes; values are object bytes and object metadata.

diskcache calls block (SQLite, file I/O): the mount makes them in worker threads, never on the
trio thread. Reads go through :meth:`CacheStore.run` (a few threads at once). Writes go through
:meth:`CacheStore.write`: one queue, applied in order by one writer task, so a later "forget this
listing" can never be overtaken by an earlier "store this listing"; the queue holds at most
``WRITE_BACKLOG`` bytes of block data (then readers that fill it wait: the cache fills at the
pace of the disk), and :meth:`CacheStore.flush` empties it at unmount. What reads have to record
(the access times of hits) joins the queue a second later, in one batch. A cache that fails (disk
full, a locked database, a deleted file) is a miss, never a failed file operation:
:meth:`CacheStore.guard` logs it once per kind and reports nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import diskcache
import trio

from ..prefetch import MemoryBudget
from .block_writer import BlockWriter, BlockWriterGone

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_SHARE = 0.10  # of the free space under the cache directory: leaves the disk to its owner
MIN_DEFAULT_SIZE = 256 << 20  # a nearly full disk still gets a cache worth having
MIN_SIZE = 16 << 20  # below this, one training batch evicts the last
# Reads in flight: one per reader of a data loader (8 is common), so that after a restart, when the
# blocks come from disk, no reader's read waits behind another's. `./dev bench training --quick`
# does not tell 4 from 8 beyond its noise (epoch 2 after a remount: 2,257 and 1,987 files/s with 4;
# 2,308 and 1,897 with 8).
DISK_THREADS = 8
SQLITE_TIMEOUT = 5.0  # seconds a call waits for another process's lock before it is a miss
# Entries evicted per store once over the cap: each store adds one entry, so two keep the volume at
# the cap, without emptying a small cache at once as a large batch would.
CULL_LIMIT = 2
# Which namespaces have used the directory: a file beside the database, not a cache entry, so that
# eviction and clearing never make `s3xfs cache info|clear BUCKET` forget a bucket it holds.
REGISTRY = "namespaces.json"
# How long reads' bookkeeping (the access times of hits) waits to be recorded: one SQLite
# transaction a second instead of one per hit, which cost a restarted job's epoch about a sixth of
# its rate (1,200 files at 4 ms: 956-1,066 files/s with a transaction per hit, 1,200-1,286 with none).
BOOKKEEPING_DELAY = 1.0
BLOCK_WRITER_FLUSH_TIMEOUT = 60.0  # seconds an unmount waits for the block writer: a full backlog on a slow disk
WRITE_BACKLOG = 64 << 20  # fetched bytes waiting to be written to the cache: bounds the memory it takes
DB_NAME = "cache.db"  # diskcache's database: its presence marks a directory as a cache


class CacheDirError(Exception):
    """The cache directory cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Namespace:
    """Where cached entries come from; its id keeps them apart from every other bucket's."""

    endpoint: str
    bucket: str
    prefix: str

    @property
    def id(self) -> str:
        text = f"{self.endpoint}\n{self.bucket}\n{self.prefix}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def describe(self) -> str:
        return f"{self.bucket}/{self.prefix} at {self.endpoint}"


def default_size(directory: Path) -> int:
    """The documented default cap: a share of the free space where the cache lives."""
    free = shutil.disk_usage(_existing_ancestor(directory)).free
    return max(MIN_DEFAULT_SIZE, int(free * DEFAULT_SHARE))


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def prepare_directory(directory: Path) -> Path:
    """Create the cache directory (0700), or check that an existing one is ours and a cache.

    A directory that holds other files is refused rather than filled with cache entries, and
    one owned by another user is refused rather than trusted.
    """
    directory = directory.absolute()
    try:
        directory.mkdir(mode=0o700, parents=True)
        return directory
    except FileExistsError:
        pass
    except OSError as exc:
        raise CacheDirError(f"cannot create cache directory {directory}: {exc.strerror}") from None
    info = directory.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise CacheDirError(f"cache directory {directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise CacheDirError(f"cache directory {directory} belongs to uid {info.st_uid}: use a directory of your own")
    if not (directory / DB_NAME).exists() and any(directory.iterdir()):
        raise CacheDirError(f"{directory} is not empty and is not an s3xfs cache: name an empty or new directory")
    if info.st_mode & 0o077:
        directory.chmod(0o700)  # ours and meant for the cache: nobody else may read cached objects
    return directory


class CacheStore:
    """One open cache directory, as seen by one namespace."""

    def __init__(self, directory: Path, namespace: Namespace, *, size_limit: int | None = None,
                 block_writer: bool = False) -> None:
        self.directory = prepare_directory(directory)
        self.namespace = namespace
        self.tag = namespace.id
        self.size_limit = size_limit if size_limit is not None else default_size(self.directory)
        self.cache = open_cache(self.directory, self.size_limit)
        self.limiter = trio.CapacityLimiter(DISK_THREADS)
        self._failures_logged: set[str] = set()
        self._errors = 0  # failed cache calls in this process (any thread: counted under the lock)
        self._errors_lock = threading.Lock()
        # A process of its own stores fetched blocks (see block_writer.py), when asked for: the
        # daemon does, tests of the cache's logic need not.
        self.block_writer = (BlockWriter(self.directory, self.tag, self.size_limit,
                                         lambda kind, message: self.failed(kind, message, counted=False))
                             if block_writer else None)
        self.backlog = MemoryBudget(WRITE_BACKLOG)
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...], int]] = deque()
        self._queued = trio.Event()
        self._deferred: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []  # bookkeeping, queued later
        self._deferred_waiting = trio.Event()
        self._flushing = trio.Lock()
        self._token: trio.lowlevel.TrioToken | None = None  # set by writer(): reads report to it
        self.guard(self._register)

    def key(self, kind: str, *parts: object) -> str:
        """A cache key of this namespace: kinds never collide, parts are joined unambiguously."""
        return "\0".join((self.tag, kind, *map(str, parts)))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking cache call in a worker thread."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def write(self, fn: Callable[..., Any], *args: Any, size: int) -> None:
        """Queue a blocking cache write of ``size`` bytes of data; waits while they do not fit the backlog."""
        await self.backlog.acquire(size)
        self._queue.append((fn, args, size))
        self._queued.set()

    def queue(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a small blocking cache write (metadata): never waits."""
        self._queue.append((fn, args, 0))
        self._queued.set()

    def defer_threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """:meth:`queue` from a worker thread, within ``BOOKKEEPING_DELAY`` (a cache read that has
        something to record, worth batching with the next ones)."""
        try:
            if self._token is None:
                raise trio.RunFinishedError
            self._token.run_sync_soon(self._defer, fn, args)
        except trio.RunFinishedError:
            self.guard(fn, *args)  # no writer running (yet, or any more): record it here and now

    def _defer(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._deferred.append((fn, args))
        self._deferred_waiting.set()

    def _queue_deferred(self) -> None:
        for fn, args in self._deferred:
            self.queue(fn, *args)
        self._deferred.clear()

    async def writer(self) -> None:
        """The task that applies queued writes, in order (runs in the filesystem's nursery)."""
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deferred_writer)
            while True:
                await self._queued.wait()
                self._queued = trio.Event()
                await self._apply_queued()

    async def _deferred_writer(self) -> None:
        while True:
            await self._deferred_waiting.wait()
            await trio.sleep(BOOKKEEPING_DELAY)
            self._deferred_waiting = trio.Event()
            self._queue_deferred()

    async def flush(self) -> None:
        """Apply every queued and deferred write now, and wait for the block writer to store what
        it was sent (at unmount: nothing fetched is lost to the cache)."""
        self._queue_deferred()
        await self._apply_queued()
        writer = self.block_writer
        if writer is not None and writer.running:
            async with self._flushing:  # the writer's one sending thread at a time
                with trio.CancelScope(shield=True):
                    stored = await trio.to_thread.run_sync(writer.flush, BLOCK_WRITER_FLUSH_TIMEOUT)
            if not stored and writer.running:
                log.warning("cache %s: the block writer has not stored its backlog after %.0f s",
                            self.directory, BLOCK_WRITER_FLUSH_TIMEOUT)

    def send_block(self, name: str, data: bytes | bytearray | memoryview) -> bool:
        """Hand a block to the block writer (from the writer thread); False: store it here instead."""
        if self.block_writer is None:
            return False
        try:
            self.block_writer.send(name, data)
        except BlockWriterGone:
            return False
        return True

    @property
    def errors(self) -> int:
        """Failed cache calls, the block writer's included."""
        return self._errors + (self.block_writer.failed if self.block_writer is not None else 0)

    async def _apply_queued(self) -> None:
        async with self._flushing:
            while self._queue:
                batch = list(self._queue)
                self._queue.clear()
                try:
                    # A batch taken off the queue is always applied, also when the writer task is
                    # cancelled (unmount): run_sync would raise a pending Cancelled before starting
                    # the thread, and a lost "forget" would leave a stale listing for the next mount.
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(self._apply, batch)
                finally:
                    for _, _, size in batch:
                        if size:
                            self.backlog.release(size)

    def _apply(self, batch: list[tuple[Callable[..., Any], tuple[Any, ...], int]]) -> None:
        for fn, args, _ in batch:
            self.guard(fn, *args)

    def put(self, name: str, *pieces: bytes | bytearray | memoryview) -> bool:
        """Store the concatenation of ``pieces`` under ``name`` (blocks: call in a worker thread)."""
        return put_value(self.cache, self.tag, name, *pieces)

    def guard(self, fn: Callable[..., T], *args: Any, default: T | None = None, **kwargs: Any) -> T | None:
        """``fn(*args, **kwargs)``, or ``default`` if the cache failed: a cache problem is a miss,
        never a failed file operation (logged once per kind of failure)."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            expected = isinstance(exc, (OSError, diskcache.Timeout, sqlite3.Error))
            self.failed(type(exc).__name__, str(exc), exc_info=None if expected else exc)
            return default

    def failed(self, kind: str, message: str, *, exc_info: BaseException | None = None, counted: bool = True) -> None:
        """Count a failed cache call (unless the block writer counted it) and log its kind once."""
        with self._errors_lock:
            self._errors += counted
            first = kind not in self._failures_logged
            self._failures_logged.add(kind)
        if first:
            log.warning("cache %s: %s: %s (treated as a miss; logged once)", self.directory, kind, message,
                        exc_info=exc_info)

    def _register(self) -> None:
        with open(self.directory / (REGISTRY + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two mounts starting at once both get in
            known = _load_registry(self.directory)
            known[self.tag] = {"endpoint": self.namespace.endpoint, "bucket": self.namespace.bucket,
                               "prefix": self.namespace.prefix, "last_mount": time.time()}
            temporary = self.directory / (REGISTRY + ".new")
            temporary.write_text(json.dumps(known, indent=1))
            os.replace(temporary, self.directory / REGISTRY)

    def close(self) -> None:
        if self.block_writer is not None:
            self.block_writer.close()
        self.cache.close()


def put_value(cache: diskcache.Cache, tag: str, name: str, *pieces: bytes | bytearray | memoryview) -> bool:
    """Store the concatenation of ``pieces`` under ``name``, tagged ``tag`` (blocks: a worker thread).

    A value large enough for a file of its own is handed to diskcache as a file object that reads
    the pieces in place, so it reaches its file in one write per piece and is never joined into a
    copy: given bytes, diskcache writes them line by line (it iterates an ``io.BytesIO``), about a
    thousand GIL-holding writes for 256 KiB of binary data, which starved the FUSE thread while
    the cache filled.
    """
    if sum(map(len, pieces)) >= cache.disk_min_file_size:
        return bool(cache.set(name, _PiecesReader(pieces), read=True, tag=tag))
    return bool(cache.set(name, b"".join(pieces), tag=tag))


class _PiecesReader:
    """A binary file object over pieces of a value, read in place (see :func:`put_value`)."""

    def __init__(self, pieces: tuple[bytes | bytearray | memoryview, ...]) -> None:
        self._pieces = [memoryview(piece) for piece in pieces if len(piece)]

    def read(self, size: int = -1) -> memoryview | bytes:
        if not self._pieces:
            return b""
        piece = self._pieces[0]
        if 0 <= size < len(piece):
            self._pieces[0] = piece[size:]
            return piece[:size]
        del self._pieces[0]
        return piece


def open_cache(directory: Path, size_limit: int) -> diskcache.Cache:
    """The diskcache of a cache directory; every opener passes the same settings."""
    return diskcache.Cache(
        str(directory),
        size_limit=max(MIN_SIZE, size_limit),
        eviction_policy="least-recently-used",
        tag_index=True,  # clearing one namespace is an indexed DELETE
        cull_limit=CULL_LIMIT,
        timeout=SQLITE_TIMEOUT,
        statistics=False,
    )


def _load_registry(directory: Path) -> dict[str, dict[str, Any]]:
    try:
        value = json.loads((directory / REGISTRY).read_text())
    except (OSError, ValueError):
        value = {}
    return value if isinstance(value, dict) else {}


# --- maintenance: ``s3xfs cache clear`` and ``s3xfs cache info`` -------------------------------------


def namespaces(directory: Path) -> dict[str, dict[str, Any]]:
    """Every namespace that has used the directory: id -> {endpoint, bucket, prefix, last_mount,
    entries, bytes} (entries and bytes: what it holds now; 0 once evicted or cleared)."""
    cache = _open_existing(directory)
    try:
        known = _load_registry(directory)
        for namespace_id, facts in known.items():
            count, size = cache._sql("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM Cache WHERE tag = ?",
                                     (namespace_id,)).fetchone()
            facts.update(entries=count, bytes=size)
        return known
    finally:
        cache.close()


def clear(directory: Path, ids: list[str] | None = None) -> int:
    """Drop the entries of the given namespaces (all of them when ``ids`` is None); entries removed."""
    cache = _open_existing(directory)
    try:
        if ids is None:
            return cache.clear(retry=True)
        return sum(cache.evict(namespace_id, retry=True) for namespace_id in ids)
    finally:
        cache.close()


def volume(directory: Path) -> int:
    """Bytes the cache directory holds, as diskcache counts them against the cap."""
    cache = _open_existing(directory)
    try:
        return cache.volume()
    finally:
        cache.close()


def _open_existing(directory: Path) -> diskcache.Cache:
    if not (directory / DB_NAME).exists():
        raise CacheDirError(f"{directory} is not an s3xfs cache directory (no {DB_NAME})")
    # The size limit is kept in the database (diskcache settings): open without changing it.
    return diskcache.Cache(str(directory), timeout=SQLITE_TIMEOUT, tag_index=True,
                           eviction_policy="least-recently-used")
