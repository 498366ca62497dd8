"""Writing through the filesystem core against the in-memory client.

What is checked: nothing is visible in the bucket before a commit (flush, fsync, close), and a
commit is whole and conditional; how each kind of write becomes requests (one PutObject, a
multipart upload streamed while writing, appends, a staged copy); where failed content is rescued;
truncation, unlink, mkdir/rmdir, rename, attributes kept in memory, read-only refusals; and a
stateful comparison of random operation sequences with a reference model.

Parts are 5 MiB at least in production; the ``small_parts`` fixture lowers that floor (the
``MIN_PART`` constant of s3xfs.core.upload) to ``PART`` bytes, so multipart paths run on kilobytes.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from s3xfs.client import errors as client_errors
from s3xfs.client.memory import MemoryClient
from s3xfs.core import upload
from s3xfs.core.errors import FsError
from s3xfs.core.fs import RENAME_EXCHANGE, RENAME_NOREPLACE, Filesystem, FsOptions
from s3xfs.core.inodes import ROOT_INODE
from s3xfs.core.upload import MAX_PARTS, AppendUpload, StagedFile, upload_part_size
from tests.support.core import run_filesystem

PART = 1024  # the part size under ``small_parts``


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(upload, "MIN_PART", PART)
    return PART


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


@pytest.fixture
def run(staging: Path):
    """``run(fs_test, keys=..., directory=..., clock=..., **FsOptions)``: run ``fs_test(fs, client)``
    on trio, the filesystem attached to a nursery and its staging directory under tmp_path."""

    def runner(fs_test, *, keys: dict[str, bytes] | None = None, directory: bool = True, clock=None, **options):
        options.setdefault("staging_dir", str(staging))
        return run_filesystem(fs_test, MemoryClient(seed=1, directory=directory, min_part_size=PART), keys=keys,
                              clock=clock, **options)

    return runner


# --- helpers -----------------------------------------------------------------------------------

async def create(fs: Filesystem, name: str, parent: int = ROOT_INODE, flags: int = os.O_WRONLY) -> tuple[int, int]:
    """create(2) of parent/name: (fh, ino)."""
    result, attrs = await fs.create(parent, name, flags | os.O_CREAT)
    return result.fh, attrs.ino


async def lookup(fs: Filesystem, name: str, parent: int = ROOT_INODE) -> int:
    return (await fs.lookup(parent, name)).ino


async def open_file(fs: Filesystem, name: str, flags: int, parent: int = ROOT_INODE) -> tuple[int, int]:
    ino = await lookup(fs, name, parent)
    assert ino, name
    return (await fs.open(ino, flags)).fh, ino


async def close(fs: Filesystem, fh: int) -> None:
    """close(2) as the kernel does it: flush, then release."""
    try:
        await fs.flush(fh)
    finally:
        await fs.release(fh)


async def write_chunks(fs: Filesystem, fh: int, data: bytes, offset: int = 0, chunk: int = 300) -> None:
    for start in range(0, len(data), chunk):
        assert await fs.write(fh, offset + start, data[start:start + chunk]) == len(data[start:start + chunk])


async def read_handle(fs: Filesystem, fh: int, offset: int = 0, size: int = 1 << 20) -> bytes:
    return bytes(await fs.read(fh, offset, size))


async def read_all(fs: Filesystem, ino: int) -> bytes:
    fh = (await fs.open(ino, os.O_RDONLY)).fh
    try:
        return await read_handle(fs, fh)
    finally:
        await fs.release(fh)


async def names(fs: Filesystem, ino: int = ROOT_INODE) -> set[str]:
    fh = await fs.opendir(ino)
    try:
        return {entry.name for _, entry in fs.readdir(fh, 0)} - {".", ".."}
    finally:
        fs.releasedir(fh)


def fs_errno(excinfo: pytest.ExceptionInfo) -> int:
    return excinfo.value.errno


def staged_files(staging: Path) -> list[Path]:
    return sorted(staging.iterdir()) if staging.exists() else []


def denied() -> client_errors.ClientError:
    return client_errors.AccessDenied("denied by the test", code="AccessDenied", status=403)


# --- create, write, flush ----------------------------------------------------------------------

def test_created_file_appears_whole_only_at_flush(run):
    data = os.urandom(10_000)

    async def check(fs, client):
        fh, ino = await create(fs, "f")
        await write_chunks(fs, fh, data)
        assert "f" not in client.objects
        assert (await fs.getattr(ino)).size == len(data)
        await fs.flush(fh)
        assert client.snapshot() == {"f": data}
        await fs.release(fh)
        assert client.calls["PutObject"] == 1 and client.calls["CreateMultipartUpload"] == 0
        assert await read_all(fs, await lookup(fs, "f")) == data
    run(check)


def test_created_file_closed_without_writes_is_an_empty_object(run):
    async def check(fs, client):
        fh, _ = await create(fs, "empty")
        await fs.release(fh)  # even without a flush
        fh, _ = await create(fs, "flushed")
        await close(fs, fh)
        assert client.snapshot() == {"empty": b"", "flushed": b""}
    run(check)


def test_fsync_commits_and_later_writes_append(run):
    async def check(fs, client):
        fh, _ = await create(fs, "log")
        await fs.write(fh, 0, b"one\n")
        await fs.fsync(fh)
        assert client.snapshot() == {"log": b"one\n"}
        await fs.write(fh, 4, b"two\n")
        assert client.snapshot() == {"log": b"one\n"}
        await close(fs, fh)
        assert client.snapshot() == {"log": b"one\ntwo\n"}
        assert client.calls["PutObject"] == 2  # one PUT, then one append
        assert client.objects["log"].parts == 2
    run(check)


def test_large_file_goes_as_multipart_and_small_as_one_put(run, small_parts):
    big = os.urandom(3 * PART + PART // 2)

    async def check(fs, client):
        fh, _ = await create(fs, "big")
        await write_chunks(fs, fh, big)
        await close(fs, fh)
        assert client.objects["big"].data == big
        assert client.calls["CreateMultipartUpload"] == 1
        assert client.calls["UploadPart"] == 4
        assert client.calls["CompleteMultipartUpload"] == 1
        assert client.calls["PutObject"] == 0
        client.calls.clear()
        fh, _ = await create(fs, "small")
        await fs.write(fh, 0, b"x" * (PART - 1))
        await close(fs, fh)
        assert client.calls["PutObject"] == 1
        assert client.calls["CreateMultipartUpload"] == client.calls["UploadPart"] == 0
        assert client.uploads == {}
    run(check, part_size=PART)


def test_parts_are_uploaded_while_writing(run, small_parts):
    data = os.urandom(3 * PART + 100)

    async def check(fs, client):
        fh, _ = await create(fs, "f")
        await write_chunks(fs, fh, data)
        await trio.testing.wait_all_tasks_blocked()
        assert client.calls["UploadPart"] == 3  # the full parts, before any flush
        assert "f" not in client.objects  # but nothing visible yet
        await close(fs, fh)
        assert client.snapshot() == {"f": data}
        assert fs.write_budget.used == 0
    run(check, part_size=PART)


def hold_uploads(client: MemoryClient) -> trio.Event:
    """Make every UploadPart wait until the returned event is set."""
    gate = trio.Event()

    async def hold(operation: str, key: str) -> None:
        if operation == "UploadPart":
            await gate.wait()

    client.before_call = hold
    return gate


def test_memory_is_bounded_by_the_write_budget(run, small_parts):
    async def check(fs, client):
        gate = hold_uploads(client)
        fh, _ = await create(fs, "f")
        written = []

        async def writer():
            for n in range(6):
                await fs.write(fh, n * PART, bytes([n]) * PART)
                written.append(n)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            assert written == [0, 1]  # the third part waits for budget
            assert fs.write_budget.used == 2 * PART
            assert fs.write_budget.waiting == 1
            gate.set()
        await close(fs, fh)
        assert client.objects["f"].data == b"".join(bytes([n]) * PART for n in range(6))
        assert fs.write_budget.peak <= 2 * PART and fs.write_budget.used == 0
    run(check, part_size=PART, write_buffer=2 * PART)


# --- conditional commits and rescue ------------------------------------------------------------

def test_new_file_created_behind_the_mount_fails_and_is_rescued(run, staging):
    async def check(fs, client):
        fh, _ = await create(fs, "f")
        await fs.write(fh, 0, b"mine")
        client.put_object_sync("f", b"theirs")
        with pytest.raises(FsError) as excinfo:
            await fs.flush(fh)
        assert fs_errno(excinfo) == errno.EIO
        assert client.snapshot() == {"f": b"theirs"}
        assert any(path.read_bytes() == b"mine" for path in staged_files(staging))
        assert stat.S_IMODE(staging.stat().st_mode) == 0o700
        await fs.release(fh)
        assert client.snapshot() == {"f": b"theirs"}
        assert await read_all(fs, await lookup(fs, "f")) == b"theirs"
    run(check)


def test_new_multipart_file_created_behind_the_mount_fails(run, small_parts):
    data = os.urandom(2 * PART + 10)

    async def check(fs, client):
        fh, _ = await create(fs, "f")
        await write_chunks(fs, fh, data)
        client.put_object_sync("f", b"theirs")
        with pytest.raises(FsError) as excinfo:
            await fs.flush(fh)
        assert fs_errno(excinfo) == errno.EIO
        await fs.release(fh)
        assert client.snapshot() == {"f": b"theirs"}
        assert list(client.uploads.values()) == ["f"]  # kept for recovery, not aborted
    run(check, part_size=PART)


def test_truncating_overwrite_of_a_changed_object_fails(run):
    async def check(fs, client):
        fh, _ = await open_file(fs, "f", os.O_WRONLY | os.O_TRUNC)
        await fs.write(fh, 0, b"new")
        client.put_object_sync("f", b"changed behind")
        with pytest.raises(FsError) as excinfo:
            await fs.flush(fh)
        assert fs_errno(excinfo) == errno.EIO
        await fs.release(fh)
        assert client.snapshot() == {"f": b"changed behind"}
    run(check, keys={"f": b"old content"})


def test_truncating_overwrite_replaces_the_object(run):
    async def check(fs, client):
        fh, _ = await open_file(fs, "f", os.O_WRONLY | os.O_TRUNC)
        await fs.write(fh, 0, b"new")
        assert client.snapshot() == {"f": b"old content"}
        await close(fs, fh)
        assert client.snapshot() == {"f": b"new"}
        fh, _ = await open_file(fs, "f", os.O_WRONLY | os.O_TRUNC)
        await close(fs, fh)  # truncated and closed without a write
        assert client.snapshot() == {"f": b""}
    run(check, keys={"f": b"old content"})


def test_opening_for_writing_without_writing_sends_nothing(run):
    async def check(fs, client):
        for flags in (os.O_WRONLY, os.O_RDWR):
            fh, _ = await open_file(fs, "f", flags)
            client.calls.clear()
            await close(fs, fh)
            assert sum(client.calls.values()) == 0
        assert client.snapshot() == {"f": b"data"}
    run(check, keys={"f": b"data"})


def test_unmount_commits_files_still_open(run):
    async def check(fs, client):
        fh, _ = await create(fs, "f")
        await fs.write(fh, 0, b"unclosed")
        await fs.close()
        assert client.snapshot() == {"f": b"unclosed"}
    run(check)


def test_another_handle_reads_a_file_being_created(run, small_parts):
    async def check(fs, client):
        fh, ino = await create(fs, "f")
        await fs.write(fh, 0, b"abc")
        reader = (await fs.open(await lookup(fs, "f"), os.O_RDONLY)).fh
        assert await read_handle(fs, reader) == b"abc"
        await write_chunks(fs, fh, b"x" * (2 * PART), offset=3)
        with pytest.raises(FsError) as excinfo:
            await read_handle(fs, reader, 0, 10)  # already streamed out
        assert fs_errno(excinfo) == errno.EIO
        assert await read_handle(fs, reader, 2 * PART, 100) == b"xxx"  # still buffered
        await close(fs, fh)
        await fs.release(reader)
        assert await read_all(fs, ino) == b"abc" + b"x" * (2 * PART)
    run(check, part_size=PART)


# --- appends -----------------------------------------------------------------------------------

def test_append_on_a_directory_bucket_is_a_put_with_offset(run):
    async def check(fs, client):
        fh, ino = await open_file(fs, "f", os.O_WRONLY | os.O_APPEND)
        client.calls.clear()
        await fs.write(fh, 5, b" world")
        assert isinstance(fs.inodes.get(ino).writer, AppendUpload)
        reader = (await fs.open(ino, os.O_RDONLY)).fh
        assert await read_handle(fs, reader) == b"hello world"  # read-your-writes before the flush
        assert await read_handle(fs, reader, 3, 5) == b"lo wo"
        assert client.snapshot() == {"f": b"hello"}
        await fs.flush(fh)
        assert client.snapshot() == {"f": b"hello world"}
        assert client.objects["f"].parts == 2  # appended, not uploaded again
        await fs.write(fh, 11, b"!")
        await close(fs, fh)
        await fs.release(reader)
        assert client.snapshot() == {"f": b"hello world!"}
        assert client.calls["PutObject"] == 2
        assert client.calls["CreateMultipartUpload"] == 0
        assert client.objects["f"].parts == 3
    run(check, keys={"f": b"hello"})


def test_append_on_a_general_purpose_bucket_uploads_a_staged_copy(run, staging):
    async def check(fs, client):
        fh, ino = await open_file(fs, "f", os.O_WRONLY)
        client.calls.clear()
        await fs.write(fh, 5, b" world")
        assert isinstance(fs.inodes.get(ino).writer, StagedFile)
        await close(fs, fh)
        assert client.snapshot() == {"f": b"hello world"}
        assert client.calls["GetObject"] == 1 and client.calls["PutObject"] == 1
        assert client.objects["f"].parts == 1
        assert staged_files(staging) == []
    run(check, keys={"f": b"hello"}, directory=False)


def test_append_to_an_object_changed_behind_fails(run, staging):
    async def check(fs, client):
        fh, _ = await open_file(fs, "f", os.O_WRONLY)
        await fs.write(fh, 5, b" world")
        client.put_object_sync("f", b"other")
        with pytest.raises(FsError) as excinfo:
            await fs.flush(fh)
        assert fs_errno(excinfo) == errno.EIO
        await fs.release(fh)
        assert client.snapshot() == {"f": b"other"}
        assert any(path.read_bytes() == b" world" for path in staged_files(staging))
    run(check, keys={"f": b"hello"})


def test_append_beyond_the_append_limit_is_efbig_and_rescued(run, staging):
    async def check(fs, client):
        client.put_object_sync("f", b"full", parts=MAX_PARTS)
        fh, _ = await open_file(fs, "f", os.O_WRONLY)
        await fs.write(fh, 4, b" and more")
        with pytest.raises(FsError) as excinfo:
            await fs.flush(fh)
        assert fs_errno(excinfo) == errno.EFBIG
        await fs.release(fh)
        assert client.snapshot() == {"f": b"full"}
        assert any(path.read_bytes() == b" and more" for path in staged_files(staging))
    run(check)


# --- staged files ------------------------------------------------------------------------------

def test_write_into_the_middle_is_staged_and_cleaned_up(run, staging):
    async def check(fs, client):
        fh, ino = await open_file(fs, "f", os.O_WRONLY)
        await fs.write(fh, 3, b"abc")
        writer = fs.inodes.get(ino).writer
        assert isinstance(writer, StagedFile)
        assert Path(writer.path).parent == staging
        assert client.snapshot() == {"f": b"0123456789"}
        await fs.flush(fh)
        assert client.snapshot() == {"f": b"012abc6789"}
        await fs.write(fh, 0, b"Z")
        await fs.flush(fh)
        assert client.snapshot() == {"f": b"Z12abc6789"}
        assert os.path.exists(writer.path)  # still open: kept for further writes
        await fs.release(fh)
        assert not os.path.exists(writer.path)
        assert staged_files(staging) == []
    run(check, keys={"f": b"0123456789"})


def test_read_write_handle_reads_its_writes(run):
    async def check(fs, client):
        fh, _ = await open_file(fs, "f", os.O_RDWR)
        assert await read_handle(fs, fh) == b"0123456789"
        await fs.write(fh, 8, b"abcd")
        assert await read_handle(fs, fh) == b"01234567abcd"
        assert await read_handle(fs, fh, 10, 100) == b"cd"
        await close(fs, fh)
        assert client.snapshot() == {"f": b"01234567abcd"}
    run(check, keys={"f": b"0123456789"})


@pytest.mark.parametrize("size", [100, 3 * PART + 7])
def test_failed_staged_upload_keeps_the_staged_file(run, staging, small_parts, size):
    original = os.urandom(size)
    operation = "PutObject" if size <= PART else "UploadPart"

    async def check(fs, client):
        fh, ino = await open_file(fs, "f", os.O_WRONLY)
        await fs.write(fh, 1, b"XY")
        path = fs.inodes.get(ino).writer.path
        expected = original[:1] + b"XY" + original[3:]
        client.fail_next(operation, denied(), times=2)  # the flush, and the retry at release
        with pytest.raises(FsError) as excinfo:
            await fs.flush(fh)
        assert fs_errno(excinfo) == errno.EIO
        assert os.path.exists(path)
        await fs.release(fh)
        assert os.path.exists(path) and Path(path).read_bytes() == expected
        assert client.snapshot() == {"f": original}
        assert client.uploads == {}  # a failed multipart upload of a staged file is aborted
    run(check, keys={"f": original}, part_size=PART)


def test_staged_file_larger_than_a_part_goes_as_multipart(run, small_parts):
    original = os.urandom(3 * PART)

    async def check(fs, client):
        fh, _ = await open_file(fs, "f", os.O_RDWR)
        await fs.write(fh, PART, b"middle")
        client.calls.clear()
        await close(fs, fh)
        assert client.objects["f"].data == original[:PART] + b"middle" + original[PART + 6:]
        assert client.calls["UploadPart"] == 3 and client.calls["CompleteMultipartUpload"] == 1
        assert fs.write_budget.used == 0
    run(check, keys={"f": original}, part_size=PART)


# --- backward writes into a streamed file ------------------------------------------------------

def test_backward_write_before_anything_was_sent_is_transparent(run):
    async def check(fs, client):
        fh, _ = await create(fs, "f")
        await fs.write(fh, 0, b"aaaaaaaa")
        await fs.write(fh, 2, b"BB")
        await fs.write(fh, 12, b"end")  # a hole after the end reads as zeros
        await fs.write(fh, 0, b"S")
        await close(fs, fh)
        assert client.snapshot() == {"f": b"SaBBaaaa\0\0\0\0end"}
    run(check)


def test_backward_write_before_anything_was_sent_in_multipart_sized_file(run, small_parts):
    async def check(fs, client):
        fh, _ = await create(fs, "f")
        await fs.write(fh, 0, b"a" * (PART - 1))
        await fs.write(fh, 10, b"B")  # still buffered: nothing went out
        await fs.write(fh, PART - 1, b"c" * (PART + 1))
        await close(fs, fh)
        assert client.objects["f"].data == b"a" * 10 + b"B" + b"a" * (PART - 12) + b"c" * (PART + 1)
    run(check, part_size=PART)


def test_backward_write_into_uploaded_parts_is_einval_and_never_creates_the_object(run, small_parts):
    async def check(fs, client):
        fh, ino = await create(fs, "f")
        await write_chunks(fs, fh, b"x" * (2 * PART + 10))
        assert fs.inodes.get(ino).writer.streamed
        with pytest.raises(FsError) as excinfo:
            await fs.write(fh, 5, b"back")
        assert fs_errno(excinfo) == errno.EINVAL
        assert "f" not in client.objects
        with pytest.raises(FsError):
            await fs.flush(fh)
        await fs.release(fh)
        assert "f" not in client.objects
    run(check, part_size=PART)


def test_failed_part_upload_never_creates_the_object(run, small_parts):
    async def check(fs, client):
        fh, _ = await create(fs, "f")
        client.fail_next("UploadPart", denied())
        await fs.write(fh, 0, b"x" * PART)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(FsError) as excinfo:
            await fs.write(fh, PART, b"y" * 10)
        assert fs_errno(excinfo) == errno.EIO
        with pytest.raises(FsError) as excinfo:
            await fs.flush(fh)
        assert fs_errno(excinfo) == errno.EIO
        await fs.release(fh)  # a second commit attempt must not create a partial object
        assert client.snapshot() == {}
    run(check, part_size=PART)


def test_streamed_file_is_limited_to_max_parts(run, small_parts):
    async def check(fs, client):
        fh, ino = await create(fs, "f")
        with pytest.raises(FsError) as excinfo:
            await fs.write(fh, PART * MAX_PARTS, b"x")
        assert fs_errno(excinfo) == errno.EFBIG
        with pytest.raises(FsError) as excinfo:
            await fs.write(fh, PART * MAX_PARTS - 1, b"xy")
        assert fs_errno(excinfo) == errno.EFBIG
        assert fs.inodes.get(ino).size == 0
        assert sum(client.calls.values()) == 0
        await close(fs, fh)
        assert client.snapshot() == {"f": b""}
    run(check, part_size=PART)


def test_upload_part_size():
    mib = 1 << 20
    assert upload_part_size(8 * mib) == 8 * mib
    assert upload_part_size(1) == upload.MIN_PART  # never below S3's minimum
    assert upload_part_size(8 * mib, total=8 * mib * MAX_PARTS) == 8 * mib
    grown = upload_part_size(8 * mib, total=8 * mib * MAX_PARTS + 1)
    assert grown == 9 * mib and grown * MAX_PARTS >= 8 * mib * MAX_PARTS + 1


# --- truncate ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size, expected", [(0, b""), (4, b"hell"), (8, b"hello\0\0\0")])
def test_truncate_without_a_handle_commits_at_once(run, staging, size, expected):
    async def check(fs, client):
        ino = await lookup(fs, "f")
        attrs = await fs.setattr(ino, size=size)
        assert attrs.size == size
        assert client.snapshot() == {"f": expected}
        assert (await fs.getattr(ino)).size == size
        assert await read_all(fs, ino) == expected
        assert staged_files(staging) == []
    run(check, keys={"f": b"hello"})


def test_failed_truncate_without_a_handle_reports_it(run, staging):
    async def check(fs, client):
        ino = await lookup(fs, "f")
        client.fail_next("PutObject", denied(), times=5)
        with pytest.raises(FsError) as excinfo:
            await fs.setattr(ino, size=2)
        assert fs_errno(excinfo) == errno.EIO
        assert client.snapshot() == {"f": b"hello"}
        client.clear_faults()
        assert (await fs.getattr(ino)).size == 5
        assert any(path.read_bytes() == b"he" for path in staged_files(staging))  # rescued
    run(check, keys={"f": b"hello"})


@pytest.mark.parametrize("size, expected", [(0, b""), (4, b"hell"), (8, b"hello\0\0\0")])
def test_truncate_with_an_open_handle_waits_for_the_close(run, size, expected):
    async def check(fs, client):
        fh, ino = await open_file(fs, "f", os.O_WRONLY)
        await fs.setattr(ino, size=size)
        assert client.snapshot() == {"f": b"hello"}
        assert (await fs.getattr(ino)).size == size
        await close(fs, fh)
        assert client.snapshot() == {"f": expected}
    run(check, keys={"f": b"hello"})


def test_truncate_of_a_file_being_written(run):
    async def check(fs, client):
        fh, ino = await create(fs, "f")
        await fs.write(fh, 0, b"abcdef")
        await fs.setattr(ino, size=3)
        await fs.write(fh, 3, b"XY")
        await fs.setattr(ino, size=8)
        await close(fs, fh)
        assert client.snapshot() == {"f": b"abcXY\0\0\0"}
    run(check)


def test_truncate_to_zero_of_a_streamed_file_starts_over(run, small_parts):
    async def check(fs, client):
        fh, ino = await create(fs, "f")
        await write_chunks(fs, fh, b"x" * (2 * PART + 5))
        await fs.setattr(ino, size=0)
        await fs.write(fh, 0, b"fresh")
        await close(fs, fh)
        assert client.snapshot() == {"f": b"fresh"}
        assert client.uploads == {}
    run(check, part_size=PART)


# --- unlink ------------------------------------------------------------------------------------

def test_unlink_of_a_file_being_written_uploads_nothing(run, small_parts, staging):
    async def check(fs, client):
        fh, ino = await create(fs, "f")
        await write_chunks(fs, fh, b"z" * (2 * PART + 3))
        await fs.unlink(ROOT_INODE, "f")
        assert (await fs.lookup(ROOT_INODE, "f")).ino == 0
        await fs.write(fh, 2 * PART + 3, b"more")  # writes on the open handle go nowhere
        await fs.write(fh, 0, b"back")
        await close(fs, fh)
        assert client.snapshot() == {}
        assert client.calls["PutObject"] == client.calls["CompleteMultipartUpload"] == 0
        assert client.uploads == {}
        assert staged_files(staging) == []
        assert "f" not in await names(fs)
    run(check, part_size=PART)


def test_unlink_removes_the_object(run):
    async def check(fs, client):
        await fs.unlink(ROOT_INODE, "f")
        assert client.snapshot() == {"d/x": b"2"}
        assert (await fs.lookup(ROOT_INODE, "f")).ino == 0
        with pytest.raises(FsError) as excinfo:
            await fs.unlink(ROOT_INODE, "f")
        assert fs_errno(excinfo) == errno.ENOENT
        with pytest.raises(FsError) as excinfo:
            await fs.unlink(ROOT_INODE, "d")
        assert fs_errno(excinfo) == errno.EISDIR
    run(check, keys={"f": b"1", "d/x": b"2"})


@pytest.mark.parametrize("flush", [True, False])
def test_unlinked_name_can_be_created_again_while_the_old_handle_writes(run, flush):
    async def check(fs, client):
        old, _ = await create(fs, "f")
        await fs.write(old, 0, b"old")
        await fs.unlink(ROOT_INODE, "f")
        new, _ = await create(fs, "f")
        await fs.write(new, 0, b"new")
        await fs.write(old, 3, b"more")
        if flush:
            await fs.flush(old)
        await fs.release(old)  # the unlinked file's close must not touch the new name
        assert client.snapshot() == {}
        await fs.write(new, 3, b"er")
        await close(fs, new)
        assert client.snapshot() == {"f": b"newer"}
    run(check)


# --- directories -------------------------------------------------------------------------------

def test_mkdir_is_local_until_a_file_is_written_in_it(run):
    async def check(fs, client):
        attrs = await fs.mkdir(ROOT_INODE, "d")
        assert attrs.is_dir and fs.inodes.get(attrs.ino).lookups == 1
        assert "d" in await names(fs)
        assert await lookup(fs, "d") == attrs.ino
        assert await names(fs, attrs.ino) == set()
        assert client.snapshot() == {}
        sub = await fs.mkdir(attrs.ino, "e")
        fh, _ = await create(fs, "f", parent=sub.ino)
        await fs.write(fh, 0, b"inside")
        assert "f" in await names(fs, sub.ino)
        await close(fs, fh)
        assert client.snapshot() == {"d/e/f": b"inside"}
        assert not fs.inodes.get(attrs.ino).local and not fs.inodes.get(sub.ino).local
        assert await names(fs) == {"d"} and await names(fs, sub.ino) == {"f"}
    run(check)


def test_directory_made_real_sees_later_changes(run):
    clock = FakeClock()

    async def check(fs, client):
        d = (await fs.mkdir(ROOT_INODE, "d")).ino
        fh, _ = await create(fs, "f", parent=d)
        await close(fs, fh)
        client.put_object_sync("d/g", b"from elsewhere")
        clock.now += 10
        assert await lookup(fs, "g", parent=d) != 0
        assert await names(fs, d) == {"f", "g"}
    run(check, clock=clock)


def test_rmdir(run):
    async def check(fs, client):
        empty = (await fs.mkdir(ROOT_INODE, "empty")).ino
        await fs.rmdir(ROOT_INODE, "empty")
        assert (await fs.lookup(ROOT_INODE, "empty")).ino == 0
        assert "empty" not in await names(fs)
        assert fs.inodes.get(empty) is not None  # the kernel still holds its lookup
        fs.forget([(empty, 1)])
        assert fs.inodes.get(empty) is None

        local = (await fs.mkdir(ROOT_INODE, "local")).ino
        await fs.mkdir(local, "sub")
        with pytest.raises(FsError) as excinfo:
            await fs.rmdir(ROOT_INODE, "local")
        assert fs_errno(excinfo) == errno.ENOTEMPTY
        fh, _ = await create(fs, "f", parent=local)
        await fs.rmdir(local, "sub")
        with pytest.raises(FsError) as excinfo:
            await fs.rmdir(ROOT_INODE, "local")  # a file being created in it
        assert fs_errno(excinfo) == errno.ENOTEMPTY
        await close(fs, fh)
        with pytest.raises(FsError) as excinfo:
            await fs.rmdir(ROOT_INODE, "local")  # now in the bucket
        assert fs_errno(excinfo) == errno.ENOTEMPTY

        with pytest.raises(FsError) as excinfo:
            await fs.rmdir(ROOT_INODE, "d")
        assert fs_errno(excinfo) == errno.ENOTEMPTY
        with pytest.raises(FsError) as excinfo:
            await fs.rmdir(ROOT_INODE, "file")
        assert fs_errno(excinfo) == errno.ENOTDIR
        with pytest.raises(FsError) as excinfo:
            await fs.rmdir(ROOT_INODE, "missing")
        assert fs_errno(excinfo) == errno.ENOENT
        assert client.snapshot() == {"d/x": b"1", "file": b"2", "local/f": b""}
    run(check, keys={"d/x": b"1", "file": b"2"})


def test_rmdir_of_a_directory_marker_on_a_general_purpose_bucket(run):
    async def check(fs, client):
        assert (await fs.lookup(ROOT_INODE, "d")).is_dir
        await fs.rmdir(ROOT_INODE, "d")
        assert client.snapshot() == {"f": b""}
    run(check, keys={"d/": b"", "f": b""}, directory=False)


def test_mkdir_of_an_existing_name_is_eexist(run):
    async def check(fs, client):
        for name in ("file", "d"):
            with pytest.raises(FsError) as excinfo:
                await fs.mkdir(ROOT_INODE, name)
            assert fs_errno(excinfo) == errno.EEXIST
        await fs.mkdir(ROOT_INODE, "new")
        with pytest.raises(FsError) as excinfo:
            await fs.mkdir(ROOT_INODE, "new")
        assert fs_errno(excinfo) == errno.EEXIST
        fh, _ = await create(fs, "being-written")
        with pytest.raises(FsError) as excinfo:
            await fs.mkdir(ROOT_INODE, "being-written")
        assert fs_errno(excinfo) == errno.EEXIST
        await close(fs, fh)
    run(check, keys={"file": b"1", "d/x": b"2"})


# --- rename ------------------------------------------------------------------------------------

def test_rename_file_is_one_rename_object(run):
    async def check(fs, client):
        ino = await lookup(fs, "a")
        client.calls.clear()
        await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", 0)
        assert client.calls["RenameObject"] == 1
        assert client.calls["PutObject"] == client.calls["CopyObject"] == client.calls["GetObject"] == 0
        assert client.snapshot() == {"b": b"A"}
        assert await lookup(fs, "b") == ino
        assert (await fs.lookup(ROOT_INODE, "a")).ino == 0
        assert await names(fs) == {"b"}
        assert await fs.getxattr(ino, "user.s3xfs.key") == b"b"
    run(check, keys={"a": b"A"})


def test_rename_replaces_an_existing_destination(run):
    async def check(fs, client):
        await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", 0)
        assert client.snapshot() == {"b": b"A"}
        assert await read_all(fs, await lookup(fs, "b")) == b"A"
    run(check, keys={"a": b"A", "b": b"B"})


def test_a_handle_of_a_replaced_file_writes_nowhere_even_after_the_new_one_is_unlinked(run, staging):
    """Found by the write state machine: a handle opened on "b" before "a" was renamed over it,
    then written, then closed after "b" (now the old "a") was unlinked. Its commit used to take the
    free name for a lost one and upload to "b" (failing: the base it was conditioned on is gone,
    and the content went to the staging directory). The replaced file's writes go nowhere."""
    async def check(fs, client):
        fh, _ = await open_file(fs, "b", os.O_WRONLY)
        await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", 0)
        await fs.write(fh, 0, b"late")
        await fs.unlink(ROOT_INODE, "b")
        await close(fs, fh)
        assert client.snapshot() == {}
        assert not staging.exists() or os.listdir(staging) == []
    run(check, keys={"a": b"A", "b": b""})


