"""Several open handles of one file (fio --numjobs, data loaders sharing a shard): through the
filesystem core on the in-memory client, counting the bytes every GET asked for."""

from __future__ import annotations

import os
import random
from typing import Any

import trio

from s3xfs.client.memory import MemoryClient
from s3xfs.core.fs import Filesystem
from tests.support.core import resolve, run_filesystem

MiB = 1024 * 1024
KERNEL_READ = 128 * 1024  # what the kernel asks per FUSE read without raised read-ahead


class CountingClient(MemoryClient):
    """Adds up the bytes every ranged GET asked for (what the endpoint would send)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(seed=11, **kwargs)
        self.bytes_fetched = 0
        self.gets: list[tuple[int, int]] = []

    async def get_range(self, key: str, start: int, length: int, *, if_match: str | None = None) -> bytes:
        self.bytes_fetched += length
        self.gets.append((start, length))
        return await super().get_range(key, start, length, if_match=if_match)


class PageCache:
    """The kernel's page cache, as far as these tests need it: what one handle has read (in
    ``KERNEL_READ`` pieces) is served to every handle without asking the filesystem."""

    def __init__(self) -> None:
        self.pages: dict[int, bytes] = {}


async def read_range(fs: Filesystem, fh: int, size: int, start: int, end: int, cache: PageCache,
                     progress: list[int] | None = None) -> bytes:
    """Read [start, end) through one handle as the kernel does: in aligned pieces (pages), each
    from the page cache, else through the buffered path, then the awaiting one."""
    pieces = []
    for offset in range(start - start % KERNEL_READ, end, KERNEL_READ):
        data = cache.pages.get(offset)
        if data is None:
            n = min(KERNEL_READ, size - offset)
            data = fs.read_buffered(fh, offset, n)
            if data is None:
                data = await fs.read(fh, offset, n)
            data = cache.pages[offset] = bytes(data)
        pieces.append(data[max(0, start - offset):end - offset])
        if progress is not None:
            progress[0] = offset + len(data)
        await trio.sleep(0)  # other readers' requests interleave, as the kernel's do
    return b"".join(pieces)


def quarters(size: int, jobs: int = 4) -> list[tuple[int, int]]:
    step = size // jobs
    return [(i * step, size if i == jobs - 1 else (i + 1) * step) for i in range(jobs)]


def run_readers(data: bytes, spans: list[tuple[int, int]], *, after: dict[int, tuple[int, int]] | None = None,
                **options: Any) -> tuple[CountingClient, list[bytes]]:
    """One handle per span, each reading its span sequentially, all at once but those in
    ``after`` (reader i -> (reader j, offset): i opens once j has read up to that offset). The
    client, and what every handle read."""
    client = CountingClient()
    after = after or {}

    async def body(fs: Filesystem, _: MemoryClient) -> list[bytes]:
        ino = await resolve(fs, "data/big.bin")
        results: list[bytes] = [b""] * len(spans)
        progress = [[start] for start, _ in spans]
        cache = PageCache()

        async def reader(i: int) -> None:
            if i in after:
                j, offset = after[i]
                while progress[j][0] < offset:
                    await trio.sleep(0)
            handle = (await fs.open(ino, os.O_RDONLY)).fh
            try:
                results[i] = await read_range(fs, handle, len(data), *spans[i], cache, progress[i])
            finally:
                await fs.release(handle)

        async with trio.open_nursery() as nursery:
            for i in range(len(spans)):
                nursery.start_soon(reader, i)
        assert fs.budget.used == 0 and len(fs.shared_reads) == 0
        return results

    results = run_filesystem(body, client, keys={"data/big.bin": data}, **options)
    return client, results


def test_four_handles_reading_four_quarters_fetch_the_file_about_once() -> None:
    """fio --numjobs=4 --offset_increment=size/4: each handle's read-ahead used to run on past its
    quarter into the next one (up to a 64 MiB window), 2.5x to 3x the file in all."""
    data = random.Random(1).randbytes(48 * MiB + 12345)
    spans = quarters(len(data))
    client, results = run_readers(data, spans)
    for (start, end), got in zip(spans, results):
        assert got == data[start:end]
    assert client.bytes_fetched <= 1.25 * len(data), client.bytes_fetched / len(data)


def test_a_quarter_reader_that_starts_late_uses_what_its_neighbour_fetched() -> None:
    """The next handle starts after its neighbour's read-ahead is already inside its quarter: it
    reads those buffers instead of fetching them again."""
    data = random.Random(2).randbytes(32 * MiB)
    spans = quarters(len(data), 2)
    client, results = run_readers(data, spans, after={1: (0, 12 * MiB)})
    for (start, end), got in zip(spans, results):
        assert got == data[start:end]
    assert client.bytes_fetched <= 1.25 * len(data), client.bytes_fetched / len(data)


def test_two_handles_reading_the_whole_file_together_share_its_parts() -> None:
    """`cat f & cat f`: whichever handle asks first fetches a range (read-ahead included), the
    other reads it from that handle's buffers or the page cache; each used to fetch it all."""
    data = random.Random(3).randbytes(24 * MiB + 777)
    client, results = run_readers(data, [(0, len(data)), (0, len(data))])
    assert results == [data, data]
    assert client.bytes_fetched <= 1.25 * len(data), client.bytes_fetched / len(data)
