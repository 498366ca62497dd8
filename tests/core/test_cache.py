"""The disk caches (--cache DIR) in-process: blocks, metadata, namespaces, and the filesystem on top.

Everything runs against MemoryClient and a cache directory under tmp_path. A "remount" is a new
CacheStore and a new Filesystem on the same directory, as a new process would open them.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import sqlite3
import tempfile
import threading
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3xfs.client import errors as client_errors
from s3xfs.client.memory import MemoryClient
from s3xfs.client.protocol import ObjectInfo
from s3xfs.core.cache import BlockCache, CachedSource, CacheStore, Entry, Listing, MetadataCache, Namespace
from s3xfs.core.cache import metadata as metadata_module
from s3xfs.core.cache import store as store_module
from s3xfs.core.cache.blocks import _crc
from s3xfs.core.errors import FsError
from s3xfs.core.fs import Filesystem
from s3xfs.core.inodes import ROOT_INODE
from tests.support.core import names, resolve, run_filesystem

NS = Namespace("https://s3express-usw2-az1.us-west-2.amazonaws.com", "test--usw2-az1--x-s3", "")
LIMIT = 64 << 20
BS = 1000  # block size of the CachedSource tests: unaligned to everything on purpose


class RecordingClient(MemoryClient):
    """MemoryClient that also remembers the (key, start, length) of every ranged GET."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("seed", 1)
        super().__init__(*args, **kwargs)
        self.ranges: list[tuple[str, int, int]] = []

    async def get_range(self, key: str, start: int, length: int, *, if_match: str | None = None) -> bytes:
        self.ranges.append((key, start, length))
        return await super().get_range(key, start, length, if_match=if_match)


def open_store(directory: Path, namespace: Namespace = NS) -> CacheStore:
    return CacheStore(directory, namespace, size_limit=LIMIT)


def with_writer(store: CacheStore, body: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``body()`` on trio with the store's writer task running; flush at the end."""

    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.writer)
            try:
                return await body()
            finally:
                await store.flush()
                nursery.cancel_scope.cancel()

    return trio.run(main)


def source_for(client: MemoryClient, blocks: BlockCache, key: str) -> CachedSource:
    info = client.objects[key]
    return CachedSource(client, blocks, key, info.etag, info.size)


async def get(source: CachedSource, start: int, length: int) -> bytes:
    return bytes(await source.get_range(source.key, start, length, if_match=source.etag))