def test_rename_noreplace_and_exchange(run):
    async def check(fs, client):
        with pytest.raises(FsError) as excinfo:
            await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", RENAME_NOREPLACE)
        assert fs_errno(excinfo) == errno.EEXIST
        with pytest.raises(FsError) as excinfo:
            await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", RENAME_EXCHANGE)
        assert fs_errno(excinfo) == errno.EINVAL
        assert client.snapshot() == {"a": b"A", "b": b"B"}
        await fs.rename(ROOT_INODE, "a", ROOT_INODE, "c", RENAME_NOREPLACE)
        assert client.snapshot() == {"c": b"A", "b": b"B"}
        with pytest.raises(FsError) as excinfo:
            await fs.rename(ROOT_INODE, "missing", ROOT_INODE, "x", 0)
        assert fs_errno(excinfo) == errno.ENOENT
    run(check, keys={"a": b"A", "b": b"B"})


def test_rename_noreplace_loses_a_race_with_an_object_created_behind(run):
    async def check(fs, client):
        assert (await fs.lookup(ROOT_INODE, "b")).ino == 0  # cached as absent
        client.put_object_sync("b", b"theirs")
        with pytest.raises(FsError) as excinfo:
            await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", RENAME_NOREPLACE)
        assert fs_errno(excinfo) == errno.EEXIST
        assert client.snapshot() == {"a": b"A", "b": b"theirs"}
    run(check, keys={"a": b"A"}, negative_ttl=60)


