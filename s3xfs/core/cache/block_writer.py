"""Fetched blocks are written to the cache by a process of their own.

Storing a block is a dozen blocking calls (a directory, a file created and written, SQLite's
statements and commit), and each releases and re-takes the GIL. In the daemon's own threads every
one of those hand-offs made the FUSE thread wait: with ``--cache``, a training job's first epoch
read 250-320 files/s where it read 600 without (2,000 files of 256 KiB, 4 ms of latency). The
same epoch with the blocks left unstored, while another process stored as many, read 436.

So the daemon only hands each block over: one ``writev`` of a small header, the cache key and the
bytes into a pipe (:class:`BlockWriter`, called from the cache's writer thread). The child
(``python -P -m s3xfs.core.cache block-writer DIR TAG SIZE_LIMIT``) checksums and stores blocks in
the order they came, in the same diskcache, which is process-safe, and answers on its stdout:

* ``S stored failed``: its running totals, when it has caught up with its input, at least every
  ``REPORT_INTERVAL`` while it has not, and when its input ends;
* ``E kind message``: the first failure of each kind (a cache problem is a miss, never an error);
* ``F seq``: everything sent before flush request ``seq`` is stored.

The child holds no file descriptor but its pipes (nothing of ``/dev/fuse``), runs in a session of
its own, ignores ``IGNORED_SIGNALS`` (a Ctrl-C or ``systemctl stop`` reaching the whole group must
not drop what is queued) and exits once its input ends: when the daemon closes it at unmount, or
dies. If the child cannot be started, goes away or takes nothing for ``SEND_TIMEOUT``, the daemon
stores blocks itself, as before.
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
# Seconds the child may go without taking a byte before it is taken for stuck, killed, and the
# daemon stores blocks itself: it may wait SQLITE_TIMEOUT (5 s) for each of the few blocks the pipe
# holds when another process holds the database.
SEND_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0  # seconds the child may take to store its backlog at unmount before it is killed
WATCH_INTERVAL = 1.0  # seconds between two looks at a write under way (and a stuck child)
REPORT_INTERVAL = 1.0  # seconds between the child's running totals while its input never runs dry
# Signals the child ignores: a Ctrl-C, `systemctl stop` or `systemctl kill` reaching every process
# of the mount must not drop what it was sent; it stops when its input ends.
IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# The daemon's environment minus what the child has no use for: it never talks to S3.
_SECRET_PREFIXES = ("AWS_",)

COMMAND = "block-writer"  # python -m s3xfs.core.cache block-writer ...: how the child shows in ps
Failure = Callable[[str, str], None]


class BlockWriterGone(Exception):
    """The child is not running (it could not start, or it exited): store in-process instead."""


class BlockWriter:
    """The daemon's side: started on first use; ``send`` and ``flush`` are blocking calls, made by
    one thread at a time (the cache's writer thread)."""

    def __init__(self, directory: Path, tag: str, size_limit: int, on_failure: Failure) -> None:
        # -P: nothing from the daemon's working directory on the child's import path.
        self._args = [sys.executable, "-P", "-m", "s3xfs.core.cache", COMMAND, str(directory), tag, str(size_limit)]
        self._on_failure = on_failure
        self._process: subprocess.Popen[bytes] | None = None
        self._replies: threading.Thread | None = None
        self._gone = False
        self._sent_flushes = 0
        self._state = threading.Condition()  # guards the counters below, written by the reply reader
        self._acked_flush = 0
        self._exited = False
        self._writing_since: float | None = None  # when the write under way began (the reply reader watches it)
        self._stuck = False  # killed for taking nothing for SEND_TIMEOUT
        self.sent = 0  # blocks handed to the child
        self.stored = 0  # as the child last reported
        self._failed = 0  # as the child last reported

    @property
    def running(self) -> bool:
        return self._process is not None and not self._exited

    @property
    def failed(self) -> int:
        """Blocks the child could not store, and those it never got to once it exited."""
        with self._state:
            lost = self.sent - self.stored - self._failed if self._exited else 0
            return self._failed + max(0, lost)

    def state(self) -> dict[str, object]:
        """For ``s3xfs stats``: the child's pid while it runs, and whether the daemon stores blocks
        itself ("in the daemon": it could not start, died, or was stuck)."""
        process = self._process
        with self._state:
            return {"pid": process.pid if process is not None and not self._exited else None,
                    "in_daemon": self._gone or self._exited,
                    "sent": self.sent, "stored": self.stored}

    def send(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Queue one block for the child; raises :class:`BlockWriterGone` if it cannot take it."""
        name = key.encode()
        view = memoryview(data).cast("B")
        self._write([_FRAME.pack(_BLOCK, len(name), view.nbytes), name, view])
        with self._state:
            self.sent += 1

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
        if self._replies is not None:
            self._replies.join(STOP_TIMEOUT)  # its last totals are in before close returns

    def _write(self, pieces: list[bytes | bytearray | memoryview]) -> None:
        """Write all of ``pieces`` to the child (blocking: the kernel wakes us once, not per page
        freed), or give up on it: dead, or stuck for SEND_TIMEOUT (then the reply reader kills it)."""
        process = self._start()
        assert process.stdin is not None
        fd = process.stdin.fileno()
        views = [memoryview(piece).cast("B") for piece in pieces]
        self._writing_since = time.monotonic()
        try:
            while views:
                written = os.writev(fd, views)
                while views and written >= len(views[0]):
                    written -= len(views.pop(0))
                if written:
                    views[0] = views[0][written:]
        except OSError as exc:
            self._gone = True
            why = (f"took nothing for {SEND_TIMEOUT:.0f} s: killed" if self._stuck
                   else f"went away ({exc.strerror or exc})")
            log.warning("cache block writer (pid %d) %s: the daemon stores blocks itself from now on", process.pid, why)
            raise BlockWriterGone from None
        finally:
            self._writing_since = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._gone:
            raise BlockWriterGone
        if self._process is not None:
            return self._process
        env = {name: value for name, value in os.environ.items() if not name.startswith(_SECRET_PREFIXES)}
        try:
            # A session of its own: the terminal's signals are not for it. stderr: what goes wrong
            # comes back as an "E" reply; nothing may hold the stderr of whoever started the mount.
            process = subprocess.Popen(self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True,
                                       cwd="/", env=env)
        except OSError as exc:
            self._gone = True
            log.warning("cannot start the cache block writer (%s): the daemon stores blocks itself", exc)
            raise BlockWriterGone from None
        assert process.stdin is not None
        fd = process.stdin.fileno()
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the system's cap is lower: smaller writes, same result
        self._process = process
        self._replies = threading.Thread(target=self._read_replies, args=(process,), name="cache block writer replies",
                                         daemon=True)
        self._replies.start()
        return process

    def _read_replies(self, process: subprocess.Popen[bytes]) -> None:
        """Read the child's replies; once a second, kill it if a write has waited SEND_TIMEOUT."""
        assert process.stdout is not None
        fd = process.stdout.fileno()
        pending = b""
        try:
            while True:
                if select.select([fd], [], [], WATCH_INTERVAL)[0]:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        break
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        self._reply(line.decode(errors="replace"))
                since = self._writing_since
                if since is not None and time.monotonic() - since > SEND_TIMEOUT and process.poll() is None:
                    self._stuck = True
                    process.kill()  # the blocked write fails, and the daemon takes over
        finally:
            process.stdout.close()
            with self._state:
                self._exited = True
                self._state.notify_all()

    def _reply(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "E":
            failure, _, message = rest.partition(" ")
            self._on_failure(failure, message)
            return
        try:
            numbers = [int(word) for word in rest.split()]
        except ValueError:
            numbers = []
        with self._state:
            if kind == "S" and len(numbers) == 2:
                self.stored, self._failed = numbers
            elif kind == "F" and len(numbers) == 1:
                self._acked_flush = max(self._acked_flush, numbers[0])
            else:
                log.debug("cache block writer: unexpected reply %r", line)
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
    replying = True

    def reply(text: str) -> None:
        nonlocal replying
        if replying:
            try:
                os.write(stdout, text.encode(errors="backslashreplace"))
            except OSError:
                replying = False  # the daemon is gone: store what it sent all the same

    try:
        _serve(directory, tag, size_limit, stdin, reply)
    except Exception as exc:  # noqa: BLE001 - the daemon counts what was not stored and logs this
        reply(f"E {type(exc).__name__} {_one_line(exc)} (the block writer stopped)\n")


def _serve(directory: Path, tag: str, size_limit: int, stdin: int, reply: Callable[[str], None]) -> None:
    from .blocks import stored_form
    from .store import open_cache, put_value

    cache = open_cache(directory, size_limit)
    header = bytearray(_FRAME.size)
    buffer = bytearray(1 << 20)
    stored = failed = 0
    reported = (0, 0)
    reported_at = time.monotonic()
    kinds: set[str] = set()
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
                        reply(f"E {name} {_one_line(exc)}\n")
            now = time.monotonic()
            due = kind == _FLUSH or now - reported_at >= REPORT_INTERVAL or not select.select([stdin], [], [], 0)[0]
            if due and (stored, failed) != reported:
                reported, reported_at = (stored, failed), now
                reply(f"S {stored} {failed}\n")
            if kind == _FLUSH:
                reply(f"F {key.decode()}\n")
        if (stored, failed) != reported:  # the input ended: the daemon's totals are final
            reply(f"S {stored} {failed}\n")
    finally:
        cache.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str]) -> int:
    for number in IGNORED_SIGNALS:
        signal.signal(number, signal.SIG_IGN)  # stop when the daemon closes our input, not before
    directory, tag, size_limit = argv
    serve(Path(directory), tag, int(size_limit))
    return 0
