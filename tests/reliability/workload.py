"""A mixed workload through a real s3xfs mount, checked byte for byte against a model.

Why: every reliability scenario (session churn, faults, an outage, the soak) asks the same
question, "did the filesystem keep working, and did it ever hand back wrong data?", so one
driver answers it for all of them. N worker threads, each owning a directory of the mount, do
what applications do: write new files (a few bytes to several MiB, some larger than the part
size so they go up as multipart uploads), read them whole and by ranges, list and walk
directories, stat, append (directory buckets), rename (also over an existing file) and unlink.
The model keeps, per file, how to regenerate its content (seeded segments) and its SHA-256, so
every read is compared byte for byte without keeping the bytes in memory.

A failed operation is counted by errno and makes the paths it touched *uncertain*: each keeps
the contents it may legitimately have (the old one, the new one, or none). Later operations
resolve them by reading them back, and any content outside that set counts as wrong bytes. At
the end :meth:`Workload.verify` checks every file through the mount and straight from the
endpoint (boto3), and compares the bucket's keys with the model.

Bounded: it stops after ``duration`` seconds or ``max_ops`` operations, whichever comes first,
and a watchdog (the thread that called :meth:`Workload.run`) stops everything and reports a
stack dump when one operation takes longer than ``op_timeout`` instead of hanging the caller.
Deterministic for a seed: each worker's choices and every byte written come from seeded RNGs
(timing, and so the interleaving between workers, is not).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from s3xfs.client.retry import RetryPolicy
from s3xfs.client.s3 import CONNECT_TIMEOUT

KiB = 1024
MiB = 1024 * KiB

READ_KINDS = ("read", "read_range", "list", "walk", "stat")
WRITE_KINDS = ("write", "append", "rename", "unlink")
# How often each operation is picked (relative weights). Reads dominate, as in most workloads,
# but every kind of change happens hundreds of times in a few minutes.
DEFAULT_WEIGHTS: dict[str, float] = {
    "write": 20, "read": 14, "read_range": 20, "list": 8, "walk": 2, "stat": 10,
    "append": 9, "rename": 8, "unlink": 6,
}
MAX_APPEND_SIZE = 64 * MiB  # an object takes at most 10,000 appends; keep files well below huge
MAX_DETAILS = 50  # problems described in full in the report (the counters count them all)


# --- what a file holds ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Content:
    """A file's content as seeded segments: regenerated on demand, never kept in memory."""

    segments: tuple[tuple[int, int], ...] = ()  # (seed, length) of each piece, in order

    @property
    def size(self) -> int:
        return sum(length for _, length in self.segments)

    def data(self) -> bytes:
        return b"".join(_segment(seed, length) for seed, length in self.segments)

    def slice(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) as read(2) would return them (short at the end)."""
        out, position, end = [], 0, offset + length
        for seed, size in self.segments:
            if position + size > offset and position < end:
                piece = _segment(seed, size)
                out.append(piece[max(0, offset - position):end - position])
            position += size
            if position >= end:
                break
        return b"".join(out)

    def appended(self, seed: int, length: int) -> "Content":
        return Content(self.segments + ((seed, length),))

    @cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for seed, length in self.segments:
            digest.update(_segment(seed, length))
        return digest.hexdigest()


def _segment(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def differing_bytes(got: bytes, want: bytes) -> int:
    """How many bytes of ``got`` are wrong: differing positions plus the difference in length."""
    if got == want:
        return 0
    common = min(len(got), len(want))
    return sum(1 for a, b in zip(got[:common], want[:common]) if a != b) + abs(len(got) - len(want))


# --- bounds derived from the client's retry settings ----------------------------------------------

def call_bound(policy: RetryPolicy = RetryPolicy(), attempt_time: float = 2.0) -> float:
    """The longest one S3 call can take, retries included, when each attempt answers (an error
    or a refused connection) within ``attempt_time`` seconds: the backoff sleeps are capped
    (``base * 2**n`` up to ``max_delay``) and the loop gives up after ``max_attempts`` tries or
    ``max_elapsed`` seconds (the last attempt may still run its course after that)."""
    sleeps = sum(min(policy.max_delay, policy.base_delay * 2 ** n) for n in range(1, policy.max_attempts))
    return min(policy.max_elapsed, sleeps + (policy.max_attempts - 1) * attempt_time) + attempt_time


# A workload operation is a few FUSE requests in a row (lookup, create, writes, flush with a
# commit that may be CompleteMultipartUpload then HEAD, ...): at most this many S3 calls one after
# the other. Each may also first need a session (one CreateSession attempt, CONNECT_TIMEOUT at worst).
SEQUENTIAL_CALLS = 4


def operation_bound(policy: RetryPolicy = RetryPolicy(), attempt_time: float = 2.0) -> float:
    """Seconds within which every workload operation must return when the endpoint answers (or
    refuses connections) within ``attempt_time``: past this, an operation is hung, not slow."""
    return SEQUENTIAL_CALLS * (call_bound(policy, attempt_time) + min(CONNECT_TIMEOUT, attempt_time))


# --- configuration and results --------------------------------------------------------------------

@dataclass
class WorkloadConfig:
    seed: int = 1
    workers: int = 4  # threads; the test machines have 2 cores, 4 keeps requests overlapping
    duration: float = 60.0  # seconds of operations (then verification)
    max_ops: int = 1_000_000  # a second bound, whatever the duration
    max_files: int = 24  # per worker: beyond it, writes become unlinks (bounded disk and memory)
    part_size: int = 5 * MiB  # the mount's --part-size: some files are made larger than it
    read_only: bool = False  # only reads, listings and stats of files put there by prepare()
    read_only_files: int = 8  # per worker, in read-only mode
    op_timeout: float = field(default_factory=operation_bound)  # longer than this is a hang
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


@dataclass(slots=True)
class OpRecord:
    kind: str
    worker: int
    start: float  # time.monotonic()
    end: float
    error: str | None  # errno name, or None for success


@dataclass
class Report:
    """What a run did and what went wrong; ``ok`` only if nothing did."""

    duration: float = 0.0
    operations: Counter[str] = field(default_factory=Counter)
    failures: dict[str, Counter[str]] = field(default_factory=dict)  # kind -> errno name -> count
    wrong_bytes: int = 0
    wrong_reads: int = 0
    listing_mismatches: int = 0
    stat_mismatches: int = 0
    lost_files: int = 0  # files that must exist but are gone
    unexpected_keys: int = 0  # keys in the bucket that no operation made
    verify_errors: int = 0  # the final check itself could not finish
    verified_files: int = 0
    verified_bytes: int = 0
    hangs: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    records: list[OpRecord] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> int:
        return sum(sum(c.values()) for c in self.failures.values())

    @property
    def failed_by_errno(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.failures.values():
            total.update(counts)
        return total

    @property
    def problems(self) -> int:
        """Everything that must be zero in any scenario (failed operations are judged by the caller)."""
        return (self.wrong_bytes + self.wrong_reads + self.listing_mismatches + self.stat_mismatches
                + self.lost_files + self.unexpected_keys + self.verify_errors + len(self.hangs))

    def failures_between(self, start: float, end: float) -> Counter[str]:
        """Failed operations (by errno) among those that started in [start, end) (time.monotonic())."""
        return Counter(r.error for r in self.records if r.error is not None and start <= r.start < end)

    def max_latency(self, kinds: tuple[str, ...] | None = None, window: tuple[float, float] | None = None) -> float:
        """Longest operation (seconds), of the given kinds, among those that overlap ``window``."""
        best = 0.0
        for r in self.records:
            if kinds is not None and r.kind not in kinds:
                continue
            if window is not None and (r.end < window[0] or r.start > window[1]):
                continue
            best = max(best, r.end - r.start)
        return best

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (what the tests and the soak write to bench/results/)."""
        latencies = sorted(r.end - r.start for r in self.records)
        return {
            "duration_s": round(self.duration, 1),
            "operations": dict(sorted(self.operations.items())),
            "operations_total": sum(self.operations.values()),
            "failed": {kind: dict(c) for kind, c in sorted(self.failures.items()) if c},
            "failed_total": self.failed,
            "failed_by_errno": dict(self.failed_by_errno),
            "wrong_bytes": self.wrong_bytes,
            "wrong_reads": self.wrong_reads,
            "listing_mismatches": self.listing_mismatches,
            "stat_mismatches": self.stat_mismatches,
            "lost_files": self.lost_files,
            "unexpected_keys": self.unexpected_keys,
            "verify_errors": self.verify_errors,
            "verified_files": self.verified_files,
            "verified_bytes": self.verified_bytes,
            "hangs": len(self.hangs),
            "latency_p50_ms": round(_percentile(latencies, 0.5) * 1000, 1),
            "latency_p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
            "latency_max_ms": round((latencies[-1] if latencies else 0.0) * 1000, 1),
        }

    def describe(self) -> str:
        """One paragraph for an assertion message."""
        s = self.summary()
        lines = [f"ops {s['operations_total']} {s['operations']}; failed {s['failed']}; wrong bytes {self.wrong_bytes}; "
                 f"wrong reads {self.wrong_reads}; listing mismatches {self.listing_mismatches}; stat mismatches "
                 f"{self.stat_mismatches}; lost {self.lost_files}; unexpected keys {self.unexpected_keys}; hangs "
                 f"{len(self.hangs)}"]
        lines += self.details[:20]
        lines += self.hangs[:2]
        return "\n".join(lines)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