def test_rename_of_a_file_being_written_commits_it_first(run):
    async def check(fs, client):
        fh, ino = await create(fs, "tmp")
        await fs.write(fh, 0, b"first")
        await fs.rename(ROOT_INODE, "tmp", ROOT_INODE, "final", 0)
        assert client.snapshot() == {"final": b"first"}
        await fs.write(fh, 5, b" second")  # still the same open file, now named final
        await close(fs, fh)
        assert client.snapshot() == {"final": b"first second"}
        assert await fs.getxattr(ino, "user.s3xfs.key") == b"final"
    run(check)


def test_rename_of_a_staged_file_being_written(run):
    async def check(fs, client):
        fh, _ = await open_file(fs, "a", os.O_RDWR)
        await fs.write(fh, 1, b"X")
        await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", 0)
        assert client.snapshot() == {"b": b"0X23"}
        await fs.write(fh, 0, b"Y")
        assert await read_handle(fs, fh) == b"YX23"
        await close(fs, fh)
        assert client.snapshot() == {"b": b"YX23"}
    run(check, keys={"a": b"0123"})


def test_rename_of_a_file_open_for_reading_keeps_it_readable(run):
    data = os.urandom(5000)

    async def check(fs, client):
        fh, _ = await open_file(fs, "a", os.O_RDONLY)
        await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", 0)
        assert await read_handle(fs, fh) == data
        await fs.release(fh)
    run(check, keys={"a": data})


