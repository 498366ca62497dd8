"""Read-ahead and the memory budget (s3xfs/core/prefetch.py) against the in-memory client."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3xfs.client import errors
from s3xfs.client.memory import MemoryClient
from s3xfs.core.prefetch import MemoryBudget, Prefetcher, SharedReads

KEY = "data/object.bin"
KiB = 1024
MiB = 1024 * KiB

# Small geometry so tests cross many part and block boundaries with little data.
SMALL = dict(part_size=64 * KiB, block_size=16 * KiB, initial_window=16 * KiB, max_window=256 * KiB,
             max_parallel=4)


def trio_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class RecordingClient(MemoryClient):
    """Records every ranged GET (start, length, if_match) and the most GETs ever in flight;
    ``fail_ranges[start]`` makes the next GET starting there raise (fail_next cannot aim at a
    range, and the order in which trio starts parallel GETs is deliberately unspecified).
    ``jitter`` adds a random delay of up to that many seconds to each GET, to shuffle completions."""

    def __init__(self, *, jitter: float = 0.0, **kwargs: Any) -> None:
        super().__init__(seed=7, **kwargs)
        self.jitter = jitter
        self._rng = random.Random(3)
        self.ranges: list[tuple[int, int, str | None]] = []
        self.fail_ranges: dict[int, errors.ClientError] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    async def get_range(self, key: str, start: int, length: int, *, if_match: str | None = None) -> bytes:
        self.ranges.append((start, length, if_match))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.jitter:
                await trio.sleep(self._rng.random() * self.jitter)
            data = await super().get_range(key, start, length, if_match=if_match)
            error = self.fail_ranges.pop(start, None)
            if error is not None:
                raise error
            return data
        finally:
            self.in_flight -= 1


def store(data: bytes, key: str = KEY, **kwargs: Any) -> RecordingClient:
    client = RecordingClient(**kwargs)
    client.put_object_sync(key, data)
    return client


@asynccontextmanager
async def prefetchers(client: MemoryClient, budget: MemoryBudget) -> AsyncIterator[Callable[..., Awaitable[Prefetcher]]]:
    """Yield a factory of started prefetchers (for keys of ``client``); close them all at the end."""
    opened: list[Prefetcher] = []
    async with trio.open_nursery() as nursery:

        async def make(key: str = KEY, **kwargs: Any) -> Prefetcher:
            obj = client.objects[key]
            pf = Prefetcher(client, key, obj.size, obj.etag, budget, **kwargs)
            await pf.start(nursery)
            opened.append(pf)
            return pf

        try:
            yield make
        finally:
            for pf in opened:
                await pf.close()
            nursery.cancel_scope.cancel()


async def read(pf: Prefetcher, offset: int, size: int) -> bytes:
    """What the FUSE handler does: the synchronous fast path, then the awaiting one."""
    data = pf.read_buffered(offset, size)
    if data is None:
        data = await pf.read(offset, size)
    return data


def assert_sane_gets(client: RecordingClient, size: int, etag: str) -> None:
    for start, length, if_match in client.ranges:
        assert if_match == etag
        assert 0 <= start and length > 0 and start + length <= size, (start, length, size)


# --- MemoryBudget ---------------------------------------------------------------------------


@trio_test
async def test_budget_try_acquire_release_and_peak() -> None:
    budget = MemoryBudget(100)
    assert budget.try_acquire(60)
    assert not budget.try_acquire(41)
    assert budget.try_acquire(40)
    assert (budget.used, budget.peak) == (100, 100)
    budget.release(70)
    assert (budget.used, budget.peak, budget.free) == (30, 100, 70)
    assert not budget.try_acquire(101)  # never clamped: read-ahead larger than the budget is skipped
    with pytest.raises(RuntimeError):
        budget.release(31)
    budget.release(30)
    assert budget.used == 0


@trio_test
async def test_budget_acquire_waits_in_order_and_blocks_try_acquire() -> None:
    budget = MemoryBudget(100)
    assert budget.try_acquire(90)
    order: list[str] = []

    async def demand(name: str, n: int) -> None:
        await budget.acquire(n)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(demand, "a", 50)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(demand, "b", 5)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.waiting == 2 and order == []
        assert not budget.try_acquire(5)  # fits, but a demand read is waiting: read-ahead yields
        budget.release(30)
        await trio.testing.wait_all_tasks_blocked()
        assert order == [] and budget.used == 60  # b would fit, but waits behind a (FIFO)
        budget.release(15)
    assert sorted(order) == ["a", "b"]
    assert budget.used == 100 and budget.peak == 100


@trio_test
async def test_budget_clamps_huge_requests_and_cancelled_acquire_holds_nothing() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(10_000)  # clamped: would otherwise wait forever
    assert budget.used == 100
    with trio.move_on_after(0.05):
        await budget.acquire(1)
    assert budget.waiting == 0 and budget.used == 100
    budget.release(10_000)
    assert budget.used == 0 and budget.peak == 100


# --- byte-exact reads -------------------------------------------------------------------------


@trio_test
async def test_sequential_reads_are_exact_and_fetch_every_byte_once() -> None:
    data = blob(3 * MiB + 12_345)
    client = store(data)
    client.latency = 0.001
    budget = MemoryBudget(4 * MiB)
    async with prefetchers(client, budget) as make:
        pf = await make(**SMALL)
        got = bytearray()
        while len(got) < len(data):
            got += await read(pf, len(got), 128 * KiB)
        assert bytes(got) == data
        assert await pf.read(len(data), 128 * KiB) == b""
        assert pf.stats["random_reads"] == 0
        assert pf.stats["bytes_fetched"] == len(data)  # nothing fetched twice
        assert sum(length for _, length, _ in client.ranges) == len(data)
        assert pf.stats["hits"] > 0
    assert_sane_gets(client, len(data), client.objects[KEY].etag)
    assert budget.used == 0


@trio_test
async def test_eof_straddling_and_past_eof_reads() -> None:
    data = blob(200_001, seed=3)
    client = store(data)
    async with prefetchers(client, MemoryBudget(1 * MiB)) as make:
        pf = await make(**SMALL)
        size = len(data)
        assert await pf.read(size - 10, 4096) == data[-10:]
        assert await pf.read(size, 4096) == b""
        assert await pf.read(size + 5000, 4096) == b""
        assert pf.read_buffered(size + 1, 10) == b""
        assert await pf.read(0, 0) == b""
        boundary = SMALL["part_size"]
        assert await pf.read(boundary - 100, 300) == data[boundary - 100:boundary + 200]  # straddles a part
        assert await pf.read(boundary - 5, 10) == data[boundary - 5:boundary + 5]
        assert await pf.read(0, 10 * size) == data  # many buffers in one read
        with pytest.raises(ValueError):
            await pf.read(-1, 10)
    assert_sane_gets(client, len(data), client.objects[KEY].etag)


@trio_test
async def test_zero_size_object_issues_no_get() -> None:
    client = store(b"")
    async with prefetchers(client, MemoryBudget(1 * MiB)) as make:
        pf = await make()
        assert pf.read_buffered(0, 4096) == b""
        assert await pf.read(0, 4096) == b""
        assert await pf.read(100, 1) == b""
    assert client.calls["GetObject"] == 0


read_ops = st.lists(
    st.tuples(st.sampled_from(["seq", "seq", "rand", "near"]), st.integers(0, 1 << 30), st.integers(0, 70_000)),
    min_size=1, max_size=25)


def _placed(ops: list[tuple[str, int, int]], size: int) -> list[tuple[int, int]]:
    """(offset, length) reads from a drawn plan: "seq" continues, "near" jumps a little, else anywhere."""
    reads: list[tuple[int, int]] = []
    position = 0
    for kind, offset, length in ops:
        if kind == "seq":
            offset = position
        elif kind == "near":
            offset = max(0, position + offset % 40_000 - 20_000)
        else:
            offset %= size + 1000
        reads.append((offset, length))
        position = offset + length
    return reads


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.one_of(st.just(0), st.integers(1, 300_000)), ops=read_ops, concurrent=st.booleans(),
       limit=st.sampled_from([3000, 16 * KiB, 64 * KiB, 4 * MiB]), jitter=st.sampled_from([0.0, 0.0005]))
def test_reads_match_the_object(size: int, ops: list[tuple[str, int, int]], concurrent: bool, limit: int,
                                jitter: float) -> None:
    """Any mix of sequential, nearby and random reads (also past EOF, also concurrent, also with a
    budget smaller than one buffer) returns exactly the object's bytes and leaks no budget."""
    data = blob(size, seed=size)
    client = store(data, jitter=jitter)
    budget = MemoryBudget(limit)
    requests = _placed(ops, size)

    async def main() -> None:
        async with prefetchers(client, budget) as make:
            pf = await make(**SMALL, max_blocks=4)
            results: dict[int, bytes] = {}

            async def one(i: int, offset: int, length: int) -> None:
                results[i] = await read(pf, offset, length)
                pf.check_invariants()
                assert pf.held <= budget.used <= budget.limit  # less: grants in transit to fetch tasks

            if concurrent:
                async with trio.open_nursery() as nursery:
                    for i, (offset, length) in enumerate(requests):
                        nursery.start_soon(one, i, offset, length)
            else:
                for i, (offset, length) in enumerate(requests):
                    await one(i, offset, length)
            for i, (offset, length) in enumerate(requests):
                assert results[i] == data[offset:offset + length], (i, offset, length)
        pf.check_invariants()
        await trio.testing.wait_all_tasks_blocked()
        assert pf.held == budget.used
        await pf.close()
        pf.check_invariants()
        assert budget.used == 0
        assert budget.peak <= budget.limit

    trio.run(main)
    assert_sane_gets(client, size, client.objects[KEY].etag)
    if size == 0:
        assert client.calls["GetObject"] == 0