def runs(indexes: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted block indexes, as (first, last)."""
    out: list[tuple[int, int]] = []
    for index in indexes:
        if out and out[-1][1] == index - 1:
            out[-1] = (out[-1][0], index)
        else:
            out.append((index, index))
    return out


# --- CachedSource -------------------------------------------------------------------------------

def test_cached_source_fetches_only_the_missing_runs(tmp_path):
    client = RecordingClient()
    data = random.Random(1).randbytes(10_500)  # 11 blocks, the last one 500 bytes
    client.put_object_sync("k", data)
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, BS)

    async def body() -> None:
        source = source_for(client, blocks, "k")
        for index in (2, 3, 6):  # warm three blocks, one GET each
            assert await get(source, index * BS, BS) == data[index * BS:(index + 1) * BS]
        await store.flush()
        client.ranges.clear()
        assert await get(source, 1500, 8200) == data[1500:9700]  # blocks 1..9
        assert sorted(client.ranges) == [("k", 1000, 1000), ("k", 4000, 2000), ("k", 7000, 3000)]
        await store.flush()
        client.ranges.clear()
        assert await get(source, 1001, 8998) == data[1001:9999]  # now all cached
        assert client.ranges == []
        # The last, partial block: fetched with its true length, then served from the cache.
        assert await get(source, 10_200, 5000) == data[10_200:]
        assert client.ranges == [("k", 10_000, 500)]
        await store.flush()
        client.ranges.clear()
        assert await get(source, 9_999, 10_000) == data[9_999:]
        assert client.ranges == []
        assert await get(source, 0, len(data)) == data
        assert client.ranges == [("k", 0, 1000)]  # block 0 was the only one never read

    with_writer(store, body)
    assert blocks.stats["blocks_stored"] == 11 and blocks.stats["blocks_corrupt"] == 0
    store.close()


def test_cached_source_empty_and_past_end_ranges_fetch_nothing(tmp_path):
    client = RecordingClient()
    client.put_object_sync("k", b"x" * 2500)
    client.put_object_sync("empty", b"")
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, BS)

    async def body() -> None:
        source = source_for(client, blocks, "k")
        assert await get(source, 0, 0) == b""
        assert await get(source, 1234, 0) == b""
        assert await get(source, 2500, 10) == b""
        assert await get(source, 9000, 10) == b""
        assert await get(source_for(client, blocks, "empty"), 0, 100) == b""
        with pytest.raises(ValueError):
            await source.get_range("k", 0, 10, if_match="another-etag")

    with_writer(store, body)
    assert client.ranges == [] and client.calls["GetObject"] == 0
    store.close()


def test_cached_source_random_ranges_match_a_model(tmp_path):
    """Every range returns exactly the object's bytes, and the GETs are exactly the runs of blocks
    the cache did not hold before the call."""
    rng = random.Random(5)
    client = RecordingClient()
    size = 23 * BS + 321
    data = rng.randbytes(size)
    client.put_object_sync("k", data)
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, BS)
    count = (size + BS - 1) // BS

    async def body() -> None:
        source = source_for(client, blocks, "k")
        cached: set[int] = set()
        for _ in range(150):
            start = rng.randrange(0, size + 50)
            length = rng.choice([0, 1, rng.randrange(1, 3 * BS), rng.randrange(1, size + 1)])
            client.ranges.clear()
            assert await get(source, start, length) == data[start:start + length], (start, length)
            end = min(start + length, size)
            wanted = [i for i in range(start // BS, (end - 1) // BS + 1) if i not in cached] if end > start else []
            expected = [("k", a * BS, min((b + 1) * BS, size) - a * BS) for a, b in runs(wanted)]
            assert sorted(client.ranges) == expected, (start, length)
            await store.flush()
            cached.update(wanted)
        assert len(cached) <= count

    with_writer(store, body)
    store.close()


# Blocks of 64 KiB are stored by diskcache in files of their own (values over 32 KiB).
FILE_BLOCK = 64 * 1024


def block_path(store: CacheStore, blocks: BlockCache, key: str, etag: str, size: int, index: int) -> Path:
    """The file diskcache keeps a block in (public API: get(read=True) hands back the open file)."""
    handle = store.cache.get(blocks._key(key, etag, size, index), read=True)
    assert handle is not None, "block not cached"
    with handle:
        return Path(handle.name)


def flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 7)


def extend(path: Path) -> None:
    """A block file with its intact block followed by more bytes: read to its end, never cut short."""
    with path.open("ab") as f:
        f.write(b"\0" * 7)


@pytest.mark.parametrize("damage", [flip_byte, truncate, extend])
def test_corrupt_block_file_is_dropped_and_refetched(tmp_path, damage):
    client = RecordingClient()
    data = random.Random(2).randbytes(3 * FILE_BLOCK - 100)
    info = client.put_object_sync("k", data)
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, FILE_BLOCK)

    async def body() -> None:
        source = source_for(client, blocks, "k")
        assert await get(source, 0, len(data)) == data
        await store.flush()
        damage(block_path(store, blocks, "k", info.etag, len(data), 1))
        client.ranges.clear()
        assert await get(source, 0, len(data)) == data  # never the damaged bytes
        assert client.ranges == [("k", FILE_BLOCK, FILE_BLOCK)]
        assert blocks.stats["blocks_corrupt"] == 1
        await store.flush()
        client.ranges.clear()
        assert await get(source, 0, len(data)) == data  # stored again, intact
        assert client.ranges == []

    with_writer(store, body)
    store.close()


def test_deleted_block_file_is_a_miss(tmp_path):
    client = RecordingClient()
    data = random.Random(3).randbytes(2 * FILE_BLOCK)
    info = client.put_object_sync("k", data)
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, FILE_BLOCK)

    async def body() -> None:
        source = source_for(client, blocks, "k")
        assert await get(source, 0, len(data)) == data
        await store.flush()
        block_path(store, blocks, "k", info.etag, len(data), 0).unlink()
        client.ranges.clear()
        assert await get(source, 0, len(data)) == data
        assert client.ranges == [("k", 0, FILE_BLOCK)]

    with_writer(store, body)
    assert store.errors == 0  # diskcache reports a vanished file as a miss
    store.close()


def test_block_of_the_wrong_length_is_never_served(tmp_path):
    client = RecordingClient()
    data = random.Random(4).randbytes(3 * BS)
    info = client.put_object_sync("k", data)
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, BS)
    short = b"short but well checksummed"
    # A valid checksum, but not the length block 1 must have; and one that is not even bytes.
    store.cache.set(blocks._key("k", info.etag, len(data), 1), _crc(short) + short, tag=store.tag)
    store.cache.set(blocks._key("k", info.etag, len(data), 2), "a str, as another version might store", tag=store.tag)
    store.cache.set(blocks._key("k", info.etag, len(data), 0), b"\x01", tag=store.tag)  # shorter than the header

    async def body() -> None:
        source = source_for(client, blocks, "k")
        assert await get(source, 0, len(data)) == data
        assert client.ranges == [("k", 0, 3 * BS)]

    with_writer(store, body)
    assert blocks.stats["blocks_corrupt"] == 3
    # Replaced by the intact blocks just fetched.
    assert [bool(piece) for piece in blocks.load("k", info.etag, len(data), range(3))] == [True, True, True]
    store.close()


def test_failed_and_short_gets_raise_unwrapped_and_store_nothing_wrong(tmp_path):
    client = RecordingClient()
    data = random.Random(7).randbytes(3 * BS)
    info = client.put_object_sync("k", data)
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, BS)

    async def body() -> None:
        source = source_for(client, blocks, "k")
        for start in (0, BS):  # one run, then two runs (blocks 0 and 2) around a cached block 1
            if start:
                assert await get(source, BS, BS) == data[BS:2 * BS]
                await store.flush()
            client.fail_next("GetObject", client_errors.Unavailable("GetObject k: 503 SlowDown"))
            with pytest.raises(client_errors.Unavailable):  # as is: never inside an ExceptionGroup
                await get(source, 0, len(data))
            await store.flush()
        real = client.get_range

        async def short(key, start, length, *, if_match=None):
            return (await real(key, start, length, if_match=if_match))[:-1]

        client.get_range = short  # type: ignore[method-assign]
        with pytest.raises(client_errors.ClientError, match="shorter"):
            await get(source, 0, len(data))
        client.get_range = real  # type: ignore[method-assign]
        client.put_object_sync("k", b"v" * len(data))  # a new version: the old one is gone
        with pytest.raises(client_errors.PreconditionFailed):
            await get(source, 0, len(data))

    with_writer(store, body)
    for index, block in enumerate(blocks.load("k", info.etag, len(data), range(3))):
        assert block is None or bytes(block) == data[index * BS:(index + 1) * BS]  # only ever intact blocks
    assert blocks.cached_bytes("k", client.objects["k"].etag, len(data)) == 0
    store.close()


def test_block_cache_keys_pin_the_version(tmp_path):
    """A block is served only for the key, ETag, size and block size it was stored under."""
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, BS)
    blocks.save("k", "etag1", 2 * BS, 0, b"a" * BS + b"b" * BS)
    assert [bytes(b) for b in blocks.load("k", "etag1", 2 * BS, range(2))] == [b"a" * BS, b"b" * BS]
    assert blocks.load("k", "etag2", 2 * BS, range(2)) == [None, None]
    assert blocks.load("other", "etag1", 2 * BS, range(2)) == [None, None]
    assert blocks.load("k", "etag1", 2 * BS + 1, range(2)) == [None, None]
    assert BlockCache(store, 2 * BS).load("k", "etag1", 2 * BS, range(1)) == [None]
    assert blocks.cached_bytes("k", "etag1", 2 * BS) == 2 * BS
    assert blocks.cached_bytes("k", "etag2", 2 * BS) == 0
    store.close()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   sqlite3.OperationalError("database is locked")])
def test_a_failing_cache_is_a_miss_never_an_error(tmp_path, monkeypatch, error):
    client = RecordingClient()
    data = random.Random(6).randbytes(5 * BS + 17)
    info = client.put_object_sync("k", data)
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, BS)
    metadata = MetadataCache(store, 60)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    for name in ("get", "set", "delete", "__contains__"):
        monkeypatch.setattr(store.cache, name, fail)

    async def body() -> None:
        source = source_for(client, blocks, "k")
        for _ in range(2):
            client.ranges.clear()
            assert await get(source, 0, len(data)) == data
            assert await get(source, 1234, 2000) == data[1234:3234]
            await store.flush()
            assert len(client.ranges) == 2  # every read misses, and is served all the same

    with_writer(store, body)
    assert blocks.cached_bytes("k", info.etag, len(data)) == 0
    metadata.save_listing("", Listing(time.time(), ["d"], []))
    assert metadata.load_listing("") is None
    metadata.save_entry("k", Entry(time.time(), info))
    assert metadata.load_entry("k") is None
    metadata.forget(["k"], [""])
    assert store.errors > 0 and blocks.stats["blocks_stored"] == 0
    monkeypatch.undo()
    store.close()


def test_write_backlog_bounds_memory_and_flush_applies_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "WRITE_BACKLOG", 100)
    store = open_store(tmp_path / "c")
    applied: list[str] = []

    async def main() -> None:
        done: list[str] = []

        async def write_late() -> None:
            await store.write(applied.append, "b", size=60)
            done.append("b")

        async with trio.open_nursery() as nursery:  # no writer task: only flush() applies
            await store.write(applied.append, "a", size=60)
            assert store.backlog.used == 60
            nursery.start_soon(write_late)
            await trio.testing.wait_all_tasks_blocked()
            assert done == [] and store.backlog.used == 60  # waits: 120 bytes do not fit in 100
            store.queue(applied.append, "meta")  # metadata never waits
            await store.flush()
            assert applied == ["a", "meta"]
            await trio.testing.wait_all_tasks_blocked()
            assert done == ["b"]
            for n in range(20):
                store.queue(applied.append, f"m{n}")
            await store.flush()
        assert applied == ["a", "meta", "b", *(f"m{n}" for n in range(20))]
        assert store.backlog.used == 0 and store.backlog.peak <= 100

    trio.run(main)
    store.close()


def test_writes_queued_when_the_writer_is_cancelled_are_not_lost(tmp_path):
    """Unmount cancels the writer task; whatever it had taken off the queue must still be applied
    (a lost "forget this listing" would let the next mount believe a stale listing)."""
    store = open_store(tmp_path / "c")
    applied: list[str] = []
    started, release = threading.Event(), threading.Event()

    def slow(name: str) -> None:
        started.set()
        release.wait(10)
        applied.append(name)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.writer)
            store.queue(slow, "first")
            await trio.to_thread.run_sync(started.wait, 10)  # the writer is applying "first" in a thread
            store.queue(applied.append, "second")
            nursery.cancel_scope.cancel()  # unmount
            release.set()
        await store.flush()  # what Filesystem.close does after the nursery is gone

    trio.run(main)
    assert applied == ["first", "second"]
    store.close()


# --- MetadataCache --------------------------------------------------------------------------------

INFO = ObjectInfo("dir/f", 12, "etag-1", 1_700_000_000.5, storage_class="EXPRESS_ONEZONE",
                  checksum_algorithm="CRC32C", checksum="AAAAAA==")


def test_listing_and_entry_round_trip(tmp_path):
    store = open_store(tmp_path / "c")
    metadata = MetadataCache(store, 60)
    now = time.time()
    metadata.save_listing("dir/", Listing(now, ["a", "b"], [INFO]))
    metadata.save_entry("dir/f", Entry(now, INFO))
    metadata.save_entry("dir/a", Entry(now, None))
    assert metadata.load_listing("dir/") == Listing(now, ["a", "b"], [INFO])
    assert metadata.load_entry("dir/f") == Entry(now, INFO)
    assert metadata.load_entry("dir/a") == Entry(now, None)
    assert metadata.load_listing("other/") is None and metadata.load_entry("dir/g") is None
    metadata.forget(["dir/f"], ["dir/"])
    assert metadata.load_listing("dir/") is None and metadata.load_entry("dir/f") is None
    assert metadata.load_entry("dir/a") is not None
    assert metadata.stats["listings_restored"] == 1 and metadata.stats["entries_restored"] == 3
    store.close()


def test_metadata_ttl_is_counted_from_the_fetch_time(tmp_path):
    store = open_store(tmp_path / "c")
    metadata = MetadataCache(store, 10)
    now = time.time()
    metadata.save_listing("old/", Listing(now - 11, [], [INFO]))
    metadata.save_listing("young/", Listing(now - 9, [], [INFO]))
    metadata.save_entry("old", Entry(now - 11, INFO))
    metadata.save_entry("young", Entry(now - 9, INFO))
    assert metadata.load_listing("old/") is None and metadata.load_entry("old") is None
    assert metadata.load_listing("young/") is not None and metadata.load_entry("young") is not None
    assert 0 < metadata.remaining(now - 9) <= 1
    assert MetadataCache(store, 0).load_listing("young/") is None  # TTL 0: nothing is ever served
    store.close()


def test_metadata_expiry_follows_the_wall_clock(tmp_path, monkeypatch):
    store = open_store(tmp_path / "c")
    metadata = MetadataCache(store, 30)
    metadata.save_listing("", Listing(time.time(), ["d"], []))
    assert metadata.load_listing("") is not None
    real = time.time
    monkeypatch.setattr(metadata_module, "time", types.SimpleNamespace(time=lambda: real() + 31))
    assert metadata.load_listing("") is None
    store.close()


def test_entries_from_the_future_are_ignored_beyond_the_slack(tmp_path):
    store = open_store(tmp_path / "c")
    metadata = MetadataCache(store, 60)
    now = time.time()
    slack = metadata_module.CLOCK_SLACK
    metadata.save_listing("far/", Listing(now + slack + 60, [], []))
    metadata.save_listing("near/", Listing(now + slack / 2, [], []))
    metadata.save_entry("far", Entry(now + slack + 60, INFO))
    assert metadata.load_listing("far/") is None and metadata.load_entry("far") is None
    assert metadata.load_listing("near/") is not None
    assert metadata.remaining(now + slack + 1, now) == 0
    # Indefinite TTL does not make an entry from the future good either.
    assert MetadataCache(store, math.inf).load_listing("far/") is None
    store.close()


def test_indefinite_ttl_serves_old_entries(tmp_path):
    store = open_store(tmp_path / "c")
    metadata = MetadataCache(store, math.inf)
    ten_years_ago = time.time() - 10 * 365 * 86400
    metadata.save_listing("", Listing(ten_years_ago, ["d"], [INFO]))
    metadata.save_entry("dir/f", Entry(ten_years_ago, INFO))
    assert metadata.load_listing("") == Listing(ten_years_ago, ["d"], [INFO])
    assert metadata.load_entry("dir/f") == Entry(ten_years_ago, INFO)
    assert metadata.remaining(ten_years_ago) == math.inf
    store.close()


BAD_VALUES = [
    b"{not json",
    b"\xff\xfe",
    b"[1, 2]",
    b"null",
    json.dumps({"v": metadata_module.FORMAT + 1, "t": 1.0, "dirs": [], "files": [], "file": None}).encode(),
    json.dumps({"t": 1.0, "dirs": [], "files": [], "file": None}).encode(),  # no version
    json.dumps({"v": metadata_module.FORMAT, "t": "yesterday", "dirs": [], "files": [], "file": None}).encode(),
    json.dumps({"v": metadata_module.FORMAT, "t": "NOW"}).encode(),
    b'{"v": %d, "t": NaN, "dirs": [], "files": [], "file": null}' % metadata_module.FORMAT,
    json.dumps({"v": metadata_module.FORMAT, "t": None}).encode(),
    12345,  # not bytes at all (as another program, or a pickled value, might leave)
    "a str",
]


@pytest.mark.parametrize("raw", BAD_VALUES, ids=range(len(BAD_VALUES)))
def test_malformed_metadata_is_ignored_and_deleted(tmp_path, raw):
    store = open_store(tmp_path / "c")
    metadata = MetadataCache(store, math.inf)
    list_name, entry_name = store.key("list", "dir/"), store.key("entry", "dir/f")
    store.cache.set(list_name, raw, tag=store.tag)
    store.cache.set(entry_name, raw, tag=store.tag)
    assert metadata.load_listing("dir/") is None
    assert metadata.load_entry("dir/f") is None
    assert list_name not in store.cache and entry_name not in store.cache
    store.close()


@pytest.mark.parametrize("value", [
    {"dirs": [], "files": [["dir/f", "twelve", "etag", 1.0, None, None, None]]},
    {"dirs": [], "files": [["dir/f", 12]]},
    {"dirs": [], "files": "nope"},
    {"dirs": None, "files": []},
    {"files": []},
])
def test_malformed_listing_fields_are_ignored_and_deleted(tmp_path, value):
    store = open_store(tmp_path / "c")
    metadata = MetadataCache(store, math.inf)
    name = store.key("list", "dir/")
    store.cache.set(name, json.dumps({"v": metadata_module.FORMAT, "t": time.time(), **value}).encode(), tag=store.tag)
    assert metadata.load_listing("dir/") is None
    assert name not in store.cache
    store.close()


# --- namespaces -----------------------------------------------------------------------------------

OTHER_NAMESPACES = [
    Namespace(NS.endpoint, "other--usw2-az1--x-s3", NS.prefix),
    Namespace(NS.endpoint, NS.bucket, "sub/"),
    Namespace("http://127.0.0.1:9000", NS.bucket, NS.prefix),
]


@pytest.mark.parametrize("other", OTHER_NAMESPACES, ids=["bucket", "prefix", "endpoint"])
def test_namespaces_never_see_each_other(tmp_path, other):
    directory = tmp_path / "c"
    one, two = open_store(directory), open_store(directory, other)
    assert one.tag != two.tag
    blocks_one, blocks_two = BlockCache(one, BS), BlockCache(two, BS)
    meta_one, meta_two = MetadataCache(one, math.inf), MetadataCache(two, math.inf)
    blocks_one.save("k", "etag", BS, 0, b"1" * BS)
    meta_one.save_listing("", Listing(time.time(), ["one"], []))
    meta_one.save_entry("k", Entry(time.time(), INFO))
    assert blocks_two.load("k", "etag", BS, range(1)) == [None]
    assert blocks_two.cached_bytes("k", "etag", BS) == 0
    assert meta_two.load_listing("") is None and meta_two.load_entry("k") is None
    blocks_two.save("k", "etag", BS, 0, b"2" * BS)
    meta_two.save_listing("", Listing(time.time(), ["two"], []))
    assert bytes(blocks_one.load("k", "etag", BS, range(1))[0]) == b"1" * BS
    assert bytes(blocks_two.load("k", "etag", BS, range(1))[0]) == b"2" * BS
    assert meta_one.load_listing("").dirs == ["one"] and meta_two.load_listing("").dirs == ["two"]

    known = store_module.namespaces(directory)
    assert set(known) == {one.tag, two.tag}
    assert known[two.tag]["bucket"] == other.bucket and known[two.tag]["prefix"] == other.prefix
    assert known[two.tag]["endpoint"] == other.endpoint

    assert store_module.clear(directory, [one.tag]) == 3
    assert blocks_one.load("k", "etag", BS, range(1)) == [None]
    assert meta_one.load_listing("") is None and meta_one.load_entry("k") is None
    assert bytes(blocks_two.load("k", "etag", BS, range(1))[0]) == b"2" * BS
    assert meta_two.load_listing("").dirs == ["two"]
    known = store_module.namespaces(directory)  # both still known: only their entries went
    assert known[one.tag]["entries"] == 0 and known[two.tag]["entries"] == 2

    store_module.clear(directory)
    assert blocks_two.load("k", "etag", BS, range(1)) == [None] and meta_two.load_listing("") is None
    assert {facts["entries"] for facts in store_module.namespaces(directory).values()} == {0}
    one.close()
    two.close()


def test_cache_directory_rules(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(store_module.CacheDirError):
        open_store(used)
    with pytest.raises(store_module.CacheDirError):
        store_module.clear(tmp_path / "nothing-here")
    store = open_store(tmp_path / "new" / "cache")
    assert (tmp_path / "new" / "cache").stat().st_mode & 0o777 == 0o700
    store.close()
    (tmp_path / "new" / "cache").chmod(0o755)
    open_store(tmp_path / "new" / "cache").close()  # reopened: ours, a cache, made private again
    assert (tmp_path / "new" / "cache").stat().st_mode & 0o777 == 0o700


# --- the filesystem with a cache --------------------------------------------------------------------

async def read_all(fs: Filesystem, ino: int, flags: int = os.O_RDONLY) -> bytes:
    handle = await fs.open(ino, flags)
    try:
        out, offset = b"", 0
        while chunk := await fs.read(handle.fh, offset, 128 * 1024):
            out += bytes(chunk)
            offset += len(chunk)
        return out
    finally:
        await fs.release(handle.fh)


async def walk(fs: Filesystem, ino: int = ROOT_INODE, path: str = "") -> dict[str, bytes | None]:
    """Every path under ``ino``: files with their bytes, directories with None."""
    out: dict[str, bytes | None] = {}
    for name in sorted(await names(fs, ino)):
        attrs = await fs.lookup(ino, name)
        child = f"{path}{name}"
        if attrs.is_dir:
            out[child] = None
            out.update(await walk(fs, attrs.ino, child + "/"))
        else:
            out[child] = await read_all(fs, attrs.ino)
    return out


async def write_file(fs: Filesystem, path: str, data: bytes) -> None:
    parent, _, name = path.rpartition("/")
    result, _ = await fs.create(await resolve(fs, parent), name, os.O_WRONLY | os.O_CREAT)
    await fs.write(result.fh, 0, data)
    await fs.flush(result.fh)
    await fs.release(result.fh)


def tree_of(keys: dict[str, bytes]) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for key, data in keys.items():
        parts = key.split("/")
        for depth in range(1, len(parts)):
            out["/".join(parts[:depth])] = None
        out[key] = data
    return out


TREE = {f"data/d{d}/f{f}.bin": random.Random(d * 10 + f).randbytes(3000 + 700 * f) for d in range(3) for f in range(3)}
TREE["top.txt"] = b"top"


@pytest.fixture
def mount(tmp_path):
    """``mount(client, fs_test, **FsOptions)``: one mount of the bucket with the cache under
    tmp_path (a new CacheStore each time, as a new process opens it)."""
    cache_dir = tmp_path / "cache"

    def mount(client: MemoryClient, fs_test, **options: Any) -> Any:
        options.setdefault("staging_dir", str(tmp_path / "staging"))
        options.setdefault("cache_block_size", 1024)
        store = open_store(cache_dir)
        try:
            return run_filesystem(fs_test, client, cache=store, **options)
        finally:
            store.close()

    return mount


def metadata_clock_ahead(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The disk cache's wall clock (what its TTLs count in) runs ``seconds`` ahead from now on."""
    real = time.time
    monkeypatch.setattr(metadata_module, "time", types.SimpleNamespace(time=lambda: real() + seconds))


def test_remount_within_the_ttl_makes_no_requests(mount):
    client = MemoryClient(seed=1)
    for key, data in TREE.items():
        client.put_object_sync(key, data)

    async def first(fs, client):
        assert await walk(fs) == tree_of(TREE)
        assert client.calls["ListObjectsV2"] > 0 and client.calls["GetObject"] > 0

    async def second(fs, client):
        client.calls.clear()
        assert await walk(fs) == tree_of(TREE)
        assert client.calls["ListObjectsV2"] == 0 and client.calls["HeadObject"] == 0, client.calls
        assert client.calls["GetObject"] == 0, client.calls
        assert fs.metadata.stats["listings_restored"] == 5  # '', data/, and data/d0..d2/

    mount(client, first, metadata_ttl=300)
    mount(client, second, metadata_ttl=300)


def test_remount_after_lookups_only_uses_the_entries(mount):
    """`cat data/d1/f2.bin` without an `ls`: the lookups' answers are on disk too."""
    client = MemoryClient(seed=1)
    for key, data in TREE.items():
        client.put_object_sync(key, data)

    async def cat(fs, client):
        client.calls.clear()
        assert await read_all(fs, await resolve(fs, "data/d1/f2.bin")) == TREE["data/d1/f2.bin"]
        assert (await fs.lookup(await resolve(fs, "data"), "absent")).ino == 0
        return dict(client.calls)

    first = mount(client, cat, metadata_ttl=300)
    assert first["HeadObject"] > 0 and first["GetObject"] > 0
    # The second lookup in data/ listed it (see LIST_FOR_LOOKUPS_AFTER): that listing, on disk,
    # answers the remount's lookups, "absent" included.
    assert first["ListObjectsV2"] > 0
    second = mount(client, cat, metadata_ttl=300)
    assert second == {}, second


def test_remount_after_the_ttl_lists_again(mount, monkeypatch):
    client = MemoryClient(seed=1)
    for key, data in TREE.items():
        client.put_object_sync(key, data)

    async def walk_and_count(fs, client):
        client.calls.clear()
        assert await walk(fs) == tree_of(TREE)
        return dict(client.calls)

    mount(client, walk_and_count, metadata_ttl=30)
    metadata_clock_ahead(monkeypatch, 31)
    counts = mount(client, walk_and_count, metadata_ttl=30)
    assert counts["ListObjectsV2"] >= 5, counts
    assert counts.get("GetObject", 0) == 0, counts  # the ETags did not change: the blocks still serve


def test_changed_object_is_read_fresh_after_the_ttl(mount, monkeypatch):
    client = MemoryClient(seed=1)
    old, new = b"o" * 5000, b"n" * 5000
    client.put_object_sync("data/f", old)

    async def read(fs, client):
        return await read_all(fs, await resolve(fs, "data/f"))

    assert mount(client, read, metadata_ttl=30) == old
    client.put_object_sync("data/f", new)  # a new ETag, the same size
    metadata_clock_ahead(monkeypatch, 31)
    assert mount(client, read, metadata_ttl=30) == new
    client.calls.clear()
    assert mount(client, read, metadata_ttl=30) == new  # and the new version is cached now
    assert client.calls.get("GetObject", 0) == 0


def test_partly_cached_object_changed_within_the_ttl_is_estale_never_mixed(mount):
    """Within the TTL a remount trusts the disk's ETag; if the object changed meanwhile, the blocks
    the cache lacks cannot be fetched for that version: ESTALE, never a mix of two versions; the
    next open asks the bucket and reads the new version."""
    client = MemoryClient(seed=1)
    old, new = b"o" * 5000, b"n" * 5000
    info = client.put_object_sync("f", old)

    async def first(fs, client):
        assert await read_all(fs, await resolve(fs, "f")) == old
        await fs.cache.flush()
        fs.cache.cache.delete(fs.blocks._key("f", info.etag, len(old), 3))  # as if evicted

    async def second(fs, client):
        ino = await resolve(fs, "f")
        with pytest.raises(FsError) as excinfo:
            await read_all(fs, ino)
        assert excinfo.value.errno == errno.ESTALE
        assert await read_all(fs, ino) == new

    mount(client, first, metadata_ttl=300)
    client.put_object_sync("f", new)
    mount(client, second, metadata_ttl=300)


def test_ttl_zero_never_restores_metadata(mount):
    client = MemoryClient(seed=1)
    client.put_object_sync("data/f", b"1" * 3000)

    async def read(fs, client):
        client.calls.clear()
        assert await walk(fs) == tree_of({"data/f": b"1" * 3000})
        return dict(client.calls)

    mount(client, read, metadata_ttl=0, negative_ttl=0)
    counts = mount(client, read, metadata_ttl=0, negative_ttl=0)
    assert counts["ListObjectsV2"] > 0 and counts["HeadObject"] > 0 and counts.get("GetObject", 0) == 0, counts


async def _unlink(fs: Filesystem) -> None:
    await fs.unlink(await resolve(fs, "data/d0"), "f0.bin")


async def _create(fs: Filesystem) -> None:
    await write_file(fs, "data/d1/new.txt", b"brand new")


async def _overwrite(fs: Filesystem) -> None:
    ino = await resolve(fs, "data/d2/f1.bin")
    size = len(TREE["data/d2/f1.bin"])
    handle = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
    await fs.write(handle.fh, 0, b"z" * size)  # same size, new content and ETag
    await fs.release(handle.fh)


async def _rename(fs: Filesystem) -> None:
    await fs.rename(await resolve(fs, "data/d0"), "f1.bin", await resolve(fs, "data/d2"), "moved.bin", 0)


async def _rmdir(fs: Filesystem) -> None:
    d1 = await resolve(fs, "data/d1")
    for n in range(3):
        await fs.unlink(d1, f"f{n}.bin")
    await fs.rmdir(await resolve(fs, "data"), "d1")


async def _mkdirs(fs: Filesystem) -> None:
    fresh = await fs.mkdir(ROOT_INODE, "fresh")
    await fs.mkdir(fresh.ino, "sub")
    await write_file(fs, "fresh/sub/f.txt", b"in a new directory")


def _without(tree: dict[str, bytes], *prefixes: str) -> dict[str, bytes]:
    return {k: v for k, v in tree.items() if not k.startswith(prefixes)}


CHANGES = {
    "unlink": (_unlink, lambda t: _without(t, "data/d0/f0.bin")),
    "create": (_create, lambda t: {**t, "data/d1/new.txt": b"brand new"}),
    "overwrite": (_overwrite, lambda t: {**t, "data/d2/f1.bin": b"z" * len(t["data/d2/f1.bin"])}),
    "rename": (_rename, lambda t: {**_without(t, "data/d0/f1.bin"), "data/d2/moved.bin": t["data/d0/f1.bin"]}),
    "rmdir": (_rmdir, lambda t: _without(t, "data/d1/")),
    "mkdir": (_mkdirs, lambda t: {**t, "fresh/sub/f.txt": b"in a new directory"}),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changes_made_through_the_mount_are_seen_by_the_next_within_the_ttl(mount, change):
    client = MemoryClient(seed=1)
    for key, data in TREE.items():
        client.put_object_sync(key, data)
    act, expect = CHANGES[change]
    expected = expect(TREE)

    async def first(fs, client):
        assert await walk(fs) == tree_of(TREE)  # everything listed and cached
        await act(fs)
        assert await walk(fs) == tree_of(expected)

    async def second(fs, client):
        assert await walk(fs) == tree_of(expected)

    mount(client, first, metadata_ttl=3600)
    assert client.snapshot() == expected
    mount(client, second, metadata_ttl=3600)
    mount(client, second, metadata_ttl=3600)  # what the second mount listed anew is right as well


def test_unlink_relists_only_the_changed_directory(mount):
    client = MemoryClient(seed=1)
    for key, data in TREE.items():
        client.put_object_sync(key, data)

    async def first(fs, client):
        await walk(fs)
        await _unlink(fs)

    async def second(fs, client):
        client.calls.clear()
        assert await walk(fs) == tree_of(_without(TREE, "data/d0/f0.bin"))
        assert client.calls["ListObjectsV2"] == 1 and client.calls.get("GetObject", 0) == 0, client.calls

    mount(client, first, metadata_ttl=3600)
    mount(client, second, metadata_ttl=3600)


def test_rmdir_of_a_marker_directory_is_seen_by_the_next_mount(mount):
    client = MemoryClient("general-purpose", seed=1)
    client.put_object_sync("data/empty/", b"")
    client.put_object_sync("data/f", b"f")

    async def first(fs, client):
        assert await walk(fs) == {"data": None, "data/empty": None, "data/f": b"f"}
        await fs.rmdir(await resolve(fs, "data"), "empty")

    async def second(fs, client):
        assert await walk(fs) == {"data": None, "data/f": b"f"}

    mount(client, first, metadata_ttl=3600)
    mount(client, second, metadata_ttl=3600)


def test_o_direct_bypasses_the_block_cache(mount):
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        pytest.skip("no O_DIRECT on this platform")
    client = MemoryClient(seed=1)
    data = random.Random(9).randbytes(4000)
    client.put_object_sync("f", data)

    async def read(fs, client, flags: int = os.O_RDONLY):
        ino = await resolve(fs, "f")
        client.calls.clear()
        assert await read_all(fs, ino, flags) == data
        await fs.cache.flush()
        return client.calls["GetObject"], await fs.getxattr(ino, "user.s3xfs.cached")

    async def direct_read(fs, client):
        return await read(fs, client, os.O_RDONLY | direct)

    assert mount(client, direct_read, metadata_ttl=300) == (1, b"0")  # read from the bucket, nothing stored
    assert mount(client, read, metadata_ttl=300) == (1, b"4000")
    assert mount(client, read, metadata_ttl=300) == (0, b"4000")
    assert mount(client, direct_read, metadata_ttl=300) == (1, b"4000")  # cached, but O_DIRECT reads the bucket


def test_cache_xattrs(mount, tmp_path):
    client = MemoryClient(seed=1)
    client.put_object_sync("d/f", b"x" * 2500)
    client.put_object_sync("d/g", b"y" * 10)

    async def check(fs, client):
        d, f, g = await resolve(fs, "d"), await resolve(fs, "d/f"), await resolve(fs, "d/g")
        assert "user.s3xfs.cache_limit" in fs.listxattr(ROOT_INODE)
        assert await fs.getxattr(ROOT_INODE, "user.s3xfs.cache_limit") == str(LIMIT).encode()
        for ino in (d, f):
            assert "user.s3xfs.cache_limit" not in fs.listxattr(ino)
            with pytest.raises(FsError) as excinfo:
                await fs.getxattr(ino, "user.s3xfs.cache_limit")
            assert excinfo.value.errno == errno.ENODATA
        assert "user.s3xfs.cached" in fs.listxattr(f) and "user.s3xfs.cached" not in fs.listxattr(d)
        with pytest.raises(FsError) as excinfo:
            await fs.getxattr(d, "user.s3xfs.cached")
        assert excinfo.value.errno == errno.ENODATA
        assert await fs.getxattr(f, "user.s3xfs.cached") == b"0"
        assert await read_all(fs, f) == b"x" * 2500
        await fs.cache.flush()
        assert await fs.getxattr(f, "user.s3xfs.cached") == b"2500"
        assert await fs.getxattr(g, "user.s3xfs.cached") == b"0"

    mount(client, check, metadata_ttl=300)

    async def no_cache(fs, client):
        f = await resolve(fs, "d/f")
        assert "user.s3xfs.cached" not in fs.listxattr(f)
        assert "user.s3xfs.cache_limit" not in fs.listxattr(ROOT_INODE)
        for ino, name in ((f, "cached"), (ROOT_INODE, "cache_limit")):
            with pytest.raises(FsError) as excinfo:
                await fs.getxattr(ino, "user.s3xfs." + name)
            assert excinfo.value.errno == errno.ENODATA

    run_filesystem(no_cache, client, staging_dir=str(tmp_path / "staging"))


def test_a_broken_cache_does_not_break_the_mount(mount, monkeypatch):
    client = MemoryClient(seed=1)
    for key, data in TREE.items():
        client.put_object_sync(key, data)

    async def walk_all(fs, client):
        assert await walk(fs) == tree_of(TREE)

    mount(client, walk_all, metadata_ttl=300)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database disk image is malformed")

    real_init = CacheStore.__init__

    def broken_init(self, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        for name in ("get", "set", "delete", "__contains__"):
            setattr(self.cache, name, fail)

    monkeypatch.setattr(CacheStore, "__init__", broken_init)
    mount(client, walk_all, metadata_ttl=300)


# --- random bucket changes, remounts and reads: never stale with a TTL of 0 ----------------------

NAMES = ["a", "b", "d/c"]
SIZES = [0, 1, 512, 513, 1500]
STEP = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(NAMES), st.sampled_from(SIZES)),
    st.tuples(st.just("same-size"), st.sampled_from(NAMES)),  # new content, new ETag, same size
    st.tuples(st.just("delete"), st.sampled_from(NAMES)),
    st.tuples(st.just("remount")),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, max_size=25), directory=st.booleans())
def test_ttl_zero_never_serves_stale_data(steps, directory):
    """After every change to the bucket, every name reads as the bucket's current bytes (or is
    absent), across remounts on one cache directory: with a TTL of 0, nothing stale is served."""
    client = MemoryClient("test--usw2-az1--x-s3" if directory else "general-purpose", seed=1)
    versions = iter(range(1_000_000))

    def content(size: int) -> bytes:
        return random.Random(next(versions)).randbytes(size)

    sessions: list[list[tuple]] = [[]]
    for step in steps:
        if step[0] == "remount":
            sessions.append([])
        else:
            sessions[-1].append(step)

    async def check_all(fs: Filesystem) -> None:
        current = client.snapshot()
        for name in NAMES:
            ino = await resolve(fs, name)
            if name not in current:
                assert ino == 0, name
            else:
                assert ino, name
                assert await read_all(fs, ino) == current[name], name
                await fs.cache.flush()  # what was read is on disk now: the next read may hit it

    async def session(fs, client, todo):
        await check_all(fs)
        for step in todo:
            op, name = step[0], step[1]
            if op == "put":
                client.put_object_sync(name, content(step[2]))
            elif op == "same-size":
                if name in client.objects:
                    client.put_object_sync(name, content(client.objects[name].size))
            else:
                await client.delete(name)
            await check_all(fs)

    with tempfile.TemporaryDirectory() as tmp:
        for todo in sessions:
            store = open_store(Path(tmp) / "cache")
            try:
                run_filesystem(lambda fs, client, todo=todo: session(fs, client, todo), client, cache=store,
                               metadata_ttl=0, negative_ttl=0, cache_block_size=512,
                               staging_dir=str(Path(tmp) / "staging"))
            finally:
                store.close()


def test_hits_keep_least_recently_used_order_without_a_write_lock(tmp_path):
    """A hit reads with a plain SELECT; its access is recorded later by the writer, in a batch,
    and eviction at the cap then drops the blocks nobody read, not the ones just read."""
    client = RecordingClient()
    size = 6 * (1 << 20)
    bodies = {key: random.Random(n).randbytes(size) for n, key in enumerate(("old-read", "old-unread", "new"))}
    infos = {key: client.put_object_sync(key, body) for key, body in bodies.items()}
    store = CacheStore(tmp_path / "c", NS, size_limit=16 << 20)
    blocks = BlockCache(store, 1 << 20)

    async def body() -> None:
        for key in ("old-read", "old-unread"):
            assert await get(source_for(client, blocks, key), 0, size) == bodies[key]
        await store.flush()
        client.ranges.clear()
        assert await get(source_for(client, blocks, "old-read"), 0, size) == bodies["old-read"]  # hits
        assert client.ranges == []
        await store.flush()  # the accesses are recorded
        assert await get(source_for(client, blocks, "new"), 0, size) == bodies["new"]  # over the cap
        await store.flush()

    with_writer(store, body)
    assert store.cache.volume() <= 16 << 20
    held = {key: sum(piece is not None for piece in blocks.load(key, infos[key].etag, size, range(6)))
            for key in bodies}
    assert held["old-read"] == 6 and held["new"] == 6 and held["old-unread"] < 6, held
    store.close()


def test_blocks_go_to_disk_in_two_writes_uncopied_and_small_values_stay_in_sqlite(tmp_path, monkeypatch):
    """Given bytes, diskcache writes a file line by line (about a thousand GIL-holding writes per
    256 KiB of binary data, which starved the FUSE thread while a cache filled): a block must reach
    its file in two writes, its checksum then its data, whatever bytes it holds, and the data is
    written from the fetched buffer itself, never from a joined copy; a value under diskcache's
    file threshold stays inline in SQLite. Both read back through the hit path."""
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, 256 << 10)
    writes: list[int] = []
    written_from: list[object] = []
    original = store.cache._disk._write

    def counting_write(full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> int:
        chunks = list(iterator)
        writes.append(len(chunks))
        written_from.extend(chunk.obj if isinstance(chunk, memoryview) else chunk for chunk in chunks)
        return original(full_path, iter(chunks), mode, encoding)

    monkeypatch.setattr(store.cache._disk, "_write", counting_write)
    block = b"\n".join(random.Random(3).randbytes(255) for _ in range(1024))[:256 << 10]  # 1,023 newlines
    small = b"\n" * 100
    blocks.save("big", "e1", len(block), 0, block)
    blocks.save("small", "e1", len(small), 0, small)
    assert writes == [2]  # the block; the small value went to SQLite
    assert written_from[1] is block
    assert [bytes(piece) for piece in blocks.load("big", "e1", len(block), range(1))] == [block]
    assert [bytes(piece) for piece in blocks.load("small", "e1", len(small), range(1))] == [small]
    assert blocks.stats["blocks_stored"] == 2 and store.errors == 0
    store.close()


def test_access_times_of_hits_are_recorded_in_one_batch_after_the_delay(tmp_path, monkeypatch):
    """Hits record nothing at once (a transaction per hit cost a restarted job's epoch a sixth of
    its rate); within BOOKKEEPING_DELAY the writer records all of them in one transaction."""
    monkeypatch.setattr(store_module, "BOOKKEEPING_DELAY", 3.0)  # long enough for three hits on a busy machine
    client = RecordingClient()
    bodies = {f"k{n}": random.Random(n).randbytes(FILE_BLOCK) for n in range(3)}
    for key, body in bodies.items():
        client.put_object_sync(key, body)
    store = open_store(tmp_path / "c")
    blocks = BlockCache(store, FILE_BLOCK)
    transactions: list[int] = []

    def access_times() -> dict[str, float]:
        rows = store.cache._sql("SELECT key, access_time FROM Cache WHERE tag = ?", (store.tag,)).fetchall()
        return {key.rsplit("\0", 1)[1]: when for key, when in rows}

    async def body() -> None:
        for key in bodies:
            await get(source_for(client, blocks, key), 0, FILE_BLOCK)
        await store.flush()
        stored = access_times()
        original_touch = blocks._touch
        monkeypatch.setattr(blocks, "_touch", lambda: transactions.append(len(blocks._touched)) or original_touch())
        client.ranges.clear()
        for key in bodies:
            assert await get(source_for(client, blocks, key), 0, FILE_BLOCK) == bodies[key]
        assert client.ranges == []  # all hits
        await trio.sleep(0.01)
        assert access_times() == stored and transactions == []  # not yet
        with trio.fail_after(15):
            while not transactions:
                await trio.sleep(0.05)
        await store.flush()  # the batch seen starting above has committed (flush waits for the writer)
        assert transactions == [3]  # one batch for the three hits
        assert all(access_times()[key] > stored[key] for key in bodies)

    with_writer(store, body)
    store.close()


def test_names_evicted_from_memory_come_back_from_the_disk_listing(tmp_path):
    """--max-cached-entries evicted a directory's names (other directories were listed since):
    their lookups restore the listing from the disk cache, not from the bucket."""
    client = MemoryClient(seed=1)
    for d in ("a", "b"):
        for n in range(10):
            client.put_object_sync(f"{d}/f{n}", b"x" * n)
    now = [1000.0]
    store = open_store(tmp_path / "cache")

    async def check(fs, client):
        a, b = await resolve(fs, "a"), await resolve(fs, "b")
        await names(fs, a)
        await names(fs, b)  # 20 names nothing holds, 12 kept: 8 of a's evicted
        assert fs.inodes.get(a).evicted == 8
        await fs.cache.flush()  # both listings are on disk
        now[0] += 2  # past DISK_RECHECK since the opendirs asked the disk
        client.calls.clear()
        for n in range(10):
            assert (await fs.lookup(a, f"f{n}")).size == n
        assert client.calls["ListObjectsV2"] == 0 and client.calls["HeadObject"] == 0, client.calls
        assert fs.metadata.stats["listings_restored"] == 1

    try:
        run_filesystem(check, client, cache=store, clock=lambda: now[0], metadata_ttl=300,
                       max_cached_entries=12, staging_dir=str(tmp_path / "staging"))
    finally:
        store.close()