def test_rename_into_a_local_directory_makes_it_real(run):
    async def check(fs, client):
        d = (await fs.mkdir(ROOT_INODE, "d")).ino
        await fs.rename(ROOT_INODE, "a", d, "a", 0)
        assert client.snapshot() == {"d/a": b"A"}
        assert not fs.inodes.get(d).local
        with pytest.raises(FsError) as excinfo:
            await fs.rmdir(ROOT_INODE, "d")
        assert fs_errno(excinfo) == errno.ENOTEMPTY
    run(check, keys={"a": b"A"})


def test_rename_directories(run):
    async def check(fs, client):
        with pytest.raises(FsError) as excinfo:
            await fs.rename(ROOT_INODE, "full", ROOT_INODE, "other", 0)
        assert fs_errno(excinfo) == errno.EXDEV
        empty = (await fs.mkdir(ROOT_INODE, "empty")).ino
        await fs.rename(ROOT_INODE, "empty", ROOT_INODE, "moved", 0)
        assert await lookup(fs, "moved") == empty
        assert (await fs.lookup(ROOT_INODE, "empty")).ino == 0
        assert "moved" in await names(fs) and "empty" not in await names(fs)
        fh, _ = await create(fs, "f", parent=empty)
        await close(fs, fh)
        assert client.snapshot() == {"full/x": b"1", "file": b"2", "moved/f": b""}
        with pytest.raises(FsError) as excinfo:
            await fs.rename(ROOT_INODE, "file", ROOT_INODE, "moved", 0)
        assert fs_errno(excinfo) == errno.EISDIR
    run(check, keys={"full/x": b"1", "file": b"2"})


