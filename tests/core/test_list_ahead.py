"""Directory read-ahead: a traversal's next subdirectories are listed early, once each, correctly."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from s3xfs.client import errors
from s3xfs.client.memory import MemoryClient
from s3xfs.core.fs import Filesystem
from s3xfs.core.inodes import ROOT_INODE
from s3xfs.core.list_ahead import ListAhead
from tests.support.core import names, resolve, run_filesystem

SUBDIRS = 20
TREE = {f"top/d{n:02}/f{i}": bytes([n, i]) for n in range(SUBDIRS) for i in range(3)}


def run(fs_test, **options):
    return run_filesystem(fs_test, MemoryClient(seed=3), keys=TREE, **options)


async def entries_of(fs: Filesystem, ino: int) -> list:
    """A directory's entries in readdir order (one opendir), without . and .."""
    fh = await fs.opendir(ino)
    try:
        return [entry for _, entry in fs.readdir(fh, 0) if entry.name not in (".", "..")]
    finally:
        fs.releasedir(fh)


async def subdirectories(fs: Filesystem) -> tuple[list[str], dict[str, int]]:
    """top's subdirectories in readdir order (top is listed), and their inode numbers."""
    order = [entry.name for entry in await entries_of(fs, await resolve(fs, "top"))]
    return order, {name: await resolve(fs, f"top/{name}") for name in order}


async def walk(fs: Filesystem, ino: int, path: str = "") -> dict[str, set[str]]:
    """Depth first in readdir order, as find(1) does: every directory's names by path."""
    entries = await entries_of(fs, ino)
    tree = {path: {entry.name for entry in entries}}
    for entry in entries:
        if entry.inode.is_dir:
            tree |= await walk(fs, entry.inode.ino, f"{path}/{entry.name}")
    return tree


def expected_tree() -> dict[str, set[str]]:
    tree = {"": {"top"}, "/top": {f"d{n:02}" for n in range(SUBDIRS)}}
    tree |= {f"/top/d{n:02}": {"f0", "f1", "f2"} for n in range(SUBDIRS)}
    return tree


INF = float("inf")


def test_decides_nothing_before_the_walk_moves_on_then_keeps_a_window_ahead():
    ahead = ListAhead(window=3)
    listing = [f"d{n}" for n in range(10)]
    assert ahead.opened(7, 1, listing, 10, "d0", 0.0, INF) == []
    assert ahead.opened(7, 1, listing, 10, "d0", 0.1, INF) == []  # the same one again: no step
    assert ahead.opened(7, 1, listing, 10, "d1", 0.2, INF) == ["d2", "d3", "d4"]
    assert ahead.opened(7, 1, listing, 10, "d2", 0.3, INF) == ["d5"]
    assert ahead.opened(7, 1, listing, 10, "d1", 0.4, INF) == []  # going back: no step
    assert ahead.opened(7, 1, listing, 10, "d9", 0.5, INF) == []  # nothing after the last one
    assert ahead.opened(7, 1, listing, 10, "made-here", 0.6, INF) == []  # not in the listing
    assert ahead.opened(7, 2, listing, 10, "d4", 0.7, INF) == []  # a newer listing: detection starts over
    assert ahead.opened(7, 2, listing, 10, "d5", 0.8, INF) == ["d6", "d7", "d8"]


def test_a_walk_in_name_order_is_followed_in_name_order():
    ahead = ListAhead(window=3)
    listing = ["c", "a", "e", "b", "d", "g", "f"]  # a directory bucket's readdir order: no order
    assert ahead.opened(1, 1, listing, 7, "a", 0.0, INF) == []
    assert ahead.opened(1, 1, listing, 7, "b", 0.1, INF) == ["c", "d", "e"]  # ls -R, rsync, ImageFolder
    assert ahead.opened(1, 1, listing, 7, "c", 0.2, INF) == ["f"]


