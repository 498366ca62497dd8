"""The cache's block writer process (core/cache/block_writer.py): blocks handed to it are stored,
flushed and counted; it stores its whole input before it exits; the daemon takes over if it dies;
its failures are reported once per kind and counted."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from s3xfs.core.cache import BlockCache, CacheStore, Namespace
from s3xfs.core.cache import block_writer as writer_module
from s3xfs.core.cache import store as store_module

NS = Namespace("http://127.0.0.1:1", "data--usw2-az1--x-s3", "")
BLOCK = 256 << 10


def blocks_of(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(BLOCK) for _ in range(count)]


@pytest.fixture
def store(tmp_path: Path):
    opened = CacheStore(tmp_path / "cache", NS, size_limit=1 << 30, block_writer=True)
    try:
        yield opened
    finally:
        opened.close()  # ends the child's input and waits for it: no process outlives the test


def save_all(cache: BlockCache, bodies: list[bytes], prefix: str = "données/é") -> None:
    for number, body in enumerate(bodies):
        cache.save(f"{prefix}{number}", "etag", len(body), 0, body)


def load_all(cache: BlockCache, bodies: list[bytes], prefix: str = "données/é") -> list[bytes | None]:
    loaded = []
    for number, body in enumerate(bodies):
        (piece,) = cache.load(f"{prefix}{number}", "etag", len(body), range(1))
        loaded.append(None if piece is None else bytes(piece))
    return loaded


def child_pid(store: CacheStore) -> int:
    process = store.block_writer._process  # noqa: SLF001 - the test needs the child to signal it
    assert process is not None
    return process.pid


def test_blocks_go_to_the_child_which_stores_flushes_and_counts_them(store):
    cache = BlockCache(store, BLOCK)
    bodies = blocks_of(6)
    assert store.block_writer.state() == {"pid": None, "in_daemon": False, "sent": 0, "stored": 0}  # not started
    save_all(cache, bodies)
    assert store.block_writer.running and child_pid(store) != os.getpid()
    assert store.block_writer.state()["pid"] == child_pid(store)
    assert store.block_writer.flush(30)
    assert load_all(cache, bodies) == bodies
    assert cache.counters()["blocks_stored"] == 6 and cache.stats["blocks_stored"] == 0  # the child stored them
    assert store.errors == 0


def test_the_child_stores_its_whole_input_before_it_exits(store, tmp_path):
    cache = BlockCache(store, BLOCK)
    bodies = blocks_of(24, seed=2)
    save_all(cache, bodies)  # no flush: closing is all the child is told
    process = store.block_writer._process  # noqa: SLF001
    store.close()
    assert process.returncode == 0
    assert store.block_writer.stored == 24 and store.errors == 0  # its last totals, nothing counted lost
    reopened = CacheStore(tmp_path / "cache", NS, size_limit=1 << 30)
    try:
        assert load_all(BlockCache(reopened, BLOCK), bodies) == bodies
    finally:
        reopened.close()


def test_the_child_ignores_the_signals_a_group_gets_and_keeps_storing(store):
    """A Ctrl-C or `systemctl stop` reaching the whole group must not drop the queued blocks: the
    daemon stops the child by ending its input."""
    cache = BlockCache(store, BLOCK)
    first, later = blocks_of(2, seed=3), blocks_of(2, seed=4)
    save_all(cache, first)
    assert store.block_writer.flush(30)
    for number in writer_module.IGNORED_SIGNALS:
        os.kill(child_pid(store), number)
    save_all(cache, later, prefix="later")
    assert store.block_writer.flush(30) and store.block_writer.running
    assert load_all(cache, later, prefix="later") == later


def test_when_the_child_dies_the_daemon_stores_blocks_itself(store, caplog):
    cache = BlockCache(store, BLOCK)
    before, after = blocks_of(2, seed=5), blocks_of(3, seed=6)
    save_all(cache, before)
    assert store.block_writer.flush(30)
    pid = child_pid(store)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while store.block_writer.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not store.block_writer.running
    assert store.block_writer.state() == {"pid": None, "in_daemon": True, "sent": 2, "stored": 2}  # s3xfs stats
    with caplog.at_level(logging.WARNING):
        save_all(cache, after, prefix="after")
        save_all(cache, after, prefix="again")
    assert load_all(cache, after, prefix="after") == after
    assert load_all(cache, after, prefix="again") == after
    assert cache.stats["blocks_stored"] == 6 and cache.counters()["blocks_stored"] == 8
    gone = [record for record in caplog.records if "went away" in record.getMessage()]
    assert len(gone) == 1, caplog.text  # said once; the next blocks go straight to the daemon's own writes
    assert not store.block_writer.flush(1)  # nothing to wait for any more


def test_failures_are_reported_once_per_kind_and_counted(tmp_path, monkeypatch):
    """The child's loop in this process, its put made to fail: one E line per kind, every failure
    counted in the S line, and the flush still acknowledged."""
    calls = []

    def failing_put(cache, tag, name, *pieces):
        calls.append(name)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "put_value", failing_put)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    child = threading.Thread(target=writer_module.serve,
                             args=(tmp_path / "cache", NS.id, 1 << 30, to_child_r, from_child_w))
    (tmp_path / "cache").mkdir(mode=0o700)
    child.start()
    try:
        for name in ("a", "b"):
            key = name.encode()
            os.write(to_child_w, writer_module._FRAME.pack(writer_module._BLOCK, len(key), 5) + key + b"12345")
        os.write(to_child_w, writer_module._FRAME.pack(writer_module._FLUSH, 1, 0) + b"7")
    finally:
        os.close(to_child_w)
        child.join(30)
        os.close(from_child_w)
    replies = b""
    while chunk := os.read(from_child_r, 4096):
        replies += chunk
    os.close(from_child_r)
    os.close(to_child_r)
    lines = replies.decode().splitlines()
    assert calls == ["a", "b"]
    assert [line for line in lines if line.startswith("E ")] == ["E OSError [Errno 28] No space left on device"]
    assert "S 0 2" in lines and lines[-1] == "F 7"


def test_a_child_that_cannot_open_the_cache_reports_why_and_its_blocks_count_as_failed(tmp_path, caplog):
    """A real child whose cache directory turned into a file: its one E line is logged once, every
    block it was sent and never stored counts as a failed cache call, and the daemon takes over."""
    opened = CacheStore(tmp_path / "cache", NS, size_limit=1 << 30, block_writer=True)
    try:
        elsewhere = tmp_path / "not-a-directory"
        elsewhere.write_bytes(b"x")
        opened.block_writer._args[-3] = str(elsewhere)  # noqa: SLF001 - the child's cache directory
        cache = BlockCache(opened, BLOCK)
        bodies = blocks_of(3, seed=8)
        with caplog.at_level(logging.WARNING):
            save_all(cache, bodies)
            deadline = time.monotonic() + 30
            while opened.block_writer.running and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not opened.block_writer.running
            save_all(cache, bodies, prefix="again")
        stopped = [r for r in caplog.records if "the block writer stopped" in r.getMessage()]
        assert len(stopped) == 1, caplog.text
        sent = opened.block_writer.sent
        assert 1 <= sent <= 3 and opened.errors == sent  # what the child took and never stored
        assert load_all(cache, bodies, prefix="again") == bodies  # stored by the daemon itself
    finally:
        opened.close()


def test_a_child_that_takes_nothing_is_killed_and_the_daemon_takes_over(store, monkeypatch, caplog):
    """A child alive but not reading (stopped, or stuck on a disk) must not hang the cache's writer,
    and with it every read waiting for room in the backlog."""
    monkeypatch.setattr(writer_module, "SEND_TIMEOUT", 1.0)
    cache = BlockCache(store, BLOCK)
    save_all(cache, blocks_of(1, seed=9), prefix="first")
    pid = child_pid(store)
    os.kill(pid, signal.SIGSTOP)
    try:
        bodies = blocks_of(12, seed=10)  # 3 MiB: more than the pipe holds
        with caplog.at_level(logging.WARNING):
            started = time.monotonic()
            save_all(cache, bodies)
        assert time.monotonic() - started < 20
        assert any("took nothing" in r.getMessage() for r in caplog.records), caplog.text
        # The pipe (1 MiB) holds at most 3 whole blocks: the daemon stored the rest itself.
        assert cache.stats["blocks_stored"] >= 9
        assert load_all(cache, bodies)[3:] == bodies[3:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_a_block_writer_that_cannot_start_leaves_the_daemon_storing(tmp_path, monkeypatch, caplog):
    opened = CacheStore(tmp_path / "cache", NS, size_limit=1 << 30, block_writer=True)
    try:
        opened.block_writer._args = [str(tmp_path / "no-such-python")]  # noqa: SLF001
        cache = BlockCache(opened, BLOCK)
        bodies = blocks_of(2, seed=7)
        with caplog.at_level(logging.WARNING):
            save_all(cache, bodies)
        assert load_all(cache, bodies) == bodies and cache.stats["blocks_stored"] == 2
        assert sum("cannot start the cache block writer" in r.getMessage() for r in caplog.records) == 1
    finally:
        opened.close()