def test_rename_on_a_general_purpose_bucket_is_exdev(run):
    async def check(fs, client):
        with pytest.raises(FsError) as excinfo:
            await fs.rename(ROOT_INODE, "a", ROOT_INODE, "b", 0)
        assert fs_errno(excinfo) == errno.EXDEV
        assert client.snapshot() == {"a": b"A"}
    run(check, keys={"a": b"A"}, directory=False)


# --- attributes, read-only mounts, lookup counts -----------------------------------------------

def test_chmod_chown_utimens_are_kept_in_memory(run):
    async def check(fs, client):
        ino = await lookup(fs, "f")
        d = await lookup(fs, "d")
        client.calls.clear()
        attrs = await fs.setattr(ino, mode=stat.S_IFREG | 0o600, uid=1234, gid=5678, mtime=1_000_000.5)
        assert (attrs.mode, attrs.uid, attrs.gid, attrs.mtime) == (stat.S_IFREG | 0o600, 1234, 5678, 1_000_000.5)
        attrs = await fs.getattr(ino)
        assert (attrs.mode, attrs.uid, attrs.gid, attrs.mtime) == (stat.S_IFREG | 0o600, 1234, 5678, 1_000_000.5)
        attrs = await fs.setattr(d, mode=stat.S_IFDIR | 0o700)
        assert attrs.mode == stat.S_IFDIR | 0o700
        assert sum(client.calls.values()) == 0
        assert client.snapshot() == {"f": b"1", "d/x": b"2"}
    run(check, keys={"f": b"1", "d/x": b"2"}, metadata_ttl=60)