def test_a_walk_in_no_known_order_lists_nothing_ahead():
    ahead = ListAhead(window=3)
    listing = [f"d{n}" for n in range(10)]
    for t, name in enumerate(["d3", "d7", "d1", "d9", "d5", "d0"]):
        assert ahead.opened(1, 1, listing, 10, name, t / 10, INF) == []


def test_reopening_one_subdirectory_is_never_a_traversal():
    ahead = ListAhead(window=3)
    listing = [f"d{n}" for n in range(10)]
    assert all(ahead.opened(1, 1, listing, 10, "d3", float(t), INF) == [] for t in range(20))


def test_two_opens_far_apart_are_not_one_walk():
    ahead = ListAhead(window=3)
    listing = [f"d{n}" for n in range(10)]
    assert ahead.opened(1, 1, listing, 10, "d0", 0.0, INF) == []
    assert ahead.opened(1, 1, listing, 10, "d4", 3600.0, INF) == []  # an hour later: a new start
    assert ahead.opened(1, 1, listing, 10, "d5", 3600.1, INF) == ["d6", "d7", "d8"]


def test_lists_no_further_ahead_than_the_walk_reaches_within_the_ttl():
    ahead = ListAhead(window=8)
    listing = [f"d{n:02}" for n in range(40)]
    # One sibling every 0.4 s with a 1 s TTL: the next two are reached in time (0.4 s, 0.8 s).
    assert ahead.opened(1, 1, listing, 40, "d00", 0.0, 1.0) == []
    assert ahead.opened(1, 1, listing, 40, "d01", 0.4, 1.0) == ["d02", "d03"]
    assert ahead.opened(1, 1, listing, 40, "d02", 0.8, 1.0) == ["d04"]
    assert ahead.opened(1, 1, listing, 40, "d03", 1.2, 1.0) == ["d05"]
    # Then subtrees of 5 s each: the pace says no listing made now would be used within its TTL.
    assert ahead.opened(1, 1, listing, 40, "d04", 6.2, 1.0) == []
    assert ahead.opened(1, 1, listing, 40, "d05", 11.2, 1.0) == []
    # A fast walk gets the whole window back.
    assert ahead.opened(1, 1, listing, 40, "d06", 11.21, 60.0) == [f"d{n:02}" for n in range(7, 15)]


def test_follows_only_the_subdirectories_at_the_front_of_a_listing():
    ahead = ListAhead(window=3)
    listing = ["a", "b", "c", "d"] + [f"file{n}" for n in range(1000)]
    assert ahead.opened(1, 1, listing, 4, "a", 0.0, INF) == []
    assert ahead.opened(1, 1, listing, 4, "b", 0.1, INF) == ["c", "d"]  # never the files that follow
    assert ahead.opened(1, 1, listing, 4, "file3", 0.2, INF) == []  # not a subdirectory: no place


def test_a_walk_lists_every_directory_once_and_most_of_them_ahead():
    async def check(fs, client):
        assert await walk(fs, ROOT_INODE) == expected_tree()
        # The root, top, and each subdirectory: one LIST each, none twice, although most were
        # listed before their opendir came (and some opendirs waited for theirs under way).
        assert client.calls["ListObjectsV2"] == 2 + SUBDIRS
        assert fs.counters["listings"] == 2 + SUBDIRS
        # Most ahead of their opendir: all but the first two, less any whose opendir came while it
        # still waited for a turn (the opendir lists it then).
        assert SUBDIRS // 2 <= fs.counters["listings_ahead"] <= SUBDIRS - 2
    run(check, metadata_ttl=60)


def test_listings_ahead_overlap_when_the_bucket_is_slow():
    async def check(fs, client):
        client.latency = 0.02
        in_flight = peak = 0
        original = client.list

        async def counting_list(prefix, **kwargs):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                async for page in original(prefix, **kwargs):
                    yield page
            finally:
                in_flight -= 1

        client.list = counting_list
        assert await walk(fs, ROOT_INODE) == expected_tree()
        assert peak > 1  # without read-ahead a walk has one LIST in flight at a time
        assert client.calls["ListObjectsV2"] == 2 + SUBDIRS
    run(check, metadata_ttl=60)