# --- the workload -------------------------------------------------------------------------------

class _Worker:
    """One thread's share: its directory, its files, and its RNG."""

    def __init__(self, number: int, seed: int) -> None:
        self.number = number
        self.rng = random.Random(f"{seed}:{number}")
        self.files: dict[str, Content] = {}  # relative path -> content (certain)
        # Files no operation touches: one in sub/ keeps that directory in the bucket (a directory
        # bucket drops a directory with its last object, as docs/SEMANTICS.md says).
        self.fixed: dict[str, Content] = {}
        self.uncertain: dict[str, list[Content | None]] = {}  # relative path -> what it may hold (None: absent)
        self.counter = 0
        self.current: tuple[str, float] | None = None  # (operation, start) while one runs
        self.thread: threading.Thread | None = None

    @property
    def dir(self) -> str:
        return f"w{self.number}"

    def new_name(self, sub: bool = False) -> str:
        self.counter += 1
        return f"{self.dir}/{'sub/' if sub else ''}f{self.counter:05d}.bin"


class Workload:
    """The driver: ``prepare()``, then ``run()`` (any number of times), then ``verify()``."""

    def __init__(self, mountpoint: Path, config: WorkloadConfig, *, endpoint: Callable[[], Any], bucket: str,
                 root: str = "wl") -> None:
        """``endpoint``: makes a boto3 client of the bucket's endpoint (to check what is really stored);
        ``root``: the directory of the mount the workload owns (its keys start with ``root + '/'``)."""
        self.base = mountpoint / root
        self.config = config
        self.endpoint = endpoint
        self.bucket = bucket
        self.key_prefix = root.strip("/") + "/"
        self.workers = [_Worker(n, config.seed) for n in range(config.workers)]
        self.report = Report()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ops_started = 0

    # --- set-up --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Read-write: make each worker's directories. Read-only: put each worker's files in the
        bucket straight through the endpoint (the mount cannot write)."""
        if not self.config.read_only:
            for w in self.workers:
                os.makedirs(self.base / w.dir / "sub", exist_ok=True)
                anchor = Content(((w.rng.getrandbits(63), 16),))
                (self.base / w.dir / "sub" / "anchor").write_bytes(anchor.data())
                w.fixed[f"{w.dir}/sub/anchor"] = anchor
            return
        s3 = self.endpoint()
        for w in self.workers:
            for n in range(self.config.read_only_files):
                path = w.new_name(sub=n % 3 == 2)
                content = Content(((w.rng.getrandbits(63), self._size(w.rng)),))
                s3.put_object(Bucket=self.bucket, Key=self.key_prefix + path, Body=content.data())
                w.files[path] = content

    # --- running -------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self, duration: float | None = None) -> Report:
        """Run the workers for ``duration`` seconds (default: the configured one); the calling
        thread watches them and stops everything at the first hung operation."""
        duration = self.config.duration if duration is None else duration
        if self.report.hangs:
            return self.report  # a hung thread still owns its worker's model: nothing more can run
        self._stop.clear()
        started = time.monotonic()
        deadline = started + duration
        for w in self.workers:
            w.thread = threading.Thread(target=self._loop, args=(w, deadline), name=f"workload-{w.number}", daemon=True)
            w.thread.start()
        self._supervise([w for w in self.workers])
        self.report.duration += time.monotonic() - started
        return self.report

    def _supervise(self, workers: list[_Worker]) -> None:
        """Wait for ``workers``; if one operation runs longer than op_timeout, record a hang with
        every thread's stack and stop (a hung thread is a daemon thread: it cannot block exit)."""
        while any(w.thread is not None and w.thread.is_alive() for w in workers):
            for w in workers:
                current = w.current
                if current is not None and w.thread is not None and w.thread.is_alive() and \
                        time.monotonic() - current[1] > self.config.op_timeout:
                    self._hang(w, current)
                    return
            time.sleep(0.1)

    def _hang(self, w: _Worker, current: tuple[str, float]) -> None:
        self._stop.set()
        stacks = []
        frames = sys._current_frames()  # noqa: SLF001 - the point: where is it stuck?
        for thread in threading.enumerate():
            frame = frames.get(thread.ident or -1)
            if frame is not None and thread.name.startswith("workload"):
                stacks.append(f"--- {thread.name}\n{''.join(traceback.format_stack(frame))}")
        self.report.hangs.append(
            f"worker {w.number}: {current[0]} has not returned after {time.monotonic() - current[1]:.0f} s "
            f"(bound {self.config.op_timeout:.0f} s)\n" + "\n".join(stacks))

    def _loop(self, w: _Worker, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._ops_started >= self.config.max_ops:
                    return
                self._ops_started += 1
            self._do(w, self._choose(w))

    def _choose(self, w: _Worker) -> str:
        if w.uncertain and w.rng.random() < 0.3:
            return "resolve"
        weights = self.config.weights
        kinds = [k for k in weights if not self.config.read_only or k in READ_KINDS]
        if not w.files:
            kinds = [k for k in kinds if k in ("write", "list", "walk")] or ["list"]
        kind = w.rng.choices(kinds, [weights[k] for k in kinds])[0]
        if kind == "write" and len(w.files) + len(w.uncertain) >= self.config.max_files:
            kind = "unlink"
        return kind

    def _do(self, w: _Worker, kind: str) -> None:
        started = time.monotonic()
        w.current = (kind, started)
        error: str | None = None
        try:
            getattr(self, f"_op_{kind}")(w)
        except OSError as exc:
            error = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self._detail(f"worker {w.number} {kind} at {time.monotonic() - started:.1f} s: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug in the workload itself must show, not kill the thread
            error = f"exception {type(exc).__name__}"
            self._detail(f"worker {w.number} {kind}: {type(exc).__name__}: {exc}")
        finally:
            w.current = None
        end = time.monotonic()
        with self._lock:
            self.report.operations[kind] += 1
            if error is not None:
                self.report.failures.setdefault(kind, Counter())[error] += 1
            self.report.records.append(OpRecord(kind, w.number, started, end, error))

    def _detail(self, text: str) -> None:
        with self._lock:
            if len(self.report.details) < MAX_DETAILS:
                self.report.details.append(text)

    def _path(self, rel: str) -> Path:
        return self.base / rel

    def _size(self, rng: random.Random) -> int:
        """File sizes from a few bytes to several MiB; one in ten larger than a part (multipart)."""
        pick = rng.random()
        part = self.config.part_size
        if pick < 0.03:
            return 0
        if pick < 0.35:
            return rng.randint(1, 4 * KiB)
        if pick < 0.70:
            return rng.randint(4 * KiB, 1 * MiB)
        if pick < 0.90:
            return rng.randint(1 * MiB, part - 1)
        return rng.randint(part + 1, part * 5 // 2)

    def _pick(self, w: _Worker) -> str:
        return w.rng.choice(sorted(w.files))

    # --- operations ------------------------------------------------------------------------------
    # Each raises OSError as the system call did; the model changes only for what is certain.

    def _op_write(self, w: _Worker) -> None:
        rel = w.new_name(sub=w.rng.random() < 0.25)
        content = Content(((w.rng.getrandbits(63), self._size(w.rng)),))
        data = content.data()
        chunks = []
        offset = 0
        while offset < len(data):
            n = w.rng.choice((4 * KiB, 64 * KiB, 128 * KiB, 1 * MiB))
            chunks.append((offset, n))
            offset += n
        w.uncertain[rel] = [None, content]  # until close() says it is there
        fd = os.open(self._path(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for start, n in chunks:
                _write_all(fd, memoryview(data)[start:start + n])
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
        os.close(fd)  # the commit: its error is the write's
        del w.uncertain[rel]
        w.files[rel] = content

    def _op_append(self, w: _Worker) -> None:
        candidates = [p for p, c in w.files.items() if c.size < MAX_APPEND_SIZE]
        if not candidates:
            return self._op_write(w)
        rel = w.rng.choice(sorted(candidates))
        old = w.files[rel]
        length = w.rng.choice((1, w.rng.randint(1, 4 * KiB), w.rng.randint(4 * KiB, 256 * KiB)))
        new = old.appended(w.rng.getrandbits(63), length)
        piece = _segment(*new.segments[-1])
        del w.files[rel]
        w.uncertain[rel] = [old, new]
        fd = os.open(self._path(rel), os.O_WRONLY | os.O_APPEND)
        try:
            _write_all(fd, memoryview(piece))
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
        os.close(fd)
        del w.uncertain[rel]
        w.files[rel] = new

    def _op_read(self, w: _Worker) -> None:
        rel = self._pick(w)
        content = w.files[rel]
        with open(self._path(rel), "rb") as f:
            data = f.read()
        self._compare(f"read {rel}", data, content.data() if len(data) != content.size or sha256(data) != content.sha256
                      else data)

    def _op_read_range(self, w: _Worker) -> None:
        rel = self._pick(w)
        content = w.files[rel]
        size = content.size
        offset = w.rng.randint(0, max(0, size - 1)) if w.rng.random() < 0.9 else max(0, size - w.rng.randint(0, 100))
        length = w.rng.randint(1, 2 * MiB)
        fd = os.open(self._path(rel), os.O_RDONLY)
        try:
            data = _pread_all(fd, length, offset)
        finally:
            os.close(fd)
        self._compare(f"pread {rel} [{offset}, +{length})", data, content.slice(offset, length))

    def _op_stat(self, w: _Worker) -> None:
        rel = self._pick(w)
        st = os.stat(self._path(rel))
        if not stat.S_ISREG(st.st_mode) or st.st_size != w.files[rel].size:
            with self._lock:
                self.report.stat_mismatches += 1
            self._detail(f"stat {rel}: mode {st.st_mode:o} size {st.st_size}, expected a file of {w.files[rel].size}")

    def _op_list(self, w: _Worker) -> None:
        directory = w.dir if w.rng.random() < 0.7 else f"{w.dir}/sub"
        with os.scandir(self._path(directory)) as entries:
            seen = {e.name: (e.is_dir(follow_symlinks=False), None if e.is_dir(follow_symlinks=False)
                             else e.stat(follow_symlinks=False).st_size) for e in entries}
        self._compare_listing(w, directory, seen)

    def _op_walk(self, w: _Worker) -> None:
        for top, dirs, files in os.walk(self._path(w.dir), onerror=_raise):
            rel_top = os.path.relpath(top, self.base)
            seen = {name: (True, None) for name in dirs}
            seen.update({name: (False, os.stat(os.path.join(top, name)).st_size) for name in files})
            self._compare_listing(w, rel_top, seen)

    def _compare_listing(self, w: _Worker, directory: str, seen: dict[str, tuple[bool, int | None]]) -> None:
        expected = {p.rsplit("/", 1)[1]: c.size for p, c in (*w.files.items(), *w.fixed.items())
                    if p.rsplit("/", 1)[0] == directory}
        maybe = {p.rsplit("/", 1)[1] for p in w.uncertain if p.rsplit("/", 1)[0] == directory}
        if directory == w.dir:
            expected_dirs = {"sub"}
        else:
            expected_dirs = set()
        problems = []
        for name, size in expected.items():
            if name not in seen:
                problems.append(f"{name} missing")
            elif seen[name] != (False, size):
                problems.append(f"{name} is {seen[name]}, expected a file of {size}")
        for name, (is_dir, _) in seen.items():
            if name in expected or name in maybe:
                continue
            if is_dir and name in expected_dirs:
                continue
            problems.append(f"{name} should not be there")
        if problems:
            with self._lock:
                self.report.listing_mismatches += 1
            self._detail(f"listing {directory}: {'; '.join(problems[:5])}")

    def _op_rename(self, w: _Worker) -> None:
        src = self._pick(w)
        others = [p for p in w.files if p != src]
        if others and w.rng.random() < 0.25:
            dst = w.rng.choice(sorted(others))  # over an existing file: it is replaced
        else:
            dst = w.new_name(sub=w.rng.random() < 0.5)
        content = w.files.pop(src)
        old_dst = w.files.pop(dst, None)
        w.uncertain[src] = [content, None]
        w.uncertain[dst] = [content, old_dst]
        os.rename(self._path(src), self._path(dst))
        del w.uncertain[src]
        del w.uncertain[dst]
        w.files[dst] = content

    def _op_unlink(self, w: _Worker) -> None:
        if not w.files:
            return
        rel = self._pick(w)
        content = w.files.pop(rel)
        w.uncertain[rel] = [content, None]
        os.unlink(self._path(rel))
        del w.uncertain[rel]

    def _op_resolve(self, w: _Worker) -> None:
        """Settle an uncertain path by reading it back: its content must be one it may have."""
        rel = w.rng.choice(sorted(w.uncertain))
        self._resolve(w, rel)

    def _resolve(self, w: _Worker, rel: str) -> None:
        candidates = w.uncertain[rel]
        try:
            with open(self._path(rel), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            del w.uncertain[rel]
            if None not in candidates:
                with self._lock:
                    self.report.lost_files += 1
                self._detail(f"{rel} is gone but an operation that failed may not have removed it")
            return
        digest = sha256(data)
        for c in candidates:
            if c is not None and c.size == len(data) and c.sha256 == digest:
                del w.uncertain[rel]
                w.files[rel] = c
                return
        # Not a content it may have: wrong bytes (compared with the closest candidate).
        want = max((c for c in candidates if c is not None), key=lambda c: c.size == len(data), default=Content())
        self._compare(f"read back {rel} (after a failed operation)", data, want.data())
        os.unlink(self._path(rel))  # start afresh from a known state
        del w.uncertain[rel]

    def _compare(self, what: str, got: bytes, want: bytes) -> None:
        wrong = differing_bytes(got, want)
        if wrong:
            with self._lock:
                self.report.wrong_bytes += wrong
                self.report.wrong_reads += 1
            self._detail(f"{what}: {wrong} wrong bytes (got {len(got)}, expected {len(want)})")

    # --- the final check -------------------------------------------------------------------------

    def verify(self, *, attempts: int = 3) -> Report:
        """Settle uncertain paths, then check every file through the mount and from the endpoint,
        and the bucket's keys against the model. Runs in a watched thread (a hang is reported)."""
        if self.report.hangs:
            return self.report
        checker = _Worker(-1, self.config.seed)
        checker.thread = threading.Thread(target=self._verify, args=(checker, attempts), name="workload-verify",
                                          daemon=True)
        checker.thread.start()
        self._supervise([checker])
        return self.report

    def _verify(self, checker: _Worker, attempts: int) -> None:
        try:
            self._verify_all(checker, attempts)
        except Exception as exc:  # noqa: BLE001 - reported, not lost with the thread
            self.report.verify_errors += 1
            self._detail(f"verification stopped: {type(exc).__name__}: {exc}")

    def _verify_all(self, checker: _Worker, attempts: int) -> None:
        for _ in range(attempts):
            for w in self.workers:
                for rel in sorted(w.uncertain):
                    self._watched(checker, f"resolve {rel}", lambda: self._resolve_quietly(w, rel))
        s3 = self.endpoint()
        expected: dict[str, Content] = {}
        maybe: dict[str, list[Content | None]] = {}
        for w in self.workers:
            expected.update({self.key_prefix + p: c for p, c in (*w.files.items(), *w.fixed.items())})
            maybe.update({self.key_prefix + p: c for p, c in w.uncertain.items()})
            for rel, content in sorted((*w.files.items(), *w.fixed.items())):
                self._watched(checker, f"verify {rel}", lambda: self._verify_file(rel, content))
        # What is really stored, straight from the endpoint.
        stored: dict[str, int] = {}
        token = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.key_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = s3.list_objects_v2(**kwargs)
            stored.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                break
        for key, content in sorted(expected.items()):
            if key not in stored:
                self.report.lost_files += 1
                self._detail(f"{key} is not in the bucket")
                continue
            body = s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            self._compare(f"endpoint GET {key}", body, content.data() if sha256(body) != content.sha256 else body)
            self.report.verified_bytes += len(body)
        for key, candidates in sorted(maybe.items()):
            if key not in stored:
                if None not in candidates:
                    self.report.lost_files += 1
                    self._detail(f"{key} (uncertain) is not in the bucket")
                continue
            digest = sha256(s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
            if not any(c is not None and c.sha256 == digest for c in candidates):
                self.report.wrong_reads += 1
                self.report.wrong_bytes += stored[key] or 1
                self._detail(f"{key} (uncertain) holds none of the contents it may have")
        extra = sorted(k for k in stored if k not in expected and k not in maybe)
        self.report.unexpected_keys += len(extra)
        for key in extra[:5]:
            self._detail(f"{key} is in the bucket but no operation left it there")

    def _watched(self, checker: _Worker, what: str, fn: Callable[[], None]) -> None:
        checker.current = (what, time.monotonic())
        try:
            fn()
        finally:
            checker.current = None

    def _resolve_quietly(self, w: _Worker, rel: str) -> None:
        try:
            self._resolve(w, rel)
        except OSError as exc:
            self._detail(f"verify: {rel} still unreadable: {os.strerror(exc.errno or 0)}")

    def _verify_file(self, rel: str, content: Content) -> None:
        try:
            with open(self._path(rel), "rb") as f:
                data = f.read()
        except OSError as exc:
            with self._lock:
                self.report.failures.setdefault("verify", Counter())[errno.errorcode.get(exc.errno or 0, "?")] += 1
            self._detail(f"verify {rel}: {exc}")
            return
        self._compare(f"verify read {rel}", data, content.data() if sha256(data) != content.sha256 else data)
        self.report.verified_files += 1

    def files(self) -> Iterator[tuple[str, Content]]:
        """Every file the model is certain of: (key, content)."""
        for w in self.workers:
            for rel, content in w.files.items():
                yield self.key_prefix + rel, content


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    """pread until ``length`` bytes or the end of the file (FUSE may answer short)."""
    out = bytearray()
    while len(out) < length:
        chunk = os.pread(fd, length - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _raise(exc: OSError) -> None:
    raise exc


# --- figures ------------------------------------------------------------------------------------

RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"  # gitignored
SUITE_RESULTS = RESULTS_DIR / "reliability-suite.json"  # the last run of tests/reliability
SOAK_RESULTS = RESULTS_DIR / "reliability.json"  # the last ./dev soak


def record_figures(path: Path, scenario: str, figures: dict[str, Any], **meta: Any) -> None:
    """Merge one scenario's figures into a results file (other scenarios' figures are kept), so
    docs/RELIABILITY.md can quote the last run of each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    data.setdefault("scenarios", {})[scenario] = {**figures, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data.update(meta)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def mount_stats(mountpoint: Path) -> dict[str, Any]:
    """The daemon's live counters (``s3xfs stats --json``), as an operator would read them."""
    result = subprocess.run([sys.executable, "-m", "s3xfs.cli", "stats", str(mountpoint), "--json"],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"s3xfs stats {mountpoint} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def time_to_first_write(directory: Path, limit: float) -> float:
    """Seconds until a new file can be written through the mount again (a PUT must succeed: no
    cache can answer for it), polled from the moment the endpoint is back."""
    directory.mkdir(exist_ok=True)
    began = time.monotonic()
    n = 0
    while True:
        n += 1
        try:
            (directory / f"probe-{n}").write_bytes(b"back")
            return time.monotonic() - began
        except OSError:
            if time.monotonic() - began > limit:
                raise TimeoutError(f"no write succeeded within {limit:.0f} s of the endpoint's return") from None
            time.sleep(0.1)