def test_read_only_mount_refuses_every_change(run):
    async def check(fs, client):
        ino = await lookup(fs, "f")
        d = await lookup(fs, "d")
        client.calls.clear()
        attempts = [
            lambda: fs.create(ROOT_INODE, "new", os.O_WRONLY | os.O_CREAT),
            lambda: fs.open(ino, os.O_WRONLY),
            lambda: fs.open(ino, os.O_RDWR),
            lambda: fs.open(ino, os.O_RDONLY | os.O_TRUNC),
            lambda: fs.setattr(ino, size=0),
            lambda: fs.setattr(ino, mode=0o600),
            lambda: fs.setattr(ino, uid=1),
            lambda: fs.setattr(ino, mtime=1.0),
            lambda: fs.setattr(d, mode=0o700),
            lambda: fs.unlink(ROOT_INODE, "f"),
            lambda: fs.mkdir(ROOT_INODE, "new"),
            lambda: fs.rmdir(ROOT_INODE, "d"),
            lambda: fs.rename(ROOT_INODE, "f", ROOT_INODE, "g", 0),
        ]
        for attempt in attempts:
            with pytest.raises(FsError) as excinfo:
                await attempt()
            assert fs_errno(excinfo) == errno.EROFS
        for refusal in (fs.refuse_write, fs.refuse_xattr_change):
            with pytest.raises(FsError) as excinfo:
                refusal()
            assert fs_errno(excinfo) == errno.EROFS
        reader = (await fs.open(ino, os.O_RDONLY)).fh
        with pytest.raises(FsError) as excinfo:
            await fs.write(reader, 0, b"x")
        assert fs_errno(excinfo) == errno.EBADF
        await close(fs, reader)
        writes = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "DeleteObject",
                  "DeleteObjects", "RenameObject", "CopyObject"}
        assert not any(client.calls[op] for op in writes)
        assert client.snapshot() == {"f": b"1", "d/x": b"2"}
    run(check, keys={"f": b"1", "d/x": b"2"}, read_only=True)


def test_create_counts_one_lookup(run):
    async def check(fs, client):
        fh, ino = await create(fs, "f")
        inode = fs.inodes.get(ino)
        assert inode.lookups == 1
        await fs.lookup(ROOT_INODE, "f")
        assert inode.lookups == 2
        fs.forget([(ino, 2)])
        assert fs.inodes.get(ino) is inode  # open
        await close(fs, fh)
        assert fs.inodes.get(ino) is inode  # still named: the cache of later lookups
        assert await lookup(fs, "f") == ino and inode.lookups == 1
    run(check)


def test_forget_keeps_an_inode_whose_upload_is_in_flight(run, small_parts):
    data = os.urandom(3 * PART)

    async def check(fs, client):
        gate = hold_uploads(client)
        fh, ino = await create(fs, "f")
        await write_chunks(fs, fh, data)
        inode = fs.inodes.get(ino)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(close, fs, fh)
            await trio.testing.wait_all_tasks_blocked()
            assert inode.writer is not None  # the close waits for its parts
            fs.forget([(ino, 1)])
            assert fs.inodes.get(ino) is inode
            assert await lookup(fs, "f") == ino
            fs.forget([(ino, 1)])
            gate.set()
        assert client.snapshot() == {"f": data}
        assert fs.inodes.get(ino) is inode
    run(check, part_size=PART)


def test_forget_keeps_an_unlinked_inode_while_it_is_open(run):
    async def check(fs, client):
        fh, ino = await create(fs, "f")
        await fs.write(fh, 0, b"x")
        fs.forget([(ino, 1)])
        await fs.unlink(ROOT_INODE, "f")
        assert fs.inodes.get(ino) is not None
        await close(fs, fh)
        assert fs.inodes.get(ino) is None
        assert client.snapshot() == {}
    run(check)


# --- random sequences against a reference model ------------------------------------------------

