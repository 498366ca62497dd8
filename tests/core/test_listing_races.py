"""A listing the bucket answered before this mount's own change must not undo that change.

The real client runs requests in threads: a LIST may read the bucket, then a commit or a delete
of this mount completes, then the LIST's answer arrives. The listing is older than what the
mount knows, and applying it as the directory's truth would drop a committed file's name (its
later writes were then discarded while close() returned 0) or bring a deleted file back.
"""

from __future__ import annotations

import errno
import os

import pytest
import trio

from s3xfs.client.memory import MemoryClient
from s3xfs.core.errors import FsError
from tests.support.core import names, resolve, run_filesystem

BUCKET = "b--usw2-az1--x-s3"


class HeldListing(MemoryClient):
    """A listing that reads the bucket at once but answers only when ``hold`` is set."""

    def __init__(self) -> None:
        super().__init__(BUCKET, seed=1)
        self.hold: trio.Event | None = None
        self.listed = trio.Event()

    async def list(self, prefix: str, **kwargs):  # type: ignore[override]
        pages = [page async for page in super().list(prefix, **kwargs)]
        if self.hold is not None:
            hold, self.hold = self.hold, None
            self.listed.set()
            await hold.wait()
        for page in pages:
            yield page


async def _while_listing(fs, client: HeldListing, directory: int, change) -> set[str]:
    """Run ``change`` after the listing of ``directory`` read the bucket and before its answer lands;
    the names that listing's readdir shows."""
    client.hold, client.listed = trio.Event(), trio.Event()
    hold = client.hold
    shown: set[str] = set()

    async def list_directory() -> None:
        shown.update(await names(fs, directory))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(list_directory)
        await client.listed.wait()
        await change()
        hold.set()
    return shown


def test_a_file_deleted_during_a_listing_does_not_come_back(tmp_path) -> None:
    async def scenario(fs, client: HeldListing) -> None:
        directory = await resolve(fs, "d")
        gone = await resolve(fs, "d/gone")
        assert gone

        async def delete() -> None:
            await fs.unlink(directory, "gone")

        shown = await _while_listing(fs, client, directory, delete)
        assert "gone" not in shown and "kept" in shown
        assert await resolve(fs, "d/gone") == 0
        assert await names(fs, directory) == {"kept"}  # and a fresh listing agrees

    run_filesystem(scenario, HeldListing(), keys={"d/gone": b"x", "d/kept": b"y"},
                   staging_dir=str(tmp_path), read_only=False)


def test_a_file_committed_during_a_listing_keeps_its_name_and_later_writes(tmp_path) -> None:
    async def scenario(fs, client: HeldListing) -> None:
        directory = await resolve(fs, "d")
        opened, _ = await fs.create(directory, "f", os.O_WRONLY)
        await fs.write(opened.fh, 0, b"first ")

        async def commit() -> None:
            await fs.fsync(opened.fh)

        shown = await _while_listing(fs, client, directory, commit)
        assert "f" in shown
        await fs.write(opened.fh, 6, b"second")
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
        assert client.snapshot()["d/f"] == b"first second"

    run_filesystem(scenario, HeldListing(), keys={"d/other": b"x"}, staging_dir=str(tmp_path))


def test_a_name_lost_without_an_unlink_is_still_committed(tmp_path) -> None:
    """The commit's own safety net: only an unlink or a replacement by this mount discards content."""
    async def scenario(fs, client: HeldListing) -> None:
        directory = await resolve(fs, "d")
        opened, _ = await fs.create(directory, "f", os.O_WRONLY)
        await fs.write(opened.fh, 0, b"first ")
        await fs.fsync(opened.fh)
        await fs.write(opened.fh, 6, b"second")
        fs.inodes.remove_name(directory, "f")  # as a stale listing did before the fix
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
        assert client.snapshot()["d/f"] == b"first second"
        assert await resolve(fs, "d/f") != 0

    run_filesystem(scenario, HeldListing(), keys={"d/other": b"x"}, staging_dir=str(tmp_path))


def test_an_unlinked_file_still_being_written_stores_nothing(tmp_path) -> None:
    async def scenario(fs, client: HeldListing) -> None:
        directory = await resolve(fs, "d")
        opened, _ = await fs.create(directory, "f", os.O_WRONLY)
        await fs.write(opened.fh, 0, b"first ")
        await fs.fsync(opened.fh)
        await fs.unlink(directory, "f")
        await fs.write(opened.fh, 6, b"second")
        await fs.flush(opened.fh)
        await fs.release(opened.fh)
        assert "d/f" not in client.snapshot()
        with pytest.raises(FsError) as failure:
            await fs.getattr(await resolve(fs, "d/f") or 0)
        assert failure.value.errno == errno.ENOENT

    run_filesystem(scenario, HeldListing(), keys={"d/other": b"x"}, staging_dir=str(tmp_path))