# --- access patterns ------------------------------------------------------------------------


@trio_test
async def test_sequential_reader_grows_the_window_into_fewer_larger_gets() -> None:
    part, initial, maximum = 1 * MiB, 64 * KiB, 4 * MiB
    data = blob(16 * MiB, seed=5)
    client = store(data)
    client.latency = 0.002
    budget = MemoryBudget(64 * MiB)
    async with prefetchers(client, budget) as make:
        pf = await make(part_size=part, block_size=64 * KiB, initial_window=initial, max_window=maximum,
                        max_parallel=8)
        offset = 0
        while offset < len(data):
            assert await read(pf, offset, 128 * KiB) == data[offset:offset + 128 * KiB]
            offset += 128 * KiB
        assert pf.window == maximum
    lengths = [length for _, length, _ in sorted(client.ranges)]
    assert lengths[0] == initial
    assert lengths == sorted(lengths), lengths  # only ever larger along the file
    assert max(lengths) == part
    assert lengths.count(part) >= len(data) // part - 2  # the bulk moves in whole parts
    assert len(lengths) < len(data) // initial // 8  # far fewer requests than initial-size ones
    for start, length, _ in client.ranges:
        assert start % length == 0  # aligned...
        assert start // part == (start + length - 1) // part  # ...and never across a part boundary
    assert client.max_in_flight <= 8
    assert sum(lengths) == len(data)
    # Memory is bounded by the window, not by the file.
    assert budget.peak <= maximum + 2 * part, budget.peak
    assert budget.used == 0