class TrioThread:
    """A trio loop in a thread, so the synchronous rules of a state machine can drive the filesystem."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, afn, *args):
        return trio.from_thread.run(afn, *args, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self.thread.join()


class OpenFile:
    def __init__(self, fh: int, ino: int, content: bytes, readable: bool) -> None:
        self.fh, self.ino, self.content, self.readable = fh, ino, content, readable


NAMES = ("a", "b", "c")
DATA = st.binary(min_size=1, max_size=40)


class WriteMachine(RuleBasedStateMachine):
    """The bucket must equal ``committed`` after every flush and close; an open handle that reads
    must read its file's pending content. At most one handle per name; handles whose name went away
    (unlink, replaced by a rename) are orphans: their writes and closes must change nothing."""

    options: dict[str, Any] = {"metadata_ttl": 0, "negative_ttl": 0}

    def __init__(self) -> None:
        super().__init__()
        self.staging = tempfile.mkdtemp(prefix="s3xfs-test-")
        self.client = MemoryClient(seed=7)
        self.fs = Filesystem(self.client, FsOptions(staging_dir=self.staging, **self.options))
        self.loop = TrioThread()
        self.fs.attach(self.loop.nursery)
        self.committed: dict[str, bytes] = {}
        self.open: dict[str, OpenFile] = {}
        self.orphans: list[OpenFile] = []

    def call(self, afn, *args):
        return self.loop.call(afn, *args)

    def check_bucket(self) -> None:
        assert self.client.snapshot() == self.committed

    def existing(self) -> list[str]:
        return sorted(set(self.committed) | set(self.open))

    def closed(self) -> list[str]:
        return sorted(set(self.committed) - set(self.open))

    @precondition(lambda self: len(self.existing()) < len(NAMES))
    @rule(data=st.data(), rdwr=st.booleans())
    def create(self, data, rdwr):
        name = data.draw(st.sampled_from([n for n in NAMES if n not in self.existing()]), label="name")
        fh, ino = self.call(create, self.fs, name, ROOT_INODE, os.O_RDWR if rdwr else os.O_WRONLY)
        self.open[name] = OpenFile(fh, ino, b"", rdwr)

    @precondition(lambda self: self.closed())
    @rule(data=st.data(), rdwr=st.booleans(), trunc=st.booleans())
    def open_existing(self, data, rdwr, trunc):
        name = data.draw(st.sampled_from(self.closed()), label="name")
        flags = (os.O_RDWR if rdwr else os.O_WRONLY) | (os.O_TRUNC if trunc else 0)
        fh, ino = self.call(open_file, self.fs, name, flags)
        self.open[name] = OpenFile(fh, ino, b"" if trunc else self.committed[name], rdwr)

    def pick_open(self, data) -> tuple[str, OpenFile]:
        name = data.draw(st.sampled_from(sorted(self.open)), label="name")
        return name, self.open[name]

    @precondition(lambda self: self.open)
    @rule(data=st.data(), offset=st.integers(0, 100), chunk=DATA)
    def write(self, data, offset, chunk):
        _, handle = self.pick_open(data)
        offset = min(offset, len(handle.content) + 5)
        assert self.call(self.fs.write, handle.fh, offset, chunk) == len(chunk)
        handle.content = _overwrite(handle.content, offset, chunk)

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def append(self, data):
        _, handle = self.pick_open(data)
        chunk = data.draw(DATA, label="chunk")
        assert self.call(self.fs.write, handle.fh, len(handle.content), chunk) == len(chunk)
        handle.content += chunk

    @precondition(lambda self: self.existing())
    @rule(data=st.data(), size=st.integers(0, 60))
    def truncate(self, data, size):
        name = data.draw(st.sampled_from(self.existing()), label="name")
        handle = self.open.get(name)
        ino = handle.ino if handle else self.call(lookup, self.fs, name)
        assert self.call(partial(self.fs.setattr, ino, size=size)).size == size
        if handle is not None:
            handle.content = _resize(handle.content, size)
        else:
            self.committed[name] = _resize(self.committed[name], size)
        self.check_bucket()

    @precondition(lambda self: any(handle.readable for handle in self.open.values()))
    @rule(data=st.data(), offset=st.integers(0, 50))
    def read(self, data, offset):
        name = data.draw(st.sampled_from(sorted(n for n, h in self.open.items() if h.readable)), label="name")
        content = self.open[name].content
        assert self.call(read_handle, self.fs, self.open[name].fh, offset, 64) == content[offset:offset + 64]

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def flush(self, data):
        name, handle = self.pick_open(data)
        self.call(self.fs.flush, handle.fh)
        self.committed[name] = handle.content
        self.check_bucket()

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def close(self, data):
        name, handle = self.pick_open(data)
        self.close_name(name)

    def close_name(self, name: str) -> None:
        handle = self.open.pop(name)
        self.call(close, self.fs, handle.fh)
        self.committed[name] = handle.content
        self.check_bucket()

    @precondition(lambda self: self.existing())
    @rule(data=st.data())
    def unlink(self, data):
        name = data.draw(st.sampled_from(self.existing()), label="name")
        self.call(self.fs.unlink, ROOT_INODE, name)
        self.committed.pop(name, None)
        if name in self.open:
            self.orphans.append(self.open.pop(name))
        self.check_bucket()

    @precondition(lambda self: self.existing())
    @rule(data=st.data())
    def rename(self, data):
        source = data.draw(st.sampled_from(self.existing()), label="source")
        dest = data.draw(st.sampled_from([n for n in NAMES if n != source]), label="dest")
        self.call(self.fs.rename, ROOT_INODE, source, ROOT_INODE, dest, 0)
        handle = self.open.pop(source, None)
        self.committed[dest] = handle.content if handle else self.committed[source]
        self.committed.pop(source, None)
        if dest in self.open:
            self.orphans.append(self.open.pop(dest))
        if handle is not None:
            self.open[dest] = handle
        self.check_bucket()

    @precondition(lambda self: self.orphans)
    @rule(index=st.integers(0, 5), offset=st.integers(0, 50), chunk=DATA)
    def write_orphan(self, index, offset, chunk):
        handle = self.orphans[index % len(self.orphans)]
        try:
            self.call(self.fs.write, handle.fh, offset, chunk)
        except (FsError, client_errors.ClientError):
            pass  # a replaced file may refuse writes; what matters is that nothing reaches the bucket

    @precondition(lambda self: self.orphans)
    @rule(index=st.integers(0, 5))
    def close_orphan(self, index):
        self.close_orphan_at(index)

    def close_orphan_at(self, index: int) -> None:
        handle = self.orphans.pop(index % len(self.orphans))
        self.call(close, self.fs, handle.fh)
        self.check_bucket()

    @rule()
    def listing(self):
        assert self.call(names, self.fs, ROOT_INODE) == set(self.existing())

    @invariant()
    def nothing_leaks(self):
        assert self.fs.write_budget.used == 0

    def teardown(self) -> None:
        try:
            for name in list(self.open):
                self.close_name(name)
            while self.orphans:
                self.close_orphan_at(0)
            self.check_bucket()
            assert self.client.uploads == {}
            assert os.listdir(self.staging) == []
        finally:
            self.loop.close()
            for leftover in os.listdir(self.staging):
                os.unlink(os.path.join(self.staging, leftover))
            os.rmdir(self.staging)


def _overwrite(content: bytes, offset: int, data: bytes) -> bytes:
    if offset > len(content):
        content += bytes(offset - len(content))
    return content[:offset] + data + content[offset + len(data):]


def _resize(content: bytes, size: int) -> bytes:
    return content[:size] + bytes(max(0, size - len(content)))


TestRandomWriteSequences = WriteMachine.TestCase
TestRandomWriteSequences.settings = settings(max_examples=50, stateful_step_count=40, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])


def test_model_helpers():
    assert _overwrite(b"abc", 5, b"x") == b"abc\0\0x"
    assert _overwrite(b"abcdef", 1, b"XY") == b"aXYdef"
    assert _resize(b"abc", 1) == b"a" and _resize(b"a", 3) == b"a\0\0"


class CappedWriteMachine(WriteMachine):
    """The same sequences with metadata kept for a minute, a cap of one idle inode, and the kernel
    forgetting every inode no handle keeps open: writes, renames and unlinks meet evicted names
    and listings that no longer prove absence."""

    options = {"metadata_ttl": 60, "negative_ttl": 0, "max_cached_entries": 1}

    def kernel_forgets(self) -> None:
        held = [(ino, inode.lookups) for ino in list(self.fs.inodes._inodes)
                if ino != ROOT_INODE and (inode := self.fs.inodes.get(ino)) is not None
                and inode.lookups and not inode.open_handles]
        self.fs.forget(held)

    def close_name(self, name: str) -> None:  # the kernel forgets as soon as nothing is open
        super().close_name(name)
        self.kernel_forgets()

    @rule()
    def listing(self):
        super().listing()
        self.kernel_forgets()


TestCappedWriteSequences = CappedWriteMachine.TestCase
TestCappedWriteSequences.settings = settings(max_examples=50, stateful_step_count=40, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
