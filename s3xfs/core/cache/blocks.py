"""The data cache: fixed-size blocks of object versions, each stored with its CRC-32.

A block is keyed by (key, ETag, object size, block size, index), so a block is only ever served
for the exact version a handle pinned at open; a changed object has a new ETag and simply misses.
Every block is stored as ``CRC-32 (4 bytes, big-endian) + data`` and verified on every read: a
block that fails (a bit flip, a truncated file, a length that does not fit its place in the
object) is deleted and fetched again, never served.

:class:`CachedSource` is what a :class:`~s3xfs.core.prefetch.Prefetcher` reads from when the mount
has a cache: the blocks of a range that are cached come from disk, the missing runs come from one
ranged GET each, and what was fetched is queued for the cache's writer
(:meth:`~s3xfs.core.cache.store.CacheStore.write`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections import Counter
from functools import partial

import diskcache

from ...client.errors import ClientError
from ...client.protocol import ObjectClient
from ..gather import gather
from .store import CacheStore

log = logging.getLogger(__name__)

HEADER = 4  # bytes of CRC-32 in front of each block (zlib's: no copy of the block, releases the GIL)


def _crc(data: bytes | bytearray | memoryview) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def stored_form(block: bytes | bytearray | memoryview) -> tuple[bytes, bytes | bytearray | memoryview]:
    """What is stored for a block, in pieces: its CRC-32, then the block itself (never joined)."""
    return _crc(block), block


class BlockCache:
    """Blocks of one namespace in a :class:`CacheStore`. The methods without ``async`` block:
    call them through ``store.run`` (worker threads)."""

    def __init__(self, store: CacheStore, block_size: int) -> None:
        if block_size <= 0:
            raise ValueError("the block size must be positive")
        self.store = store
        self.block_size = block_size
        # Updated by the worker threads of several reads at once: increments are made under this
        # lock (a dict's ``+=`` is not atomic across threads), once per call; reading is lock-free.
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._touched: list[int] = []  # rowids of hits whose access time is not recorded yet
        self._touched_lock = threading.Lock()  # reads append from several threads; the writer takes the list

    def _key(self, key: str, etag: str, size: int, index: int) -> str:
        return self.store.key("block", etag, size, self.block_size, index, key)

    def block_length(self, size: int, index: int) -> int:
        return max(0, min(self.block_size, size - index * self.block_size))

    def load(self, key: str, etag: str, size: int, indexes: range) -> list[memoryview | None]:
        """The verified data of each block, or None where it is missing or was corrupt (then deleted)."""
        found: list[memoryview | None] = []
        corrupt = 0
        for index in indexes:
            name = self._key(key, etag, size, index)
            length = self.block_length(size, index)
            raw = self.store.guard(self._read, name, HEADER + length)
            if raw is None:
                found.append(None)
                continue
            data = memoryview(raw)[HEADER:] if isinstance(raw, bytes) else None  # not ours: corrupt
            if data is None or len(data) != length or _crc(data) != bytes(raw[:HEADER]):
                corrupt += 1
                log.warning("cached block %d of %s (ETag %s) failed its checksum: dropped, fetching it again",
                            index, key, etag)
                self.store.guard(self.store.cache.delete, name)
                found.append(None)
                continue
            found.append(data)
        hits = sum(piece is not None for piece in found)
        self._count(block_hits=hits, block_misses=len(found) - hits - corrupt, blocks_corrupt=corrupt)
        return found

    def counters(self) -> dict[str, int]:
        """Hits, misses, corrupt blocks, and blocks stored here or by the block writer."""
        with self._stats_lock:
            counts = dict(self.stats)
        writer = self.store.block_writer
        if writer is not None:
            counts["blocks_stored"] = counts.get("blocks_stored", 0) + writer.stored
        return counts

    def _count(self, **amounts: int) -> None:
        with self._stats_lock:
            self.stats.update(amounts)

    def _read(self, name: str, expected: int) -> object:
        """A stored value (``expected`` bytes long if it is intact), read without a write transaction.

        diskcache's own ``get`` under least-recently-used eviction records the access inside a
        write transaction, so every hit of every mount queued on SQLite's one lock. Here the row
        is looked up with a plain SELECT (WAL readers never wait) and its access time is recorded
        later, in batches, by the cache's writer (:meth:`_touch`): LRU order is kept, late by
        ``BOOKKEEPING_DELAY`` plus the writes queued before it (evictions meanwhile see the older
        times). Relies on diskcache 5's Cache table (pinned in pyproject.toml).
        """
        cache = self.store.cache
        row = cache._sql("SELECT rowid, mode, filename, value FROM Cache WHERE key = ? AND raw = 1",
                         (name,)).fetchone()
        if row is None:
            return None
        rowid, mode, filename, value = row
        if mode == diskcache.core.MODE_BINARY and filename:
            try:
                data: object = _read_file(os.path.join(cache.directory, filename), expected)
            except FileNotFoundError:  # evicted by another process between the SELECT and the open
                return None
        else:
            data = value  # a small block (SQLite gives a BLOB as bytes); anything else is dropped as corrupt
        with self._touched_lock:
            self._touched.append(rowid)
            first = len(self._touched) == 1
        if first:
            self.store.defer_threadsafe(self._touch)
        return data

    def _touch(self) -> None:
        """Record the accesses of recent hits (runs in the cache's writer, in one transaction)."""
        with self._touched_lock:
            rowids, self._touched = self._touched, []
        if not rowids:
            return
        cache = self.store.cache
        now = time.time()
        with cache.transact():
            cache._con.executemany("UPDATE Cache SET access_time = ? WHERE rowid = ?",
                                   [(now, rowid) for rowid in rowids])

    def save(self, key: str, etag: str, size: int, first: int, data: bytes | bytearray | memoryview) -> None:
        """Store consecutive blocks starting at block ``first``; ``data`` covers them exactly."""
        view = memoryview(data)
        offset, index = 0, first
        while offset < len(view):
            length = self.block_length(size, index)
            block = view[offset:offset + length]
            if len(block) != length:
                break  # a short tail (never happens for a complete GET): not a whole block
            name = self._key(key, etag, size, index)
            if not self.store.send_block(name, block):  # else the block writer stores and counts it
                if self.store.guard(self.store.put, name, *stored_form(block)):
                    self._count(blocks_stored=1)
            offset += length
            index += 1

    def cached_bytes(self, key: str, etag: str, size: int) -> int:
        """How much of this object version the cache holds (for ``s3xfs warm``): no reads of data."""
        total = 0
        count = (size + self.block_size - 1) // self.block_size
        for index in range(count):
            if self.store.guard(self.store.cache.__contains__, self._key(key, etag, size, index)):
                total += self.block_length(size, index)
        return total


def _read_file(path: str, expected: int) -> bytes:
    """The file's bytes: ``expected`` of them, or as many as it has, or one more if it is longer
    (whatever comes back is checked against its length and CRC by the caller).

    Plain ``os`` calls: ``open()`` would add an fstat, a terminal check, two seeks and a read at
    the end of the file to every block read, each a release and re-take of the GIL that the FUSE
    thread waits for.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pieces: list[bytes] = []
        got = 0
        while got < expected:  # one read, unless the kernel returns a short one
            chunk = os.read(fd, expected + 1 - got)
            if not chunk:
                break
            pieces.append(chunk)
            got += len(chunk)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
    finally:
        os.close(fd)


class CachedSource:
    """A range source for one object version: cached blocks first, ranged GETs for the rest."""

    def __init__(self, client: ObjectClient, blocks: BlockCache, key: str, etag: str, size: int) -> None:
        self.client = client
        self.blocks = blocks
        self.key = key
        self.etag = etag
        self.size = size

    async def get_range(self, key: str, start: int, length: int, *, if_match: str | None = None) -> bytes | bytearray:
        """Like ObjectClient.get_range for this version (``key`` may change: a rename keeps the ETag)."""
        if if_match != self.etag:
            raise ValueError("a CachedSource serves only the object version it was made for")
        self.key = key
        end = min(start + length, self.size)
        if end <= start:
            return b""
        bs = self.blocks.block_size
        first, last = start // bs, (end - 1) // bs
        store = self.blocks.store
        cached = await store.run(self.blocks.load, self.key, self.etag, self.size, range(first, last + 1))
        pieces: list[bytes | bytearray | memoryview | None] = list(cached)
        runs = _missing_runs(cached, first)
        if len(runs) == 1:
            await self._fetch_run(*runs[0], pieces, first)
        elif runs:
            await self._fetch_runs(runs, pieces, first)
        data = pieces[0] if len(pieces) == 1 else b"".join(piece for piece in pieces if piece is not None)
        assert data is not None
        base = first * bs
        if start == base and end - start == len(data):
            return data  # type: ignore[return-value]  # a memoryview serves reads like bytes, uncopied
        return memoryview(data)[start - base:end - base]  # type: ignore[return-value]

    async def _fetch_runs(self, runs: list[tuple[int, int]], pieces: list, first: int) -> None:
        """The GETs of several runs at once; the first failure is raised as is (see core/gather.py)."""
        await gather(*(partial(self._fetch_run, run_first, run_last, pieces, first) for run_first, run_last in runs))

    async def _fetch_run(self, run_first: int, run_last: int, pieces: list, first: int) -> None:
        """One GET for the missing blocks ``run_first..run_last``; split into ``pieces``; stored later."""
        bs = self.blocks.block_size
        begin = run_first * bs
        stop = min((run_last + 1) * bs, self.size)
        data = await self.client.get_range(self.key, begin, stop - begin, if_match=self.etag)
        if len(data) != stop - begin:
            raise ClientError(f"GetObject {self.key} [{begin}, {stop}): {len(data)} bytes instead of {stop - begin}: "
                              "the object is shorter than it was at open", key=self.key)
        view = memoryview(data)
        for index in range(run_first, run_last + 1):
            pieces[index - first] = view[(index - run_first) * bs:(index - run_first + 1) * bs]
        await self.blocks.store.write(self.blocks.save, self.key, self.etag, self.size, run_first, data,
                                      size=len(data))


def _missing_runs(cached: list[memoryview | None], first: int) -> list[tuple[int, int]]:
    """Consecutive missing block indexes, as (first, last) pairs."""
    runs: list[tuple[int, int]] = []
    for offset, piece in enumerate(cached):
        index = first + offset
        if piece is not None:
            continue
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs
