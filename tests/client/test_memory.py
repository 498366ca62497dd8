"""Tests of the in-memory ObjectClient (s3xfs/client/memory.py).

The core's tests trust this client to behave like S3 Express (and like a general purpose bucket
when asked), so every rule it claims is checked here: listing order and completeness, prefix and
delimiter rules, conditional writes, append, multipart, rename, counters, fault hooks and
read-only refusals, plus a model check of random operation sequences.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3xfs.client import errors
from s3xfs.client.memory import MAX_PARTS, MemoryClient
from s3xfs.client.protocol import DeleteFailure, ListPage, ObjectClient, ObjectInfo

GENERAL = "general-bucket"
SMALL = 4  # min_part_size for multipart tests


def trio_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body with plain trio.run (no pytest-trio dependency)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


async def listing(client: MemoryClient, prefix: str = "", **kwargs: Any) -> list[ListPage]:
    return [page async for page in client.list(prefix, **kwargs)]


def names(pages: list[ListPage]) -> tuple[list[str], list[str]]:
    keys = [o.key for p in pages for o in p.objects]
    prefixes = [p for page in pages for p in page.prefixes]
    return keys, prefixes


async def raises(cls: type[errors.ClientError], awaitable: Awaitable[Any]) -> errors.ClientError:
    with pytest.raises(cls) as info:
        await awaitable
    assert type(info.value) is cls, f"{type(info.value).__name__} raised, {cls.__name__} wanted"
    return info.value


# ------------------------------------------------------------------------------------------------
# construction and objects
# ------------------------------------------------------------------------------------------------

def test_implements_the_protocol() -> None:
    assert isinstance(MemoryClient(), ObjectClient)
    assert isinstance(MemoryClient(GENERAL), ObjectClient)


def test_bucket_kind_follows_the_name_unless_told() -> None:
    assert MemoryClient().directory is True
    assert MemoryClient("data--use1-az4--x-s3").directory is True
    assert MemoryClient(GENERAL).directory is False
    assert MemoryClient(GENERAL, directory=True).directory is True
    assert MemoryClient(directory=False).directory is False
    assert MemoryClient(read_only=True).read_only is True


@trio_test
async def test_put_and_head_fill_object_info_for_a_directory_bucket() -> None:
    client = MemoryClient(seed=1)
    before = time.time()
    result = await client.put("a/b.txt", b"hello", content_type="text/plain")
    info = await client.head("a/b.txt")
    assert info.key == "a/b.txt" and info.size == 5 == result.size
    assert info.etag == result.etag
    assert re.fullmatch(r"[a-z0-9]{32}", info.etag) and info.etag != hashlib.md5(b"hello").hexdigest()
    assert before <= info.last_modified <= time.time()
    assert info.storage_class == "EXPRESS_ONEZONE"
    assert info.content_type == "text/plain"
    again = await client.put("a/b.txt", b"hello")
    assert again.etag != result.etag, "directory-bucket ETags are random, even for the same bytes"
    assert (await client.head("a/b.txt")).content_type == "binary/octet-stream"


@trio_test
async def test_put_and_head_fill_object_info_for_a_general_purpose_bucket() -> None:
    client = MemoryClient(GENERAL)
    result = await client.put("k", b"hello")
    info = await client.head("k")
    assert info.etag == result.etag == hashlib.md5(b"hello").hexdigest()
    assert info.storage_class == "STANDARD"
    [page] = await listing(client)
    assert page.objects == [ObjectInfo("k", 5, info.etag, info.last_modified, "STANDARD")]


@trio_test
async def test_head_of_a_missing_key_is_not_found_with_s3_code() -> None:
    client = MemoryClient()
    exc = await raises(errors.NotFound, client.head("nope"))
    assert exc.code == "NoSuchKey" and exc.status == 404 and exc.key == "nope"


@trio_test
async def test_keys_longer_than_1024_bytes_are_name_too_long() -> None:
    client = MemoryClient()
    await raises(errors.NameTooLong, client.put("k" * 1025, b"x"))
    await raises(errors.NameTooLong, client.head("é" * 513))
    assert client.snapshot() == {}


@trio_test
async def test_empty_keys_are_refused_without_a_request() -> None:
    client = MemoryClient()
    await raises(errors.InvalidRequest, client.put("", b"x"))
    await raises(errors.InvalidRequest, client.head(""))
    assert client.calls == Counter()


@trio_test
async def test_sync_accessors_do_not_count() -> None:
    client = MemoryClient(seed=3)
    info = client.put_object_sync("x/y", b"abc", content_type="text/csv")
    assert info.size == 3 and info.storage_class == "EXPRESS_ONEZONE"
    assert client.snapshot() == {"x/y": b"abc"}
    assert client.objects["x/y"].etag == info.etag and client.objects["x/y"].content_type == "text/csv"
    with pytest.raises(TypeError):
        client.objects["z"] = client.objects["x/y"]  # type: ignore[index]
    assert client.calls == Counter()
    assert (await client.head("x/y")).etag == info.etag
    assert client.requests is client.calls


# ------------------------------------------------------------------------------------------------
# reads
# ------------------------------------------------------------------------------------------------

@trio_test
async def test_get_range_reads_slices_and_short_reads_at_the_end() -> None:
    client = MemoryClient()
    client.put_object_sync("f", b"0123456789")
    assert await client.get_range("f", 0, 4) == b"0123"
    assert await client.get_range("f", 8, 100) == b"89"
    assert await client.get_range("f", 10, 5) == b""
    assert await client.get_range("f", 50, 5) == b""
    assert client.calls["GetObject"] == 4
    assert await client.get_range("f", 3, 0) == b""
    assert client.calls["GetObject"] == 4, "an empty range sends nothing"
    await raises(errors.NotFound, client.get_range("missing", 0, 1))


@trio_test
async def test_get_range_if_match_pins_the_etag() -> None:
    client = MemoryClient()
    etag = client.put_object_sync("f", b"one").etag
    assert await client.get_range("f", 0, 3, if_match=etag) == b"one"
    assert await client.get_range("f", 0, 3, if_match=f'"{etag}"') == b"one"
    client.put_object_sync("f", b"two")
    exc = await raises(errors.PreconditionFailed, client.get_range("f", 0, 3, if_match=etag))
    assert exc.status == 412
    await raises(errors.NotFound, client.get_range("gone", 0, 3, if_match=etag))


@trio_test
async def test_iter_range_streams_chunks_from_one_get() -> None:
    client = MemoryClient()
    client.put_object_sync("f", bytes(range(100)))
    chunks = [c async for c in client.iter_range("f", 10, 50, chunk_size=16)]
    assert [len(c) for c in chunks] == [16, 16, 16, 2]
    assert b"".join(chunks) == bytes(range(10, 60))
    assert client.calls["GetObject"] == 1
    assert [c async for c in client.iter_range("f", 90, 50)] == [bytes(range(90, 100))]
    assert [c async for c in client.iter_range("f", 100, 5)] == []
    with pytest.raises(errors.NotFound):
        _ = [c async for c in client.iter_range("missing", 0, 5)]


@trio_test
async def test_iter_range_pins_the_version_it_opened_and_honours_if_match() -> None:
    client = MemoryClient()
    etag = client.put_object_sync("f", b"a" * 10).etag
    got = []
    async for chunk in client.iter_range("f", 0, 10, chunk_size=3, if_match=etag):
        got.append(chunk)
        await client.put("f", b"b" * 10)  # a writer between chunks must not show through
    assert b"".join(got) == b"a" * 10
    with pytest.raises(errors.PreconditionFailed):
        _ = [c async for c in client.iter_range("f", 0, 10, if_match=etag)]


# ------------------------------------------------------------------------------------------------
# conditional writes
# ------------------------------------------------------------------------------------------------

@trio_test
async def test_conditional_puts() -> None:
    client = MemoryClient()
    first = await client.put("k", b"1", if_none_match=True)
    exc = await raises(errors.PreconditionFailed, client.put("k", b"2", if_none_match=True))
    assert exc.code == "PreconditionFailed" and exc.status == 412
    await raises(errors.PreconditionFailed, client.put("k", b"2", if_match="not-the-etag"))
    await raises(errors.NotFound, client.put("other", b"2", if_match=first.etag))
    second = await client.put("k", b"2", if_match=first.etag)
    assert client.snapshot() == {"k": b"2"}
    assert (await client.head("k")).etag == second.etag


@trio_test
async def test_concurrent_create_if_none_match_has_one_winner() -> None:
    client = MemoryClient()
    client.latency = 0.001
    outcomes: list[str] = []

    async def create(i: int) -> None:
        try:
            await client.put("lock", str(i).encode(), if_none_match=True)
            outcomes.append("won")
        except errors.PreconditionFailed:
            outcomes.append("lost")

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(create, i)
    assert sorted(outcomes) == ["lost"] * 19 + ["won"]


# ------------------------------------------------------------------------------------------------
# listings: directory buckets
# ------------------------------------------------------------------------------------------------

@trio_test
async def test_directory_listing_is_complete_duplicate_free_and_unsorted_across_pages() -> None:
    client = MemoryClient(seed=7)
    keys = {f"dir/file{i:03d}" for i in range(250)} | {f"dir/sub{i}/x" for i in range(30)}
    for key in keys:
        client.put_object_sync(key, b"x")
    pages = await listing(client, "dir/", page_size=40)
    assert len(pages) == 7 and client.calls["ListObjectsV2"] == 7
    assert all(len(p.objects) + len(p.prefixes) <= 40 for p in pages)
    got_keys, got_prefixes = names(pages)
    assert len(got_keys) == len(set(got_keys)) == 250
    assert set(got_keys) == {k for k in keys if "/sub" not in k}
    assert len(got_prefixes) == len(set(got_prefixes)) == 30
    assert set(got_prefixes) == {f"dir/sub{i}/" for i in range(30)}
    assert got_keys != sorted(got_keys)
    assert got_prefixes != sorted(got_prefixes)

    recursive = await listing(client, "", delimiter=None, page_size=1000)
    all_keys, no_prefixes = names(recursive)
    assert sorted(all_keys) == sorted(keys) and no_prefixes == [] and all_keys != sorted(all_keys)


@pytest.mark.parametrize("seed", range(20))
@trio_test
async def test_even_two_entries_are_never_listed_in_key_order(seed: int) -> None:
    client = MemoryClient(seed=seed)
    client.put_object_sync("a", b"")
    client.put_object_sync("b", b"")
    client.put_object_sync("c/1", b"")
    client.put_object_sync("d/1", b"")
    for _ in range(3):
        keys, prefixes = names(await listing(client))
        assert keys == ["b", "a"] and prefixes == ["d/", "c/"]


@trio_test
async def test_listing_order_is_seeded_and_differs_between_listings() -> None:
    async def orders(seed: int) -> list[list[str]]:
        client = MemoryClient(seed=seed)
        for i in range(30):
            client.put_object_sync(f"k{i}", b"")
        return [names(await listing(client))[0] for _ in range(3)]

    first = await orders(11)
    assert first == await orders(11), "a seed replays the same orders"
    assert first[0] != first[1] or first[1] != first[2], "each listing draws its own order"
    assert first != await orders(12)


@trio_test
async def test_directory_prefix_must_end_in_slash() -> None:
    client = MemoryClient()
    client.put_object_sync("abc/d", b"")
    exc = await raises(errors.InvalidRequest, listing(client, "abc"))
    assert "does not support a prefix that does not end in a delimiter" in str(exc)
    assert exc.code == "InvalidRequest" and exc.status == 400
    assert client.calls["ListObjectsV2"] == 1, "the server refused it: the request was sent"
    assert names(await listing(client, "abc/")) == (["abc/d"], [])
    assert names(await listing(client, "")) == ([], ["abc/"])


@trio_test
async def test_directory_delimiter_must_be_slash() -> None:
    client = MemoryClient()
    await raises(errors.InvalidRequest, listing(client, "", delimiter="-"))
    assert names(await listing(client, "", delimiter=None)) == ([], [])


@trio_test
async def test_common_prefixes_include_in_progress_uploads_on_directory_buckets() -> None:
    client = MemoryClient()
    upload_id = await client.create_multipart("staging/deep/big.bin")
    assert names(await listing(client)) == ([], ["staging/"])
    assert names(await listing(client, "staging/")) == ([], ["staging/deep/"])
    assert names(await listing(client, "staging/deep/")) == ([], []), "an upload is not an object"
    assert names(await listing(client, "", delimiter=None)) == ([], [])
    await client.abort_multipart("staging/deep/big.bin", upload_id)
    assert names(await listing(client)) == ([], [])


@trio_test
async def test_directories_exist_only_through_keys_beneath_them() -> None:
    client = MemoryClient()
    await client.put("a/b/c.txt", b"x")
    await client.put("a", b"file and directory may coexist")
    assert names(await listing(client)) == (["a"], ["a/"])
    assert names(await listing(client, "a/")) == ([], ["a/b/"])
    await client.delete("a/b/c.txt")
    assert names(await listing(client)) == (["a"], [])
    assert names(await listing(client, "a/b/")) == ([], [])


@trio_test
async def test_empty_listing_is_one_empty_page_and_page_size_is_capped() -> None:
    client = MemoryClient()
    assert await listing(client) == [ListPage([], [])]
    for i in range(1500):
        client.put_object_sync(f"k{i}", b"")
    pages = await listing(client, page_size=5000)
    assert [len(p.objects) for p in pages] == [1000, 500]
    assert len(await listing(client, page_size=0)) == 1
    await raises(errors.InvalidRequest, listing(client, page_size=-1))


@trio_test
async def test_pagination_survives_changes_between_pages() -> None:
    client = MemoryClient(seed=5)
    for i in range(100):
        client.put_object_sync(f"k{i:03d}", b"")
    seen: list[str] = []
    deleted: set[str] = set()
    pages = 0
    async for page in client.list("", page_size=10):
        pages += 1
        seen.extend(o.key for o in page.objects)
        if pages == 3:  # delete five keys not yet listed, add five new ones
            for key in sorted(set(client.objects) - set(seen))[:5]:
                await client.delete(key)
                deleted.add(key)
            for i in range(5):
                await client.put(f"new{i}", b"")
    unchanged = {f"k{i:03d}" for i in range(100)} - deleted
    assert len(seen) == len(set(seen)), "no entry is returned twice"
    assert unchanged <= set(seen), "no unchanged entry is skipped"
    assert not deleted & set(seen)


# ------------------------------------------------------------------------------------------------
# listings: general purpose buckets
# ------------------------------------------------------------------------------------------------

@trio_test
async def test_general_purpose_listing_is_in_key_order_with_any_prefix_and_delimiter() -> None:
    client = MemoryClient(GENERAL, seed=1)
    keys = ["a-b", "a/1", "a/2", "a0", "b", "b--x--1", "b--x--2", "b--y", "c/d/e"]
    for key in reversed(keys):
        client.put_object_sync(key, b"")
    pages = await listing(client, "", page_size=2)
    assert names(pages) == (["a-b", "a0", "b", "b--x--1", "b--x--2", "b--y"], ["a/", "c/"])
    order = [e for p in pages for e in [*(o.key for o in p.objects), *p.prefixes]]
    assert order == ["a-b", "a/", "a0", "b", "b--x--1", "b--x--2", "b--y", "c/"]
    assert names(await listing(client, "b", delimiter="--")) == (["b"], ["b--"])
    assert names(await listing(client, "b--", delimiter="--")) == (["b--y"], ["b--x--"])
    assert names(await listing(client, "a", delimiter=None)) == (["a-b", "a/1", "a/2", "a0"], [])
    assert names(await listing(client, "a/", page_size=1)) == (["a/1", "a/2"], [])


@trio_test
async def test_general_purpose_uploads_make_no_common_prefixes() -> None:
    client = MemoryClient(GENERAL)
    await client.create_multipart("staging/x")
    assert names(await listing(client)) == ([], [])


# ------------------------------------------------------------------------------------------------
# append
# ------------------------------------------------------------------------------------------------

@trio_test
async def test_append_creates_and_extends_with_new_etags() -> None:
    client = MemoryClient()
    first = await client.append("log", b"abc", offset=0)
    assert first.size == 3
    second = await client.append("log", b"de", offset=3, if_match=first.etag)
    assert second.size == 5 and second.etag != first.etag
    assert client.snapshot() == {"log": b"abcde"}
    assert client.objects["log"].parts == 2
    assert client.calls["PutObject"] == 2


@trio_test
async def test_append_keeps_the_content_type() -> None:
    client = MemoryClient()
    await client.put("t", b"x", content_type="text/plain")
    await client.append("t", b"y", offset=1)
    assert (await client.head("t")).content_type == "text/plain"


@trio_test
async def test_append_errors() -> None:
    client = MemoryClient()
    client.put_object_sync("f", b"12345")
    exc = await raises(errors.PreconditionFailed, client.append("f", b"x", offset=4))
    assert exc.code == "InvalidWriteOffset"
    await raises(errors.PreconditionFailed, client.append("f", b"x", offset=6))
    exc = await raises(errors.NotFound, client.append("missing", b"x", offset=3))
    assert exc.code == "NoSuchKey"
    exc = await raises(errors.InvalidRequest, client.append("f", b"", offset=5))
    assert exc.code == "InvalidArgument"
    await raises(errors.PreconditionFailed, client.append("f", b"x", offset=5, if_match="stale"))
    await raises(errors.NotFound, client.append("missing", b"x", offset=0, if_match="any"))
    assert client.snapshot() == {"f": b"12345"}


@trio_test
async def test_append_beyond_ten_thousand_parts_is_too_large() -> None:
    client = MemoryClient()
    client.put_object_sync("f", b"x", parts=MAX_PARTS - 1)
    await client.append("f", b"y", offset=1)
    exc = await raises(errors.TooLarge, client.append("f", b"z", offset=2))
    assert exc.code == "TooManyParts"
    assert client.snapshot() == {"f": b"xy"}


@trio_test
async def test_append_on_a_general_purpose_bucket_is_not_supported_and_not_sent() -> None:
    client = MemoryClient(GENERAL)
    await raises(errors.NotSupported, client.append("f", b"x", offset=0))
    assert client.calls == Counter() and client.snapshot() == {}


@trio_test
async def test_concurrent_appends_at_one_offset_have_one_winner() -> None:
    client = MemoryClient()
    client.put_object_sync("log", b"start")
    client.latency = 0.001
    won: list[int] = []

    async def writer(i: int) -> None:
        try:
            await client.append("log", bytes([65 + i]), offset=5)
            won.append(i)
        except errors.PreconditionFailed:
            pass

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(writer, i)
    assert len(won) == 1
    assert client.snapshot()["log"] == b"start" + bytes([65 + won[0]])


# ------------------------------------------------------------------------------------------------
# multipart
# ------------------------------------------------------------------------------------------------

@trio_test
async def test_multipart_round_trip_on_a_directory_bucket() -> None:
    client = MemoryClient(min_part_size=SMALL)
    upload_id = await client.create_multipart("big", content_type="application/x-big")
    assert client.uploads == {upload_id: "big"}
    e1 = await client.upload_part("big", upload_id, 1, b"aaaa")
    e2 = await client.upload_part("big", upload_id, 2, b"bbbbb")
    e3 = await client.upload_part("big", upload_id, 3, b"c")
    assert re.fullmatch(r"[a-z0-9]{32}", e1)
    result = await client.complete_multipart("big", upload_id, [(1, e1), (2, f'"{e2}"'), (3, e3)])
    assert result.size == 10
    assert client.snapshot() == {"big": b"aaaabbbbbc"}
    info = await client.head("big")
    assert info.etag == result.etag and info.content_type == "application/x-big"
    assert client.objects["big"].parts == 3
    assert client.uploads == {}
    assert client.calls == Counter({"CreateMultipartUpload": 1, "UploadPart": 3, "CompleteMultipartUpload": 1,
                                    "HeadObject": 2})


@trio_test
async def test_multipart_on_a_general_purpose_bucket_allows_gaps_and_uses_md5_etags() -> None:
    client = MemoryClient(GENERAL, min_part_size=SMALL)
    upload_id = await client.create_multipart("big")
    e2 = await client.upload_part("big", upload_id, 2, b"aaaa")
    e5 = await client.upload_part("big", upload_id, 5, b"b")
    assert e2 == hashlib.md5(b"aaaa").hexdigest()
    result = await client.complete_multipart("big", upload_id, [(2, e2), (5, e5)])
    digest = hashlib.md5(hashlib.md5(b"aaaa").digest() + hashlib.md5(b"b").digest()).hexdigest()
    assert result.etag == f"{digest}-2" and result.size == 5


@trio_test
async def test_multipart_completion_rules() -> None:
    client = MemoryClient(min_part_size=SMALL)
    upload_id = await client.create_multipart("k")
    e = {n: await client.upload_part("k", upload_id, n, data)
         for n, data in [(1, b"aaaa"), (2, b"bb"), (3, b"cccc"), (4, b"d")]}
    cases = [
        ([], "MalformedXML"),
        ([(2, e[2]), (1, e[1])], "InvalidPartOrder"),
        ([(1, e[1]), (1, e[1])], "InvalidPartOrder"),
        ([(1, e[1]), (3, e[3])], "InvalidPartOrder"),  # directory buckets: 1..N, consecutive
        ([(2, e[2]), (3, e[3])], "InvalidPartOrder"),
        ([(1, e[1]), (2, "wrong")], "InvalidPart"),
        ([(1, e[1]), (2, e[2]), (3, e[3])], "EntityTooSmall"),
    ]
    for parts, code in cases:
        exc = await raises(errors.InvalidRequest, client.complete_multipart("k", upload_id, parts))
        assert exc.code == code, (parts, exc)
    assert client.snapshot() == {} and upload_id in client.uploads
    # the last part may be small
    result = await client.complete_multipart("k", upload_id, [(1, e[1])])
    assert result.size == 4


@trio_test
async def test_multipart_general_purpose_still_requires_ascending_part_numbers() -> None:
    client = MemoryClient(GENERAL, min_part_size=SMALL)
    upload_id = await client.create_multipart("k")
    e1 = await client.upload_part("k", upload_id, 1, b"aaaa")
    e3 = await client.upload_part("k", upload_id, 3, b"cccc")
    exc = await raises(errors.InvalidRequest, client.complete_multipart("k", upload_id, [(3, e3), (1, e1)]))
    assert exc.code == "InvalidPartOrder"


@trio_test
async def test_multipart_default_minimum_part_size_is_five_mib() -> None:
    client = MemoryClient()
    assert client.min_part_size == 5 * 1024 * 1024
    upload_id = await client.create_multipart("k")
    e1 = await client.upload_part("k", upload_id, 1, b"x" * 100)
    e2 = await client.upload_part("k", upload_id, 2, b"y")
    exc = await raises(errors.InvalidRequest, client.complete_multipart("k", upload_id, [(1, e1), (2, e2)]))
    assert exc.code == "EntityTooSmall"


@trio_test
async def test_multipart_part_numbers_and_unknown_uploads() -> None:
    client = MemoryClient(min_part_size=SMALL)
    upload_id = await client.create_multipart("k")
    for number in (0, MAX_PARTS + 1):
        await raises(errors.InvalidRequest, client.upload_part("k", upload_id, number, b"x"))
    await client.upload_part("k", upload_id, MAX_PARTS, b"x")
    exc = await raises(errors.NotFound, client.upload_part("k", "no-such-upload", 1, b"x"))
    assert exc.code == "NoSuchUpload"
    await raises(errors.NotFound, client.upload_part("other-key", upload_id, 1, b"x"))
    await raises(errors.NotFound, client.complete_multipart("k", "no-such-upload", [(1, "e")]))
    await client.abort_multipart("k", upload_id)
    await client.abort_multipart("k", upload_id)  # already gone: silent
    await client.abort_multipart("k", "never-existed")
    await raises(errors.NotFound, client.upload_part("k", upload_id, 1, b"x"))
    assert client.uploads == {}
    assert client.calls["AbortMultipartUpload"] == 3


@trio_test
async def test_multipart_completion_honours_conditions() -> None:
    client = MemoryClient(min_part_size=SMALL)
    existing = client.put_object_sync("k", b"old").etag
    upload_id = await client.create_multipart("k")
    e1 = await client.upload_part("k", upload_id, 1, b"new")
    await raises(errors.PreconditionFailed, client.complete_multipart("k", upload_id, [(1, e1)], if_none_match=True))
    await raises(errors.PreconditionFailed, client.complete_multipart("k", upload_id, [(1, e1)], if_match="stale"))
    assert client.snapshot() == {"k": b"old"}
    await client.complete_multipart("k", upload_id, [(1, e1)], if_match=existing)
    assert client.snapshot() == {"k": b"new"}

    upload_id = await client.create_multipart("fresh")
    e1 = await client.upload_part("fresh", upload_id, 1, b"x")
    await raises(errors.NotFound, client.complete_multipart("fresh", upload_id, [(1, e1)], if_match="any"))


# ------------------------------------------------------------------------------------------------
# delete
# ------------------------------------------------------------------------------------------------

@trio_test
async def test_delete() -> None:
    client = MemoryClient()
    await client.delete("missing")  # not an error
    exc = await raises(errors.NotFound, client.delete("missing", if_match="x"))
    assert exc.code == "NoSuchKey"
    etag = client.put_object_sync("k", b"v").etag
    await raises(errors.PreconditionFailed, client.delete("k", if_match="stale"))
    assert "k" in client.objects
    await client.delete("k", if_match=etag)
    assert client.snapshot() == {}
    assert client.calls["DeleteObject"] == 4


@trio_test
async def test_delete_many_reports_per_key_failures() -> None:
    client = MemoryClient()
    for key in ("a", "b", "c"):
        client.put_object_sync(key, b"")
    client.fail_next("DeleteObjects", errors.AccessDenied("denied", code="AccessDenied"), key="b")
    failures = await client.delete_many(["a", "b", "c", "never-there"])
    assert failures == [DeleteFailure("b", "AccessDenied", "denied")]
    assert client.snapshot() == {"b": b""}
    assert client.calls["DeleteObjects"] == 1
    assert await client.delete_many(["b"]) == []
    assert client.snapshot() == {}


@trio_test
async def test_delete_many_limits_and_whole_request_faults() -> None:
    client = MemoryClient()
    assert await client.delete_many([]) == []
    await raises(errors.InvalidRequest, client.delete_many([f"k{i}" for i in range(1001)]))
    assert client.calls == Counter(), "neither is sent"
    client.put_object_sync("a", b"")
    client.fail_next("DeleteObjects", errors.Unavailable("throttled", code="SlowDown"))
    await raises(errors.Unavailable, client.delete_many(["a"]))
    assert client.snapshot() == {"a": b""}


# ------------------------------------------------------------------------------------------------
# rename and copy
# ------------------------------------------------------------------------------------------------

@trio_test
async def test_rename_moves_atomically_and_keeps_metadata() -> None:
    client = MemoryClient()
    await client.put("src/dir/f", b"data", content_type="text/plain")
    before = await client.head("src/dir/f")
    await client.rename("src/dir/f", "dst/f")
    after = await client.head("dst/f")
    assert (after.etag, after.last_modified, after.size, after.content_type) == \
        (before.etag, before.last_modified, before.size, before.content_type)
    await raises(errors.NotFound, client.head("src/dir/f"))
    assert names(await listing(client)) == ([], ["dst/"]), "the source's directories vanish with it"
    assert client.calls["RenameObject"] == 1


@trio_test
async def test_rename_errors_and_replacement() -> None:
    client = MemoryClient()
    client.put_object_sync("a", b"A")
    client.put_object_sync("b", b"B")
    exc = await raises(errors.NotFound, client.rename("missing", "c"))
    assert exc.code == "NoSuchKey"
    await raises(errors.PreconditionFailed, client.rename("a", "b", if_none_match=True))
    for source, dest in (("a", "dir/"), ("dir/", "x"), ("a/", "b/")):
        await raises(errors.InvalidRequest, client.rename(source, dest))
    assert client.snapshot() == {"a": b"A", "b": b"B"}
    await client.rename("a", "b")  # replaces without a condition
    assert client.snapshot() == {"b": b"A"}
    await client.rename("b", "c", if_none_match=True)
    assert client.snapshot() == {"c": b"A"}
    await client.rename("c", "c")
    assert client.snapshot() == {"c": b"A"}


@trio_test
async def test_rename_on_a_general_purpose_bucket_is_not_supported_and_not_sent() -> None:
    client = MemoryClient(GENERAL)
    client.put_object_sync("a", b"")
    await raises(errors.NotSupported, client.rename("a", "b"))
    assert client.calls == Counter() and client.snapshot() == {"a": b""}


@trio_test
async def test_copy() -> None:
    client = MemoryClient()
    original = await client.put("a", b"data", content_type="text/plain")
    result = await client.copy("a", "b")
    assert result.size == 4 and result.etag != original.etag
    assert client.snapshot() == {"a": b"data", "b": b"data"}
    assert (await client.head("b")).content_type == "text/plain"
    await raises(errors.NotFound, client.copy("missing", "c"))
    await raises(errors.InvalidRequest, client.copy("a", "a"))
    assert client.calls["CopyObject"] == 3 and client.calls["HeadObject"] == 2

    general = MemoryClient(GENERAL)
    general.put_object_sync("a", b"data")
    assert (await general.copy("a", "b")).etag == hashlib.md5(b"data").hexdigest()


# ------------------------------------------------------------------------------------------------
# read-only clients
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bucket", ["test--usw2-az1--x-s3", GENERAL])
@trio_test
async def test_read_only_refuses_every_write_without_sending(bucket: str) -> None:
    client = MemoryClient(bucket, read_only=True, min_part_size=SMALL)
    client.put_object_sync("k", b"v")
    writes = [
        client.put("k", b"x"), client.append("k", b"x", offset=1), client.create_multipart("k"),
        client.upload_part("k", "u", 1, b"x"), client.complete_multipart("k", "u", [(1, "e")]),
        client.abort_multipart("k", "u"), client.delete("k"), client.delete_many(["k"]),
        client.rename("k", "m"), client.copy("k", "m"),
    ]
    for write in writes:
        exc = await raises(errors.ReadOnly, write)
        assert exc.errno == 30  # EROFS
    assert client.calls == Counter()
    assert client.snapshot() == {"k": b"v"}
    assert (await client.head("k")).size == 1
    assert await client.get_range("k", 0, 1) == b"v"
    assert names(await listing(client)) == (["k"], [])


# ------------------------------------------------------------------------------------------------
# counters, checkpoints, fault hooks
# ------------------------------------------------------------------------------------------------

@trio_test
async def test_counters_count_requests_by_s3_name() -> None:
    client = MemoryClient(min_part_size=SMALL)
    for i in range(5):
        await client.put(f"d/{i}", b"x")
    await client.head("d/0")
    await client.get_range("d/0", 0, 1)
    _ = [c async for c in client.iter_range("d/1", 0, 1)]
    await listing(client, "d/", page_size=2)  # 3 pages
    await client.append("d/0", b"y", offset=1)
    upload_id = await client.create_multipart("m")
    etag = await client.upload_part("m", upload_id, 1, b"z")
    await client.complete_multipart("m", upload_id, [(1, etag)])
    await client.abort_multipart("m", "gone")
    await client.delete("d/4")
    await client.delete_many(["d/3", "d/2"])
    await client.rename("d/1", "e/1")
    await client.copy("e/1", "e/2")
    assert client.calls == Counter({
        "PutObject": 6, "HeadObject": 3, "GetObject": 2, "ListObjectsV2": 3, "CreateMultipartUpload": 1,
        "UploadPart": 1, "CompleteMultipartUpload": 1, "AbortMultipartUpload": 1, "DeleteObject": 1,
        "DeleteObjects": 1, "RenameObject": 1, "CopyObject": 1,
    })


@trio_test
async def test_every_method_is_a_checkpoint() -> None:
    client = MemoryClient(min_part_size=SMALL)
    client.put_object_sync("k", b"v")
    upload_id = await client.create_multipart("m")
    etag = await client.upload_part("m", upload_id, 1, b"x")

    async def drain(iterator: Any) -> None:
        async for _ in iterator:
            pass

    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: client.head("k"), lambda: client.get_range("k", 0, 1), lambda: client.get_range("k", 0, 0),
        lambda: drain(client.iter_range("k", 0, 1)), lambda: drain(client.list("")),
        lambda: client.put("p", b"x"), lambda: client.append("k", b"x", offset=1),
        lambda: client.create_multipart("n"), lambda: client.upload_part("m", upload_id, 2, b"y"),
        lambda: client.complete_multipart("m", upload_id, [(1, etag)]), lambda: client.abort_multipart("m", "x"),
        lambda: client.delete("p"), lambda: client.delete_many(["p"]), lambda: client.delete_many([]),
        lambda: client.rename("k", "r"), lambda: client.copy("r", "s"),
    ]
    for call in calls:
        with trio.testing.assert_checkpoints():
            await call()
    readonly = MemoryClient(read_only=True)
    with trio.testing.assert_checkpoints():
        with pytest.raises(errors.ReadOnly):
            await readonly.put("k", b"")


@trio_test
async def test_fail_next_raises_before_any_effect_then_clears() -> None:
    client = MemoryClient()
    client.fail_next("PutObject", errors.Unavailable("boom", code="InternalError", status=500), times=2)
    for _ in range(2):
        exc = await raises(errors.Unavailable, client.put("k", b"v"))
        assert exc.code == "InternalError" and exc.status == 500 and exc.transient
    assert client.snapshot() == {}
    await client.put("k", b"v")
    assert client.snapshot() == {"k": b"v"}
    assert client.calls["PutObject"] == 3, "a refused request was still sent"


@trio_test
async def test_fail_next_can_target_a_key_and_is_first_in_first_out() -> None:
    client = MemoryClient()
    client.put_object_sync("a", b"A")
    client.put_object_sync("b", b"B")
    client.fail_next("GetObject", errors.AccessDenied("no b"), key="b")
    client.fail_next("GetObject", errors.Unavailable("first"))
    client.fail_next("GetObject", errors.InvalidRequest("second"))
    await raises(errors.Unavailable, client.get_range("a", 0, 1))
    await raises(errors.AccessDenied, client.get_range("b", 0, 1))
    await raises(errors.InvalidRequest, client.get_range("b", 0, 1))
    assert await client.get_range("a", 0, 1) == b"A"
    client.fail_next("RenameObject", errors.PreconditionFailed("source"), key="a")
    await raises(errors.PreconditionFailed, client.rename("a", "z"))
    assert client.snapshot() == {"a": b"A", "b": b"B"}
    client.fail_next("HeadObject", errors.Unavailable("never"))
    client.clear_faults()
    assert (await client.head("a")).size == 1


@trio_test
async def test_fail_next_faults_on_pages_and_follow_up_requests() -> None:
    client = MemoryClient(min_part_size=SMALL)
    for i in range(5):
        client.put_object_sync(f"k{i}", b"")
    pages = []
    with pytest.raises(errors.Unavailable):
        async for page in client.list("", page_size=2):
            pages.append(page)
            client.fail_next("ListObjectsV2", errors.Unavailable("second page lost"))
    assert len(pages) == 1 and client.calls["ListObjectsV2"] == 2

    # A fault armed by before_call applies to the very request the hook announced.
    async def hook(operation: str, key: str | None) -> None:
        client.fail_next("HeadObject", errors.Unavailable("now"), key=key)

    client.before_call = hook
    await raises(errors.Unavailable, client.head("k0"))
    client.before_call = None

    # CompleteMultipartUpload commits, then the HeadObject after it fails: the object exists.
    upload_id = await client.create_multipart("m")
    etag = await client.upload_part("m", upload_id, 1, b"x")
    client.fail_next("HeadObject", errors.Unavailable("lost"))
    await raises(errors.Unavailable, client.complete_multipart("m", upload_id, [(1, etag)]))
    assert client.snapshot()["m"] == b"x"


@trio_test
async def test_injected_not_found_on_abort_is_silent_and_invalid_range_is_a_short_read() -> None:
    client = MemoryClient()
    upload_id = await client.create_multipart("m")
    client.fail_next("AbortMultipartUpload", errors.NotFound("gone", code="NoSuchUpload"))
    await client.abort_multipart("m", upload_id)
    assert upload_id in client.uploads
    client.put_object_sync("k", b"v")
    client.fail_next("GetObject", errors.InvalidRange("416"))
    assert await client.get_range("k", 0, 1) == b""


def test_fail_next_rejects_mistakes() -> None:
    client = MemoryClient()
    with pytest.raises(ValueError):
        client.fail_next("GetObjects", errors.Unavailable("typo"))
    with pytest.raises(TypeError):
        client.fail_next("GetObject", RuntimeError("not a client error"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.fail_next("GetObject", errors.Unavailable("x"), times=0)


def test_latency_is_awaited_on_every_request() -> None:
    async def main() -> None:
        client = MemoryClient()
        client.latency = 0.25
        client.put_object_sync("k", b"v")
        start = trio.current_time()
        await client.head("k")
        await client.get_range("k", 0, 1)
        assert trio.current_time() - start == pytest.approx(0.5)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:  # concurrent requests wait side by side
            for _ in range(10):
                nursery.start_soon(client.head, "k")
        assert trio.current_time() - start == pytest.approx(0.25)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@trio_test
async def test_before_call_interleaves_a_change_between_two_reads() -> None:
    client = MemoryClient()
    etag = client.put_object_sync("f", b"version one").etag
    seen: list[tuple[str, str | None]] = []

    async def hook(operation: str, key: str | None) -> None:
        seen.append((operation, key))
        if operation == "GetObject" and len(seen) == 2:
            client.put_object_sync("f", b"version two")

    client.before_call = hook
    assert await client.get_range("f", 0, 7, if_match=etag) == b"version"
    await raises(errors.PreconditionFailed, client.get_range("f", 8, 3, if_match=etag))
    await client.rename("f", "g")
    await listing(client, "")
    assert seen == [("GetObject", "f"), ("GetObject", "f"), ("RenameObject", "g"), ("ListObjectsV2", "")]


# ------------------------------------------------------------------------------------------------
# random operation sequences against a dict model
# ------------------------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "a/b", "a/c", "a/b/c", "d/e", "d/f/g", "h"])
OPERATIONS = st.one_of(
    st.tuples(st.just("put"), KEYS, st.binary(max_size=8)),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("rename"), KEYS, KEYS, st.booleans()),
    st.tuples(st.just("append"), KEYS, st.binary(max_size=4), st.booleans()),
)


def model_listing(model: dict[str, bytes], prefix: str) -> tuple[set[str], set[str]]:
    keys, prefixes = set(), set()
    for key in model:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if "/" in rest:
                prefixes.add(prefix + rest[:rest.index("/") + 1])
            else:
                keys.add(key)
    return keys, prefixes


async def check_listings(client: MemoryClient, model: dict[str, bytes]) -> None:
    pages = await listing(client, "", delimiter=None, page_size=3)
    flat = [o for p in pages for o in p.objects]
    assert len(flat) == len({o.key for o in flat})
    assert {o.key: o.size for o in flat} == {k: len(v) for k, v in model.items()}
    directories = [""] + sorted({k[:i + 1] for k in model for i, c in enumerate(k) if c == "/"})
    for prefix in directories:
        keys, prefixes = names(await listing(client, prefix, page_size=2))
        assert len(keys) == len(set(keys)) and len(prefixes) == len(set(prefixes))
        assert (set(keys), set(prefixes)) == model_listing(model, prefix), prefix
    assert client.snapshot() == model


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(OPERATIONS, max_size=25), seed=st.integers(0, 2**32))
def test_random_operations_match_a_dict_model(operations: list[tuple[Any, ...]], seed: int) -> None:
    async def main() -> None:
        client = MemoryClient(seed=seed)
        model: dict[str, bytes] = {}
        for op in operations:
            if op[0] == "put":
                _, key, data = op
                await client.put(key, data)
                model[key] = data
            elif op[0] == "delete":
                await client.delete(op[1])
                model.pop(op[1], None)
            elif op[0] == "rename":
                _, source, dest, if_none_match = op
                if source not in model:
                    await raises(errors.NotFound, client.rename(source, dest, if_none_match=if_none_match))
                elif if_none_match and dest in model:
                    await raises(errors.PreconditionFailed, client.rename(source, dest, if_none_match=True))
                else:
                    await client.rename(source, dest, if_none_match=if_none_match)
                    model[dest] = model.pop(source)
            else:
                _, key, data, right_offset = op
                size = len(model.get(key, b""))
                offset = size if right_offset else size + 1
                if not data:
                    await raises(errors.InvalidRequest, client.append(key, data, offset=offset))
                elif not right_offset:
                    await raises(errors.NotFound if key not in model else errors.PreconditionFailed,
                                 client.append(key, data, offset=offset))
                else:
                    result = await client.append(key, data, offset=offset)
                    model[key] = model.get(key, b"") + data
                    assert result.size == len(model[key])
            await check_listings(client, model)

    trio.run(main)