def test_one_open_of_one_subdirectory_lists_nothing_else():
    async def check(fs, client):
        top = await resolve(fs, "top")
        await names(fs, top)
        client.calls.clear()
        assert await names(fs, await resolve(fs, "top/d03")) == {"f0", "f1", "f2"}
        await trio.testing.wait_all_tasks_blocked()
        assert client.calls["ListObjectsV2"] == 1 and fs.counters["listings_ahead"] == 0
    run(check, metadata_ttl=60)


def test_without_metadata_caching_nothing_is_listed_ahead():
    async def check(fs, client):
        assert await walk(fs, ROOT_INODE) == expected_tree()
        assert fs.counters["listings_ahead"] == 0
        assert client.calls["ListObjectsV2"] == 2 + SUBDIRS
    run(check, metadata_ttl=0)


def test_a_failed_listing_ahead_is_the_opendir_s_to_retry_and_report():
    async def check(fs, client):
        order, d = await subdirectories(fs)
        await names(fs, d[order[0]])
        client.fail_next("ListObjectsV2", errors.AccessDenied("denied"), key=f"top/{order[2]}/")
        await names(fs, d[order[1]])  # lists order[2..9] ahead: order[2]'s fails
        await trio.testing.wait_all_tasks_blocked()
        assert fs.counters["listings_ahead"] == 7
        before = client.calls["ListObjectsV2"]
        assert await names(fs, d[order[2]]) == {"f0", "f1", "f2"}  # its opendir lists it again
        assert client.calls["ListObjectsV2"] == before + 1
        # Refused every time: the listing ahead fails quietly, the opendir reports the refusal.
        client.fail_next("ListObjectsV2", errors.AccessDenied("denied"), times=2, key=f"top/{order[10]}/")
        await names(fs, d[order[3]])  # lists order[10] ahead
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(errors.AccessDenied):
            await names(fs, d[order[10]])
    run(check, metadata_ttl=60)


def test_an_opendir_waits_for_the_listing_under_way_instead_of_sending_another():
    async def check(fs, client):
        order, d = await subdirectories(fs)
        await names(fs, d[order[0]])
        base = client.calls["ListObjectsV2"]
        gate = trio.Event()

        async def hold_order_2(operation, key):
            if key == f"top/{order[2]}/":
                await gate.wait()

        client.before_call = hold_order_2
        await names(fs, d[order[1]])  # its own listing; order[2..9] are listed ahead meanwhile
        assert fs.inodes.get(d[order[2]]).listing_done is not None  # held under way
        async with trio.open_nursery() as nursery:
            nursery.start_soon(names, fs, d[order[2]])
            await trio.testing.wait_all_tasks_blocked()
            gate.set()  # the opendir waited for the listing under way instead of sending its own
        await trio.testing.wait_all_tasks_blocked()
        # order[1] itself, order[2..9] ahead, order[10] ahead of order[2]'s open: each once.
        assert client.calls["ListObjectsV2"] == base + 10
        assert await names(fs, d[order[2]]) == {"f0", "f1", "f2"}
        assert client.calls["ListObjectsV2"] == base + 10
    run(check, metadata_ttl=60)