@trio_test
async def test_random_reads_fetch_only_aligned_blocks() -> None:
    block = 64 * KiB
    data = blob(4 * MiB + 1000, seed=9)
    client = store(data)
    nblocks = len(data) // block
    rng = random.Random(1)
    while True:  # a visiting order where no read is near the previous one (or the start)
        order = rng.sample(range(3, nblocks), 20)
        if all(abs(a - b) >= 3 for a, b in zip(order, order[1:])):
            break
    async with prefetchers(client, MemoryBudget(8 * MiB)) as make:
        pf = await make(part_size=1 * MiB, block_size=block, initial_window=block, max_window=4 * MiB)
        for i in order:
            offset = i * block + 1000
            assert await read(pf, offset, 16 * KiB) == data[offset:offset + 16 * KiB]
        assert pf.stats["random_reads"] == len(order) and pf.stats["sequential_reads"] == 0
    for start, length, _ in client.ranges:
        assert start % block == 0 and length == min(block, len(data) - start)
    assert client.calls["GetObject"] == len(order)
    assert sorted(start // block for start, _, _ in client.ranges) == sorted(order)
    assert sum(length for _, length, _ in client.ranges) == len(order) * block


@trio_test
async def test_kernel_sized_reads_inside_a_random_block_hit_memory() -> None:
    data = blob(16 * MiB, seed=11)
    client = store(data)
    client.latency = 0.001
    async with prefetchers(client, MemoryBudget(64 * MiB)) as make:
        pf = await make()  # production defaults: 1 MiB blocks
        base = 7 * MiB
        for k in range(8):
            offset = base + k * 128 * KiB
            assert await read(pf, offset, 128 * KiB) == data[offset:offset + 128 * KiB]
        assert pf.stats["random_reads"] == 1
        assert pf.stats["misses"] == 1 and pf.stats["hits"] == 7
    touching = [(s, n) for s, n, _ in client.ranges if s < base + MiB and s + n > base]
    assert touching == [(base, MiB)]


@trio_test
async def test_random_jump_resets_the_window() -> None:
    data = blob(8 * MiB, seed=2)
    client = store(data)
    async with prefetchers(client, MemoryBudget(64 * MiB)) as make:
        pf = await make(**SMALL)
        for offset in range(0, 2 * MiB, 32 * KiB):
            await read(pf, offset, 32 * KiB)
        assert pf.window == SMALL["max_window"]
        assert await read(pf, 6 * MiB, 100) == data[6 * MiB:6 * MiB + 100]
        assert pf.window == SMALL["initial_window"]
        assert pf.stats["random_reads"] == 1


# --- budget ---------------------------------------------------------------------------------


@trio_test
async def test_budget_never_exceeded_by_concurrent_prefetchers() -> None:
    objects = {f"obj/{i}": blob(2 * MiB + i * 777, seed=i) for i in range(5)}
    client = RecordingClient()
    for key, data in objects.items():
        client.put_object_sync(key, data)
    client.latency = 0.001
    budget = MemoryBudget(512 * KiB)
    opened: list[Prefetcher] = []

    async with prefetchers(client, budget) as factory:

        async def make(key: str, **kwargs: Any) -> Prefetcher:
            opened.append(await factory(key, **kwargs))
            return opened[-1]

        async def sequential(key: str) -> None:
            pf = await make(key, **SMALL)
            data = objects[key]
            for offset in range(0, len(data), 48 * KiB):
                assert await read(pf, offset, 48 * KiB) == data[offset:offset + 48 * KiB]
                pf.check_invariants()
                assert sum(p.held for p in opened) <= budget.used <= budget.limit

        async def scattered(key: str, seed: int) -> None:
            pf = await make(key, **SMALL)
            data = objects[key]
            rng = random.Random(seed)
            for _ in range(40):
                offset = rng.randrange(len(data))
                assert await read(pf, offset, 20_000) == data[offset:offset + 20_000]
                pf.check_invariants()

        async with trio.open_nursery() as nursery:
            for key in list(objects)[:4]:
                nursery.start_soon(sequential, key)
            nursery.start_soon(scattered, "obj/4", 1)
            nursery.start_soon(scattered, "obj/0", 2)
    assert budget.peak <= budget.limit
    assert budget.used == 0


@trio_test
async def test_tiny_budget_skips_readahead_but_demand_reads_complete() -> None:
    data = blob(300_000, seed=4)
    for limit in (SMALL["block_size"], 1000):  # one block; less than one block (clamped)
        client = store(data)
        budget = MemoryBudget(limit)
        async with prefetchers(client, budget) as make:
            pf = await make(**SMALL)
            got = bytearray()
            with trio.fail_after(10):
                while len(got) < len(data):
                    got += await read(pf, len(got), 8 * KiB)
            assert bytes(got) == data
            assert pf.stats["readahead_skipped"] > 0
        assert all(length <= SMALL["block_size"] for _, length, _ in client.ranges)
        assert budget.used == 0 and budget.peak <= limit


@trio_test
async def test_idle_readahead_does_not_starve_another_files_demand_read() -> None:
    client = RecordingClient()
    client.put_object_sync("a", blob(4 * MiB, seed=1))
    client.put_object_sync("b", blob(4 * MiB, seed=2))
    budget = MemoryBudget(1 * MiB)
    async with prefetchers(client, budget) as make:
        a = await make("a", part_size=256 * KiB, block_size=64 * KiB, initial_window=1 * MiB, max_window=1 * MiB)
        await a.read(0, 4096)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.free < 64 * KiB  # a's read-ahead holds the budget, and a's reader went idle
        b = await make("b", block_size=64 * KiB)
        with trio.fail_after(5):
            assert await b.read(3 * MiB, 4096) == client.objects["b"].data[3 * MiB:3 * MiB + 4096]
        assert a.stats["reclaimed_bytes"] > 0
        assert await a.read(4096, 4096) == client.objects["a"].data[4096:8192]  # a still works
    assert budget.used == 0 and budget.peak <= budget.limit


# --- consistency and errors -----------------------------------------------------------------


@trio_test
async def test_replaced_object_raises_precondition_failed_never_mixes_versions() -> None:
    old = blob(256 * KiB, seed=1)
    new = blob(256 * KiB, seed=2)
    client = store(old)
    part = 64 * KiB
    # The budget holds one part, so read-ahead cannot fetch the second one ahead of time.
    async with prefetchers(client, MemoryBudget(part)) as make:
        pf = await make(part_size=part, block_size=part, initial_window=part, max_window=part)
        assert await pf.read(0, 1000) == old[:1000]
        await trio.testing.wait_all_tasks_blocked()
        assert pf.read_buffered(1000, 1000) == old[1000:2000]  # first part arrived (old version)
        client.put_object_sync(KEY, new)
        with pytest.raises(errors.PreconditionFailed):
            await pf.read(part - 100, 200)  # straddles the old part and one not fetched yet
        with pytest.raises(errors.PreconditionFailed):
            await pf.read(0, 10)  # sticky: the handle's version is gone
        assert pf.read_buffered(0, 10) is None
    for _, _, if_match in client.ranges:
        assert if_match is not None


@trio_test
async def test_object_replaced_mid_stream_by_a_hook() -> None:
    """The object changes at the exact moment the third GET is sent: every read that returns
    is entirely the old version, and the reader sees PreconditionFailed."""
    old = blob(1 * MiB, seed=1)
    client = store(old)
    sent = 0

    async def hook(operation: str, key: str | None) -> None:
        nonlocal sent
        sent += 1
        if operation == "GetObject" and sent == 3:
            client.put_object_sync(KEY, blob(1 * MiB, seed=2))

    client.before_call = hook
    async with prefetchers(client, MemoryBudget(4 * MiB)) as make:
        pf = await make(**SMALL)
        returned = 0
        with pytest.raises(errors.PreconditionFailed):
            for offset in range(0, len(old), 10_000):
                assert await read(pf, offset, 10_000) == old[offset:offset + 10_000]
                returned += 1
        assert returned > 0


@trio_test
async def test_failed_get_is_raised_once_then_refetched() -> None:
    data = blob(200 * KiB, seed=6)
    client = store(data)
    client.fail_ranges[0] = errors.Unavailable("boom")
    async with prefetchers(client, MemoryBudget(1 * MiB)) as make:
        pf = await make(**SMALL)
        with pytest.raises(errors.Unavailable):
            await pf.read(0, 100)
        assert await pf.read(0, 100) == data[:100]


@trio_test
async def test_failed_readahead_does_not_crash_and_is_reported_to_the_read_that_needs_it() -> None:
    data = blob(512 * KiB, seed=8)
    client = store(data)
    part = 64 * KiB
    async with prefetchers(client, MemoryBudget(4 * MiB)) as make:
        pf = await make(part_size=part, block_size=16 * KiB, initial_window=part, max_window=part, max_parallel=1)
        client.fail_ranges[part] = errors.Unavailable("read-ahead boom")
        assert await pf.read(0, 16 * KiB) == data[:16 * KiB]
        await trio.testing.wait_all_tasks_blocked()  # the next part is read ahead, and fails, harmlessly
        assert [r[:2] for r in client.ranges] == [(0, part), (part, part)]
        assert pf.read_buffered(16 * KiB, 16 * KiB) == data[16 * KiB:32 * KiB]
        with pytest.raises(errors.Unavailable):
            await read(pf, part, 100)
        assert await read(pf, part, 100) == data[part:part + 100]
        assert await read(pf, part + 100, 5000) == data[part + 100:part + 5100]


@trio_test
async def test_close_cancels_inflight_fetches_promptly() -> None:
    data = blob(8 * MiB, seed=1)
    client = store(data)
    client.latency = 10.0
    budget = MemoryBudget(32 * MiB)
    outcome: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        obj = client.objects[KEY]
        pf = Prefetcher(client, KEY, obj.size, obj.etag, budget)
        await pf.start(nursery)

        async def reader() -> None:
            try:
                await pf.read(0, 128 * KiB)
            except trio.ClosedResourceError as exc:
                outcome.append(exc)

        nursery.start_soon(reader)
        await trio.sleep(0.05)
        assert client.in_flight > 0 and budget.used > 0
        began = time.monotonic()
        await pf.close()
        assert time.monotonic() - began < 1.0
        await pf.close()  # idempotent
        assert budget.used == 0
        with pytest.raises(trio.ClosedResourceError):
            await pf.read(0, 10)
        assert pf.read_buffered(0, 10) is None
        nursery.cancel_scope.cancel()
    assert len(outcome) == 1


# --- speed (printed, not asserted) ----------------------------------------------------------


@trio_test
async def test_read_buffered_hit_rate() -> None:
    size, request = 64 * MiB, 128 * KiB
    data = blob(size, seed=12)
    client = store(data)
    budget = MemoryBudget(2 * size)
    elapsed, hits = 0.0, 0
    async with prefetchers(client, budget) as make:
        for _ in range(4):
            pf = await make(initial_window=size, max_window=size)
            await pf.read(0, request)
            await trio.testing.wait_all_tasks_blocked()  # the whole object is buffered now
            began = time.perf_counter()
            for offset in range(request, size, request):
                assert pf.read_buffered(offset, request) is not None
            elapsed += time.perf_counter() - began
            hits += size // request - 1
            await pf.close()
    rate = hits / elapsed
    print(f"\nread_buffered: {rate:,.0f} hits/s of 128 KiB = {rate * request / 1e9:.2f} GB/s "
          f"({elapsed / hits * 1e6:.1f} us per hit)")


# --- handles of one version share their reads (SharedReads) ---------------------------------


class GatedClient(RecordingClient):
    """``hold[start]``: the next GET starting there waits for that event (once)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold: dict[int, trio.Event] = {}

    async def get_range(self, key: str, start: int, length: int, *, if_match: str | None = None) -> bytes:
        gate = self.hold.pop(start, None)
        if gate is not None:
            await gate.wait()
        return await super().get_range(key, start, length, if_match=if_match)


def peer_held(shared: SharedReads, opened: list[Prefetcher]) -> int:
    """Bytes held by open prefetchers and by what closed ones left to their groups."""
    groups = {id(pf._group): pf._group for pf in opened if pf._group is not None}
    return sum(pf.held for pf in opened) + sum(group.held for group in groups.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(1, 400_000), plans=st.lists(read_ops, min_size=2, max_size=3),
       limit=st.sampled_from([3000, 64 * KiB, 4 * MiB]), jitter=st.sampled_from([0.0, 0.0005]))
def test_peers_reading_one_version_get_its_bytes_and_leak_nothing(size: int, plans: list[list[tuple[str, int, int]]],
                                                                   limit: int, jitter: float) -> None:
    """Several handles of one object read at once, each its own mix of sequential, nearby and
    random reads, and close when done (leaving their buffers and runs to the others): every read
    is exact, the invariants hold, and the budget and the groups are empty at the end."""
    data = blob(size, seed=size)
    client = store(data, jitter=jitter)
    budget = MemoryBudget(limit)
    shared = SharedReads()
    requests = [_placed(plan, size) for plan in plans]

    async def main() -> None:
        opened: list[Prefetcher] = []
        async with trio.open_nursery() as nursery:
            obj = client.objects[KEY]

            async def reader(mine: list[tuple[int, int]]) -> None:
                pf = Prefetcher(client, KEY, obj.size, obj.etag, budget, shared=shared, identity=1, **SMALL,
                                max_blocks=4)
                opened.append(pf)
                await pf.start(nursery)
                for offset, length in mine:
                    assert await read(pf, offset, length) == data[offset:offset + length], (offset, length)
                    for other in opened:
                        other.check_invariants()
                    assert peer_held(shared, opened) <= budget.used <= budget.limit
                await pf.close()
                pf.check_invariants()

            async with trio.open_nursery() as readers:
                for mine in requests:
                    readers.start_soon(reader, mine)
            nursery.cancel_scope.cancel()
        assert budget.used == 0 and len(shared) == 0

    trio.run(main)
    assert_sane_gets(client, size, client.objects[KEY].etag)


async def open_peers(client: MemoryClient, budget: MemoryBudget, shared: SharedReads, nursery: trio.Nursery,
                     n: int, **kwargs: Any) -> list[Prefetcher]:
    obj = client.objects[KEY]
    peers = [Prefetcher(client, KEY, obj.size, obj.etag, budget, shared=shared, identity="file", **kwargs)
             for _ in range(n)]
    for pf in peers:
        await pf.start(nursery)
    return peers


@trio_test
async def test_a_read_waits_on_a_peers_pending_get_instead_of_sending_its_own() -> None:
    data = blob(512 * KiB, seed=21)
    client = GatedClient()
    client.put_object_sync(KEY, data)
    budget, shared = MemoryBudget(4 * MiB), SharedReads()
    async with trio.open_nursery() as nursery:
        a, b = await open_peers(client, budget, shared, nursery, 2, **SMALL)
        gate = client.hold[16 * KiB] = trio.Event()
        assert await read(a, 0, 1000) == data[:1000]  # a's read-ahead now fetches [16K, 32K), held
        got: list[bytes] = []
        nursery.start_soon(lambda: _append(got, read(b, 20 * KiB, 1000)))
        await trio.testing.wait_all_tasks_blocked()
        assert not got
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert got == [data[20 * KiB:20 * KiB + 1000]]
        assert b.stats["shared_reads"] == 1
        assert sum(1 for start, length, _ in client.ranges if start <= 20 * KiB < start + length) == 1  # one GET
        for pf in (a, b):
            pf.check_invariants()
            await pf.close()
        nursery.cancel_scope.cancel()
    assert budget.used == 0 and len(shared) == 0


async def _append(out: list[bytes], read_call: Awaitable[bytes]) -> None:
    out.append(bytes(await read_call))


@trio_test
async def test_a_peer_closing_under_a_waiting_read_is_not_that_reads_error() -> None:
    data = blob(512 * KiB, seed=22)
    client = GatedClient()
    client.put_object_sync(KEY, data)
    budget, shared = MemoryBudget(4 * MiB), SharedReads()
    async with trio.open_nursery() as nursery:
        a, b = await open_peers(client, budget, shared, nursery, 2, **SMALL)
        client.hold[16 * KiB] = trio.Event()  # never set: a's GET would wait forever
        assert await read(a, 0, 1000) == data[:1000]
        got: list[bytes] = []
        nursery.start_soon(lambda: _append(got, read(b, 20 * KiB, 1000)))
        await trio.testing.wait_all_tasks_blocked()
        await a.close()  # cancels a's GET that b waits on
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.001)
        assert got == [data[20 * KiB:20 * KiB + 1000]]  # b fetched the range itself
        b.check_invariants()
        await b.close()
        nursery.cancel_scope.cancel()
    assert budget.used == 0 and len(shared) == 0


@trio_test
async def test_a_peers_stale_get_makes_the_waiting_read_stale_too() -> None:
    data = blob(512 * KiB, seed=23)
    client = GatedClient()
    client.put_object_sync(KEY, data)
    budget, shared = MemoryBudget(4 * MiB), SharedReads()
    async with trio.open_nursery() as nursery:
        a, b = await open_peers(client, budget, shared, nursery, 2, **SMALL)
        gate = client.hold[16 * KiB] = trio.Event()
        assert await read(a, 0, 1000) == data[:1000]
        outcome: list[BaseException] = []

        async def b_reads() -> None:
            try:
                await read(b, 20 * KiB, 1000)
            except errors.PreconditionFailed as exc:
                outcome.append(exc)

        nursery.start_soon(b_reads)
        await trio.testing.wait_all_tasks_blocked()
        client.put_object_sync(KEY, blob(512 * KiB, seed=24))
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(outcome) == 1  # never bytes of the new version
        for pf in (a, b):
            await pf.close()
        nursery.cancel_scope.cancel()
    assert budget.used == 0 and len(shared) == 0


@trio_test
async def test_read_ahead_a_closed_peer_left_serves_the_next_reader_then_is_released() -> None:
    data = blob(1 * MiB, seed=25)
    client = store(data)
    budget, shared = MemoryBudget(8 * MiB), SharedReads()
    async with trio.open_nursery() as nursery:
        a, b = await open_peers(client, budget, shared, nursery, 2, **SMALL)
        for offset in range(0, 128 * KiB, 16 * KiB):
            assert await read(a, offset, 16 * KiB) == data[offset:offset + 16 * KiB]
        await trio.testing.wait_all_tasks_blocked()
        ahead = a._s_end
        assert ahead > 160 * KiB  # a's read-ahead went on past its reader
        await a.close()  # a's reader stops at 128K: what it read ahead stays for b
        group = b._group
        assert group is not None and group.kept and group.held == budget.used - b.held
        sent = len(client.ranges)
        for offset in range(128 * KiB, ahead, 16 * KiB):
            n = min(16 * KiB, ahead - offset)
            assert await read(b, offset, n) == data[offset:offset + n]
        assert len(client.ranges) == sent or all(start >= ahead for start, _, _ in client.ranges[sent:])
        assert not group.kept  # each left buffer was released once read through
        b.check_invariants()
        await b.close()
        nursery.cancel_scope.cancel()
    assert budget.used == 0 and len(shared) == 0


@trio_test
async def test_buffers_a_closed_peer_left_are_reclaimed_for_another_files_read() -> None:
    client = RecordingClient()
    client.put_object_sync(KEY, blob(2 * MiB, seed=26))
    client.put_object_sync("other", blob(1 * MiB, seed=27))
    budget, shared = MemoryBudget(256 * KiB), SharedReads()
    async with trio.open_nursery() as nursery:
        a, b = await open_peers(client, budget, shared, nursery, 2, **SMALL)
        for offset in range(0, 96 * KiB, 16 * KiB):
            await read(a, offset, 16 * KiB)
        await trio.testing.wait_all_tasks_blocked()
        await a.close()
        group = b._group
        assert group is not None and group.held > 0
        obj = client.objects["other"]
        c = Prefetcher(client, "other", obj.size, obj.etag, budget, shared=shared, identity="other",
                       part_size=256 * KiB, block_size=256 * KiB, initial_window=256 * KiB, max_window=256 * KiB)
        await c.start(nursery)
        with trio.fail_after(5):  # needs the whole budget: only reclaiming what a left makes room
            assert await c.read(512 * KiB, 100) == obj.data[512 * KiB:512 * KiB + 100]
        assert group.held == 0
        for pf in (b, c):
            await pf.close()
        nursery.cancel_scope.cancel()
    assert budget.used == 0 and len(shared) == 0


@trio_test
async def test_read_ahead_stops_where_a_peers_stretch_begins_and_a_stray_read_past_it_fetches_little() -> None:
    """fio's jobs: a reads [0, Q), b reads [Q, 2Q). a's read-ahead stops at Q; a read of a past Q
    (the kernel's read-ahead beyond a's last read) follows b's run from the initial window."""
    data = blob(1 * MiB, seed=28)
    client = store(data)
    budget, shared = MemoryBudget(8 * MiB), SharedReads()
    quarter = 512 * KiB
    async with trio.open_nursery() as nursery:
        a, b = await open_peers(client, budget, shared, nursery, 2, **SMALL)

        async def stretch(pf: Prefetcher, start: int) -> None:
            for offset in range(start, start + quarter, 16 * KiB):
                assert await read(pf, offset, 16 * KiB) == data[offset:offset + 16 * KiB]
                await trio.sleep(0)

        async with trio.open_nursery() as readers:
            readers.start_soon(stretch, a, 0)
            readers.start_soon(stretch, b, quarter)
        await trio.testing.wait_all_tasks_blocked()
        assert a.window == SMALL["max_window"]
        assert sum(length for _, length, _ in client.ranges) == len(data)  # nothing twice, nothing past EOF
        sent = len(client.ranges)
        stray = quarter + 64 * KiB  # beyond the block b's first read fetched
        assert await read(a, stray, 16 * KiB) == data[stray:stray + 16 * KiB]
        await trio.testing.wait_all_tasks_blocked()
        fetched = sum(length for _, length, _ in client.ranges[sent:])
        assert fetched <= 2 * SMALL["initial_window"] + SMALL["block_size"], fetched  # not a whole window
        for pf in (a, b):
            pf.check_invariants()
            await pf.close()
        nursery.cancel_scope.cancel()
    assert budget.used == 0 and len(shared) == 0


def test_kept_buffers_never_overlap_and_the_last_member_releases_them() -> None:
    from s3xfs.core.prefetch import _Buffer, _Version

    budget = MemoryBudget(1 * MiB)
    group = _Version(budget)
    group.members.append(object())  # type: ignore[arg-type]  # someone is still open

    def arrived(start: int, end: int) -> _Buffer:
        buf = _Buffer(start, end)
        buf.data = bytes(end - start)
        budget._take(end - start)  # as its owner reserved it
        buf.reserved = end - start
        return buf

    group.keep([arrived(0, 100), arrived(200, 300)])
    group.keep([arrived(50, 150), arrived(300, 400), arrived(150, 200)])  # the first overlaps: released
    assert [(buf.start, buf.end) for buf in group.kept] == [(0, 100), (150, 200), (200, 300), (300, 400)]
    assert budget.used == group.held == 350
    assert group.find(250) is group.kept[2] and group.find(120) is None
    assert group.next_start(120) == 150 and group.next_start(160) == 160 and group.next_start(400) is None
    group.consumed(group.kept[0])
    assert budget.used == group.held == 250
    group.members.clear()
    group.clear()
    assert budget.used == 0 and not group.kept
    group.remember(10, 20)
    group.remember(30, 40)
    group.remember(15, 35)
    group.remember(50, 50)
    assert group.done == [(10, 40)]


@trio_test
async def test_a_stream_whose_reads_arrive_a_little_shuffled_is_kept() -> None:
    """The kernel keeps several reads of a file in flight and trio runs them in any order: a read a
    few blocks behind the furthest one is late, not a seek; it used to reset the stream, dropping
    (and refetching) everything read ahead."""
    data = blob(2 * MiB, seed=29)
    client = store(data)
    async with prefetchers(client, MemoryBudget(8 * MiB)) as make:
        pf = await make(**SMALL)
        rng = random.Random(5)
        offsets = list(range(0, len(data), 16 * KiB))
        for i in [0, *range(2, len(offsets), 4)]:  # batches of 4 reads that straddle part boundaries
            batch = offsets[i:i + 2] if i == 0 else offsets[i:i + 4]
            rng.shuffle(batch)
            for offset in batch:
                assert await read(pf, offset, 16 * KiB) == data[offset:offset + 16 * KiB]
        assert pf.stats["random_reads"] == 0
        assert pf.window == SMALL["max_window"]
    assert sum(length for _, length, _ in client.ranges) <= 1.1 * len(data)
