"""Fetched blocks are written to the cache by a process of their own.

Storing a block is a dozen blocking calls (a directory, a file created and written, SQLite's
statements and commit), and each releases and re-takes the GIL. In the daemon's own threads every
one of those hand-offs made the FUSE thread wait: with ``--cache``, a training job's first epoch
read 250-320 files/s where it read 600 without (2,000 files of 256 KiB, 4 ms of latency). The
same epoch with the blocks left unstored, while another process stored as many, read 436.

So the daemon only hands each block over: one ``writev`` of a small header, the cache key and the
bytes into a pipe (:class:`BlockWriter`, called from the cache's writer thread). The child
(``python -m s3xfs.core.cache block-writer DIR TAG SIZE_LIMIT``) checksums and stores blocks in the
order they came, in the same diskcache, which is process-safe, and answers on its stdout:

* ``S stored failed``: its running totals, whenever it has caught up with its input;
* ``E kind message``: the first failure of each kind (a cache problem is a miss, never an error);
* ``F seq``: everything sent before flush request ``seq`` is stored.

The child holds no file descriptor but its pipes (nothing of ``/dev/fuse``), ignores SIGINT and
SIGTERM (a Ctrl-C or ``systemctl stop`` reaching the whole group must not drop what is queued) and
exits once its input ends: when the daemon closes it at unmount, or dies. If the child cannot be
started or goes away, the daemon stores blocks itself, as before.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_FRAME = struct.Struct("!BII")  # kind, key length, data length
_BLOCK, _FLUSH = 1, 2
PIPE_SIZE = 1 << 20  # a few blocks in flight between the processes (Linux's default cap for a pipe)
STOP_TIMEOUT = 30.0  # seconds the child may take to store its backlog at unmount before it is killed

COMMAND = "block-writer"  # python -m s3xfs.core.cache block-writer ...: how the child shows in ps
Failure = Callable[[str, str], None]


class BlockWriterGone(Exception):
    """The child is not running (it could not start, or it exited): store in-process instead."""


class BlockWriter:
    """The daemon's side: started on first use; ``send`` and ``flush`` are blocking calls, made by
    one thread at a time (the cache's writer thread)."""

    def __init__(self, directory: Path, tag: str, size_limit: int, on_failure: Failure) -> None:
        self._args = [sys.executable, "-m", "s3xfs.core.cache", COMMAND, str(directory), tag, str(size_limit)]
        self._on_failure = on_failure
        self._process: subprocess.Popen[bytes] | None = None
        self._gone = False
        self._sent_flushes = 0
        self._state = threading.Condition()  # guards the counters below, written by the reply reader
        self._acked_flush = 0
        self._exited = False
        self.stored = 0
        self.failed = 0

    @property
    def running(self) -> bool:
        return self._process is not None and not self._exited

    def send(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Queue one block for the child; raises :class:`BlockWriterGone` if it cannot take it."""
        name = key.encode()
        self._write([_FRAME.pack(_BLOCK, len(name), len(data)), name, data])

    def flush(self, timeout: float) -> bool:
        """Wait until every block sent so far is stored (or the child exited); whether it was."""
        self._sent_flushes += 1
        seq = self._sent_flushes
        token = str(seq).encode()
        try:
            self._write([_FRAME.pack(_FLUSH, len(token), 0), token])
        except BlockWriterGone:
            return False
        deadline = time.monotonic() + timeout
        with self._state:
            while self._acked_flush < seq and not self._exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state.wait(left)
            return self._acked_flush >= seq

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """End the child's input and wait for it to store what it has; kill it after ``timeout``."""
        process, self._process = self._process, None
        self._gone = True
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass  # already gone: nothing to flush
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("cache block writer (pid %d) still busy after %.0f s at unmount: killed; "
                        "the blocks it had not stored are fetched again when read", process.pid, timeout)
            process.kill()
            process.wait()

    def _write(self, pieces: list[bytes | bytearray | memoryview]) -> None:
        process = self._start()
        assert process.stdin is not None
        fd = process.stdin.fileno()
        views = [memoryview(piece).cast("B") for piece in pieces]
        try:
            while views:
                written = os.writev(fd, views)
                while views and written >= len(views[0]):
                    written -= len(views.pop(0))
                if written:
                    views[0] = views[0][written:]
        except OSError as exc:
            self._gone = True
            log.warning("cache block writer (pid %d) went away (%s): the daemon stores blocks itself from now on",
                        process.pid, exc.strerror or exc)
            raise BlockWriterGone from None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._gone:
            raise BlockWriterGone
        if self._process is not None:
            return self._process
        try:
            process = subprocess.Popen(self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       close_fds=True, start_new_session=False)
        except OSError as exc:
            self._gone = True
            log.warning("cannot start the cache block writer (%s): the daemon stores blocks itself", exc)
            raise BlockWriterGone from None
        assert process.stdin is not None
        try:
            fcntl.fcntl(process.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the system's cap is lower: smaller writes, same result
        self._process = process
        threading.Thread(target=self._read_replies, args=(process,), name="cache block writer replies",
                         daemon=True).start()
        return process

    def _read_replies(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            kind, _, rest = line.decode(errors="replace").rstrip("\n").partition(" ")
            with self._state:
                if kind == "S":
                    stored, failed = rest.split()
                    self.stored, self.failed = int(stored), int(failed)
                elif kind == "F":
                    self._acked_flush = max(self._acked_flush, int(rest))
                self._state.notify_all()
            if kind == "E":
                failure, _, message = rest.partition(" ")
                self._on_failure(failure, message)
        with self._state:
            self._exited = True
            self._state.notify_all()


# --- the child ---------------------------------------------------------------------------------


def _read_exactly(fd: int, view: memoryview) -> bool:
    """Fill ``view`` from ``fd``; False at the end of input (a frame cut short counts as the end)."""
    while view:
        got = os.readv(fd, [view])
        if not got:
            return False
        view = view[got:]
    return True


def serve(directory: Path, tag: str, size_limit: int, stdin: int = 0, stdout: int = 1) -> None:
    """Store the blocks read from ``stdin`` until it ends (the child's main loop)."""
    from .blocks import stored_form
    from .store import open_cache, put_value

    cache = open_cache(directory, size_limit)
    header = bytearray(_FRAME.size)
    buffer = bytearray(1 << 20)
    stored = failed = 0
    reported = (0, 0)
    kinds: set[str] = set()

    replying = [True]

    def reply(text: str) -> None:
        if replying[0]:
            try:
                os.write(stdout, text.encode())
            except BrokenPipeError:
                replying[0] = False  # the daemon is gone: store what it sent all the same

    try:
        while _read_exactly(stdin, memoryview(header)):
            kind, key_length, data_length = _FRAME.unpack(header)
            key = bytearray(key_length)
            if data_length > len(buffer):
                buffer = bytearray(data_length)
            data = memoryview(buffer)[:data_length]
            if not (_read_exactly(stdin, memoryview(key)) and _read_exactly(stdin, data)):
                break
            if kind == _BLOCK:
                try:
                    put_value(cache, tag, key.decode(), *stored_form(data))
                    stored += 1
                except Exception as exc:  # noqa: BLE001 - a cache problem is a miss, reported once per kind
                    failed += 1
                    name = type(exc).__name__
                    if name not in kinds:
                        kinds.add(name)
                        reply(f"E {name} {str(exc).replace(chr(10), ' ')}\n")
            caught_up = not select.select([stdin], [], [], 0)[0]
            if (kind == _FLUSH or caught_up) and (stored, failed) != reported:
                reported = (stored, failed)
                reply(f"S {stored} {failed}\n")
            if kind == _FLUSH:
                reply(f"F {key.decode()}\n")
    finally:
        cache.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stop when the daemon closes our input, not before
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    directory, tag, size_limit = argv
    serve(Path(directory), tag, int(size_limit))
    return 0