def test_a_change_made_while_a_listing_ahead_is_under_way_is_kept():
    async def check(fs, client):
        order, d = await subdirectories(fs)
        await names(fs, d[order[0]])
        gate = trio.Event()
        original = client.list

        async def stale_list(prefix, **kwargs):
            pages = [page async for page in original(prefix, **kwargs)]  # the bucket as it is now
            if prefix == f"top/{order[2]}/":
                await gate.wait()  # ... answered only after the unlink below
            for page in pages:
                yield page

        client.list = stale_list
        await names(fs, d[order[1]])  # starts the listings ahead of order[2..]
        await trio.testing.wait_all_tasks_blocked()
        assert fs.inodes.get(d[order[2]]).listing_done is not None  # order[2]'s: read, not answered
        await fs.unlink(d[order[2]], "f1")
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert await names(fs, d[order[2]]) == {"f0", "f2"}  # the stale listing did not bring f1 back
    run(check, metadata_ttl=60)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_deep_walk_under_the_default_ttl_lists_each_directory_once():
    """Each top directory's subtree takes longer than the 1 s TTL: listings made too far ahead
    would expire unused and be made again."""
    keys = {f"a{a:02}/b{b}/f": b"x" for a in range(12) for b in range(5)}
    clock = FakeClock()

    async def slow_walk(fs, ino):
        clock.now += 0.1  # each directory takes the walker 0.1 s
        for entry in await entries_of(fs, ino):
            if entry.inode.is_dir:
                await slow_walk(fs, entry.inode.ino)
        await trio.testing.wait_all_tasks_blocked()  # listings ahead land at this instant of the clock

    async def check(fs, client):
        await slow_walk(fs, ROOT_INODE)
        assert client.calls["ListObjectsV2"] == 1 + 12 + 12 * 5  # every directory once
        assert fs.counters["listings_ahead"] > 0
    run_filesystem(check, MemoryClient(seed=5), keys=keys, clock=clock, metadata_ttl=1.0)


def test_a_directory_too_long_to_list_ahead_is_left_to_its_opendir_from_then_on():
    keys = {"top/d0/f": b"x"} | {f"top/d2/f{i:05}": b"" for i in range(10_500)}
    clock = FakeClock()

    async def check(fs, client):
        top = await resolve(fs, "top")
        await names(fs, top)
        d0, d2 = await resolve(fs, "top/d0"), await resolve(fs, "top/d2")
        fs.list_ahead.opened = lambda *args: ["d2"]  # whatever the readdir order, d2 is next
        await names(fs, d0)
        await trio.testing.wait_all_tasks_blocked()
        assert fs.inodes.get(d2).too_long and fs.counters["listings_ahead"] == 0  # given up after 10 pages
        assert len(await names(fs, d2)) == 10_500  # its own opendir lists it whole
        clock.now += 120  # the TTL is over; a later walk never lists d2 ahead again
        await names(fs, top)
        client.calls.clear()
        await names(fs, d0)
        await trio.testing.wait_all_tasks_blocked()
        assert client.calls["ListObjectsV2"] == 1  # d0's own
    run_filesystem(check, MemoryClient(seed=5), keys=keys, clock=clock, metadata_ttl=60)


def test_an_opendir_does_not_wait_behind_listings_ahead_that_have_not_started():
    async def check(fs, client):
        order, d = await subdirectories(fs)
        await names(fs, d[order[0]])
        busy = [object() for _ in range(fs._list_ahead_limiter.total_tokens)]
        for borrower in busy:  # other directories' listings ahead hold every turn
            fs._list_ahead_limiter.acquire_on_behalf_of_nowait(borrower)
        await names(fs, d[order[1]])  # order[2..9] are to be listed ahead: all wait for a turn
        await trio.testing.wait_all_tasks_blocked()
        assert fs.inodes.get(d[order[5]]).listing_done is not None
        with trio.fail_after(5):
            assert await names(fs, d[order[5]]) == {"f0", "f1", "f2"}  # listed by its opendir, at once
        for borrower in busy:
            fs._list_ahead_limiter.release_on_behalf_of(borrower)
        await trio.testing.wait_all_tasks_blocked()
        before = client.calls["ListObjectsV2"]
        assert await names(fs, d[order[4]]) == {"f0", "f1", "f2"}  # the others went on as before
        assert client.calls["ListObjectsV2"] == before
    run(check, metadata_ttl=60)
