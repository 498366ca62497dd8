"""Read-ahead for open files: sequential detection, a growing window of parallel ranged GETs, and one
memory budget that every read buffer of the mount draws from.

One :class:`Prefetcher` serves one open file handle of one immutable object version (key + ETag):
every GET is pinned with ``if_match=etag``. It keeps two kinds of buffers, both :class:`_Buffer`
(a byte range; then its bytes, or the error its GET raised):

* **the stream** (``_segs``): read-ahead for a sequential reader. Its segments are contiguous and
  cover ``[_s_start, _s_end)``. Read-ahead fills ``[_pos, _pos + _window)``; each GET is
  ``min(window, part_size)`` long, aligned to that size (cut short where other handles' reads
  begin, below), and never crosses a ``part_size`` boundary of the object, so once the window has
  grown to ``part_size`` every GET is exactly one aligned part. The window starts at
  ``initial_window`` and doubles (up to ``max_window``) each time the reader passes a segment.
  Segments the reader has passed by ``behind`` (below) are dropped and their budget released, so
  a stream holds about ``window + part_size`` bytes, plus up to ``REORDER_BLOCKS`` blocks behind
  the reader.
* **blocks** (``_blocks``, an LRU of ``max_blocks``): ``block_size``-aligned buffers fetched on
  demand for random reads, so the kernel's 128 KiB reads inside one block are served from memory.

A read is *sequential* if it starts inside the stream or within ``[_pos - behind, _pos + window]``,
``behind`` being the window but at least one and at most ``REORDER_BLOCKS`` blocks (the kernel has
several requests of a file in flight, and trio runs them in any order); a sequential read the
read-ahead has not reached (budget exhausted, ``max_parallel`` reached, a read larger than the
window) extends the stream with block-sized *demand* segments. Anything else is *random*: the stream is dropped
(``_streaming`` off), the window goes back to ``initial_window``, and only the blocks covering the
request are fetched. The next sequential read restarts the stream after the blocks that already
cover it.

Handles of one version (``SharedReads``): every prefetcher of the same file (inode) and ETag joins
one group, its *peers*. fio with ``--numjobs``, or data loaders sharing a shard, open one file
several times; without this, each handle's read-ahead ran past the end of its own stretch into the
next handle's (a window of up to 64 MiB each) and fetched again what another handle already held.
Each prefetcher has a *run*: where its current sequential access began (``_run_lo``: the block of
the random read that started it, else 0). A group also remembers what closed members read
(``done``: their runs, up to where their readers got; the page cache has those bytes) and the
arrived read-ahead they left ahead of their readers (``kept``, with its budget). Then:

* a read this handle has not buffered is served from a peer's buffer (arrived, or pending: the read
  waits on it and pins it like its own) or a kept one before any GET is started for it; a peer's
  buffer that fails or is cancelled (the peer closed) is not this read's error: the range is then
  fetched as usual. A kept buffer is released once a read has taken its last byte;
* read-ahead stops (the GET is cut there) at the start of any run, live or done, that begins at or
  ahead of this reader's position, past this one's own start: that stretch is read, or being read
  and read ahead, by another handle. It also stops before the buffers of a live peer whose run
  began at or before this one's (two readers of the same stretch: the one behind reads what the
  one ahead fetched, and only fetches the gap between them), before any peer's blocks, and before
  kept buffers;
* a reader that goes on past the start of such a run adopts it and restarts from
  ``initial_window``, as a reader starting there would: one stray read past the end of its
  stretch fetches little, and a reader that keeps going grows its window again.

Buffers keep their owner: the budget, the index and the fetch task are the owner's alone (kept
buffers the group's, which the budget can reclaim); a peer's read only pins a buffer while it waits,
and gives it back through the owner's ``_unpinned``.

Budget: read-ahead reserves with :meth:`MemoryBudget.try_acquire` before it is scheduled and is
skipped when that fails (try_acquire also fails while any demand fetch is queued, so read-ahead
never overtakes one). Demand fetches wait in :meth:`MemoryBudget.acquire`; while they wait, the
budget asks every open prefetcher to :meth:`Prefetcher.reclaim` buffers no read is waiting on, so
memory held by an idle reader's read-ahead can never starve another file's demand read.

Concurrency invariants. Trio runs one task at a time, so these hold at every ``await`` (whenever
another task can run). ``read_buffered``, ``_note_read``, ``_pump``, ``_extend``, ``_new_block``,
``_discard``, ``reclaim`` and ``_shutdown`` are synchronous and run start to finish; the only awaits
are ``read``'s wait on one buffer's event, ``_fetch``'s budget acquire and GET, and ``close``.

1. ``_segs`` is sorted by ``start``, contiguous and non-overlapping, covers exactly
   ``[_s_start, _s_end)`` (``_s_start == _s_end`` when empty), and ``_seg_starts[i] ==
   _segs[i].start``. Nothing is appended unless ``_streaming``. Every buffer lies inside
   ``[0, size)`` and inside one ``part_size``-aligned part (blocks: one ``block_size``-aligned
   block), so no GET reaches past the end of the object and a zero-size object issues none.
2. ``_blocks[i]`` covers ``[i * block_size, min((i + 1) * block_size, size))``; at most
   ``max_blocks`` of them are unpinned (more exist only while reads wait on them).
3. A buffer is *indexed* (in ``_segs`` or ``_blocks``, never both) until it is *dropped*
   (``dropped`` set, out of the index, never indexed again). Its contents go from pending
   (``data`` and ``error`` None, ``event`` unset) to exactly one of arrived (``data`` is exactly
   ``end - start`` bytes of version ``etag``) or failed (``error`` set); then ``event`` is set and
   they never change again. All buffers hold bytes of one version, so a read that joins several
   can never mix two versions of the object.
4. ``holders`` counts the :meth:`Prefetcher.read` calls waiting on a buffer. A pinned buffer
   (``holders > 0``) is never cancelled, reclaimed or released; whoever unpins the last holder of
   a dropped buffer releases it. Each read pins at most one buffer at a time, and every unpinned
   reserved byte is reclaimable, which rules out a deadlock with the budget: every reserved byte
   is either reclaimable, held by a fetch that will finish, or pinned by a read that becomes
   runnable when its buffer arrives.
5. ``_inflight`` is the set of indexed buffers whose fetch task has not finished. Read-ahead adds
   to it only while it has fewer than ``max_parallel`` members; demand fetches are never refused
   but count towards it. A dropped pending buffer is cancelled unless pinned.
6. Budget accounting: ``buf.reserved`` is what a buffer holds from the budget, ``_held`` is the set
   of buffers with ``reserved > 0``, and the sum over ``_held`` is exactly this prefetcher's share
   of ``budget.used`` but for grants in transit (an ``acquire`` the budget has granted whose fetch
   task has not resumed yet to record it on its buffer). Read-ahead segments reserve synchronously *before* they are indexed; demand
   buffers (blocks, ``_extend``'s segments) are indexed at once, so concurrent readers share them,
   and reserve inside their fetch task before the GET. Failed and cancelled buffers hold nothing;
   ``_release`` is the one place that gives bytes back, and it is idempotent. When :meth:`close`
   returns, ``_held`` is empty and no fetch task is left.
7. A *hole* is a stream segment whose memory :meth:`reclaim` gave away: failed, ``reported`` and
   holding nothing, so lookups skip it and the range is fetched again on demand, as a block.
8. ``_cur`` (the last buffer that served a hit) is None or an indexed, arrived buffer.
9. ``_stale`` (the PreconditionFailed of a GET: the object changed) and ``_closed`` are sticky;
   either sets ``_dead``, after which nothing is scheduled, ``read_buffered`` returns None and
   :meth:`read` raises (PreconditionFailed, or trio.ClosedResourceError after close).
10. ``_peers`` is the member list of this version's group (every open prefetcher of it, this one
   included, until ``_shutdown`` leaves it), or ``[self]`` without a group. Only the owner indexes,
   drops, reserves or releases a buffer; peers read ``data`` and pin pending buffers (invariant 4).
   At ``_shutdown`` the arrived stream segments ahead of the reader move, with their reservations,
   to the group's ``kept`` (sorted, non-overlapping, all arrived); the group releases them when a
   read has used them, when the budget reclaims them, or when its last member leaves.

Errors: a failed GET is remembered on its buffer; the read(s) waiting for it, or the next read that
needs it, raise it (a fresh copy each); then the buffer is marked ``reported`` and the next read of
that range fetches it again. Fetch tasks catch every Exception, so a failed read-ahead never
reaches the nursery.
"""

from __future__ import annotations

import copy
import logging
import weakref
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Protocol

import trio

from ..client.errors import ClientError, PreconditionFailed

__all__ = ["MemoryBudget", "Prefetcher", "RangeSource", "Reclaimable", "SharedReads"]

log = logging.getLogger(__name__)

# How far behind the reader (in blocks, and at most the window) a read still counts as part of
# its stream: FUSE keeps up to 12 requests in flight (max_background), 1 MiB each here.
REORDER_BLOCKS = 8

STAT_KEYS = ("parts_fetched", "bytes_fetched", "hits", "misses", "sequential_reads", "random_reads", "in_block_reads",
             "readahead_skipped", "reclaimed_bytes", "shared_reads")


class RangeSource(Protocol):
    """Where a prefetcher's bytes come from: the client, or the disk cache in front of it."""

    async def get_range(self, key: str, start: int, length: int, *,
                        if_match: str | None = None) -> bytes | bytearray:
        """Bytes [start, start+length) of the version ``if_match`` of ``key``."""


class Reclaimable(Protocol):
    def reclaim(self, need: int) -> int:
        """Synchronously drop unpinned buffers worth about ``need`` bytes; return the bytes released."""


class _Waiter:
    __slots__ = ("n", "event", "granted")

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = trio.Event()
        self.granted = False


class MemoryBudget:
    """All read buffers of the mount draw from one budget (bytes).

    ``acquire`` waits in FIFO order; ``try_acquire`` never jumps that queue (it fails while anyone
    waits), which is how read-ahead yields to demand reads. While a waiter cannot be served, the
    budget asks the registered :class:`Reclaimable` objects (the open prefetchers) to drop buffers
    nobody is waiting on. Requests larger than ``limit`` are clamped to ``limit`` in ``acquire``
    and ``release`` alike (pair them with the same ``n``), so a huge request cannot deadlock.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("the memory budget must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiters: deque[_Waiter] = deque()
        self._reclaimers: weakref.WeakSet[Reclaimable] = weakref.WeakSet()
        self._servicing = False

    @property
    def free(self) -> int:
        return self.limit - self.used

    @property
    def waiting(self) -> int:
        """How many ``acquire`` calls are queued."""
        return len(self._waiters)

    def register(self, owner: Reclaimable) -> None:
        self._reclaimers.add(owner)

    def unregister(self, owner: Reclaimable) -> None:
        self._reclaimers.discard(owner)

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` bytes now if they are free and nobody is waiting; never waits, never clamps."""
        if n < 0:
            raise ValueError("cannot acquire a negative amount")
        if self._waiters or self.used + n > self.limit:
            return False
        self._take(n)
        return True

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` bytes (at most ``limit``) are free, then take them. Cancellation-safe:
        a cancelled acquire holds nothing."""
        n = self._clamp(n)
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._waiters and self.used + n <= self.limit:
            self._take(n)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waiter = _Waiter(n)
        self._waiters.append(waiter)
        self._service(reclaim=True)
        if waiter.granted:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release(n)
            else:
                self._waiters.remove(waiter)
                self._service(reclaim=False)
            raise

    def release(self, n: int) -> None:
        n = self._clamp(n)
        if n > self.used:
            raise RuntimeError(f"released {n} bytes but only {self.used} are in use")
        self.used -= n
        if self._waiters:
            self._service(reclaim=False)

    def notify(self) -> None:
        """Something may have become reclaimable: serve waiters, reclaiming for them if needed."""
        if self._waiters:
            self._service(reclaim=True)

    def _clamp(self, n: int) -> int:
        if n < 0:
            raise ValueError("cannot acquire a negative amount")
        return n if n <= self.limit else self.limit

    def _take(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def _service(self, *, reclaim: bool) -> None:
        # Re-entered when a reclaimer releases bytes: the outer loop re-checks, so just return.
        # Reclaiming only happens from acquire/notify (clean points of the callers), never from
        # release, which prefetchers call in the middle of updating their own state.
        if self._servicing:
            return
        self._servicing = True
        try:
            waiters = self._waiters
            while waiters:
                head = waiters[0]
                if self.used + head.n > self.limit:
                    if not reclaim:
                        break
                    for owner in list(self._reclaimers):
                        owner.reclaim(self.used + head.n - self.limit)
                        if self.used + head.n <= self.limit:
                            break
                    if self.used + head.n > self.limit:
                        break
                waiters.popleft()
                self._take(head.n)
                head.granted = True
                head.event.set()
        finally:
            self._servicing = False


class SharedReads:
    """The open prefetchers of each object version, so that handles of one file share their reads
    (the module docstring says how). One per mount; a version is forgotten with its last member."""

    def __init__(self) -> None:
        self._versions: dict[Hashable, _Version] = {}

    def join(self, version: Hashable, member: Prefetcher, budget: MemoryBudget) -> _Version:
        """Add ``member`` to the group of ``version``; that group."""
        group = self._versions.get(version)
        if group is None:
            group = self._versions[version] = _Version(budget)
        group.members.append(member)
        return group

    def leave(self, version: Hashable, member: Prefetcher, run: tuple[int, int] | None,
              left: list[_Buffer]) -> None:
        """``member`` closed, after reading ``run`` sequentially (None: it was not streaming) and
        leaving ``left``: arrived buffers ahead of its reader, whose budget reservations come with
        them. The group keeps both for its other members; the last member to leave releases all."""
        group = self._versions.get(version)
        if group is None or member not in group.members:
            group = _Version(member._budget)  # not a member (cannot happen): just release
        else:
            group.members.remove(member)
        if run is not None and group.members:
            group.remember(*run)
        group.keep(left)
        if not group.members:
            group.clear()
            self._versions.pop(version, None)

    def __len__(self) -> int:
        """How many versions have open prefetchers (tests: groups do not leak)."""
        return len(self._versions)


class _Version:
    """One object version's open prefetchers (``members``); what members that closed read
    (``done``: their sequential runs, merged, sorted: the kernel's page cache has those bytes,
    and read-ahead of the others stops at them as at a live peer's run); and the arrived buffers
    they left ahead of their readers (``kept``: sorted, non-overlapping, each holding its
    reservation), served to the others until a read consumes them, the budget reclaims them, or
    the last member leaves."""

    MAX_DONE = 64  # runs remembered per version (the oldest are forgotten: a bound, not a rule)

    def __init__(self, budget: MemoryBudget) -> None:
        self.members: list[Prefetcher] = []
        self.done: list[tuple[int, int]] = []
        self.kept: list[_Buffer] = []
        self.kept_starts: list[int] = []
        self.budget = budget
        self.registered = False

    def remember(self, lo: int, hi: int) -> None:
        """A closed member read [lo, hi) sequentially."""
        if lo >= hi:
            return
        merged: list[tuple[int, int]] = []
        for a, b in self.done:
            if b < lo or a > hi:
                merged.append((a, b))
            else:
                lo, hi = min(a, lo), max(b, hi)
        merged.append((lo, hi))
        merged.sort()
        self.done = merged[-self.MAX_DONE:]

    def keep(self, bufs: list[_Buffer]) -> None:
        for buf in bufs:
            i = bisect_right(self.kept_starts, buf.start)
            overlaps = ((i > 0 and self.kept[i - 1].end > buf.start)
                        or (i < len(self.kept) and self.kept[i].start < buf.end))
            if overlaps or not self.members:
                self._release(buf)
                continue
            self.kept.insert(i, buf)
            self.kept_starts.insert(i, buf.start)
        if self.kept and not self.registered:
            self.budget.register(self)
            self.registered = True

    def find(self, p: int) -> _Buffer | None:
        """The kept buffer covering ``p``, if any."""
        i = bisect_right(self.kept_starts, p) - 1
        if i >= 0 and p < self.kept[i].end:
            return self.kept[i]
        return None

    def next_start(self, p: int) -> int | None:
        """Where the first kept buffer at or after ``p`` starts (``p`` itself if one covers it)."""
        i = bisect_right(self.kept_starts, p) - 1
        if i >= 0 and p < self.kept[i].end:
            return p
        return self.kept_starts[i + 1] if i + 1 < len(self.kept) else None

    def consumed(self, buf: _Buffer) -> None:
        """A member's read took the last byte of ``buf``: the page cache holds it now."""
        i = bisect_right(self.kept_starts, buf.start) - 1
        if i >= 0 and self.kept[i] is buf:
            del self.kept[i]
            del self.kept_starts[i]
            self._release(buf)

    def reclaim(self, need: int) -> int:
        """For the budget: give back kept buffers (the furthest first) worth ``need`` bytes."""
        freed = 0
        while self.kept and freed < need:
            buf = self.kept.pop()
            self.kept_starts.pop()
            freed += buf.reserved
            self._release(buf)
        return freed

    def clear(self) -> None:
        for buf in self.kept:
            self._release(buf)
        self.kept.clear()
        self.kept_starts.clear()
        if self.registered:
            self.budget.unregister(self)
            self.registered = False

    def _release(self, buf: _Buffer) -> None:
        buf.dropped = True
        n, buf.reserved = buf.reserved, 0
        if n:
            self.budget.release(n)

    @property
    def held(self) -> int:
        return sum(buf.reserved for buf in self.kept)


class _Buffer:
    """One ranged GET's worth of an object: pending, then arrived (data) or failed (error)."""

    __slots__ = ("start", "end", "data", "error", "event", "scope", "holders", "reserved", "dropped", "reported")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.event = trio.Event()
        self.scope = trio.CancelScope()
        self.holders = 0
        self.reserved = 0
        self.dropped = False
        self.reported = False

    def __repr__(self) -> str:
        state = "arrived" if self.data is not None else f"failed:{type(self.error).__name__}" if self.error else "pending"
        return f"<_Buffer [{self.start}, {self.end}) {state} holders={self.holders} reserved={self.reserved}>"


class _Reclaimed(Exception):
    """Marks a hole: a stream segment whose memory was given to a demand read elsewhere."""


def _hole(start: int, end: int) -> _Buffer:
    """A placeholder for a reclaimed stream segment: failed and already reported, so lookups skip
    it (the range is fetched again on demand) and it holds no budget."""
    buf = _Buffer(start, end)
    buf.error = _Reclaimed()
    buf.reported = True
    buf.dropped = True
    buf.event.set()
    return buf


def _fresh(exc: BaseException) -> BaseException:
    """A copy of a remembered error to raise, so concurrent raisers don't share one traceback."""
    try:
        error = copy.copy(exc)
    except Exception:
        error = exc
    error.__traceback__ = None
    return error


class Prefetcher:
    """Read-ahead for ONE open file handle of an immutable object version (key + ETag).

    Call :meth:`start` once (it runs the prefetcher's task in the filesystem's nursery), serve
    reads with :meth:`read_buffered` (synchronous, None on a miss) and then :meth:`read`, and
    :meth:`close` when the handle is released. With ``shared``, it joins the group of
    ``(identity, etag)`` (``identity`` names the file, e.g. its inode; the key by default) and
    shares buffers with the other handles of that version.
    """

    def __init__(self, client: RangeSource, key: str, size: int, etag: str, budget: MemoryBudget, *,
                 part_size: int = 8 << 20, block_size: int = 1 << 20, initial_window: int = 1 << 20,
                 max_window: int = 64 << 20, max_parallel: int = 8, max_blocks: int = 8,
                 shared: SharedReads | None = None, identity: Hashable | None = None) -> None:
        if size < 0:
            raise ValueError("object size must not be negative")
        if min(part_size, block_size, initial_window, max_parallel, max_blocks) <= 0:
            raise ValueError("sizes and counts must be positive")
        if initial_window > max_window:
            raise ValueError("initial_window must not exceed max_window")
        self.key = key
        self.size = size
        self.etag = etag
        self._client = client
        self._budget = budget
        self._part_size = part_size
        self._block_size = block_size
        self._initial_window = initial_window
        self._max_window = max_window
        self._max_parallel = max_parallel
        self._max_blocks = max_blocks

        self._segs: list[_Buffer] = []
        self._seg_starts: list[int] = []
        self._s_start = 0
        self._s_end = 0
        self._blocks: OrderedDict[int, _Buffer] = OrderedDict()
        self._inflight: set[_Buffer] = set()
        self._held: set[_Buffer] = set()
        self._cur: _Buffer | None = None
        self._pos = 0
        self._window = initial_window
        self._streaming = False  # a sequential read started the stream; a random one stops it
        # The aligned blocks the last random read fetched: the kernel splits a 256 KiB read into
        # 128 KiB requests, and the second half must not look like the start of a stream.
        self._block_zone = (0, 0)
        self._run_lo = 0  # where the current sequential run began (what peers leave to this reader)
        self._grown_at = 0  # the end of the last segment whose passing grew the window

        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None
        self._closed = False
        self._stale: BaseException | None = None
        self._dead = False
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._shared = shared
        self._version: Hashable = (key if identity is None else identity, etag)
        self._group = shared.join(self._version, self, budget) if shared is not None else None
        self._peers: list[Prefetcher] = self._group.members if self._group is not None else [self]
        budget.register(self)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Run this prefetcher's task (an inner nursery for its GETs, under its own cancel scope)
        in ``nursery``, the filesystem's long-lived one."""
        if self._done is not None or self._closed:
            raise RuntimeError("a Prefetcher is started once")
        await nursery.start(self._run)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            self._shutdown()  # also when the filesystem's nursery is cancelled without close()
            self._done.set()

    async def close(self) -> None:
        """Cancel every fetch, release every byte of budget, and return once all tasks are done.
        Idempotent."""
        self._shutdown()
        if self._done is not None:
            await self._done.wait()
        else:
            await trio.lowlevel.checkpoint()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = self._dead = True
        self._budget.unregister(self)
        left: list[_Buffer] = []
        run = (self._run_lo, self._pos) if self._streaming and self._stale is None else None
        if self._shared is not None and self._stale is None and len(self._peers) > 1:
            # Read-ahead this reader did not get to: its peers may (fio's jobs close in turn).
            left = [buf for buf in self._segs if buf.data is not None and buf.reserved and buf.end > self._pos]
        for buf in left:
            self._held.discard(buf)  # the reservation goes with the buffer to the group
            self._inflight.discard(buf)
        kept = set(map(id, left))
        for buf in self._segs:
            if id(buf) not in kept:
                self._force_drop(buf)
        if self._shared is not None:
            self._shared.leave(self._version, self, run, left)
        for buf in self._blocks.values():
            self._force_drop(buf)
        self._segs.clear()
        self._seg_starts.clear()
        self._s_start = self._s_end = 0
        self._blocks.clear()
        self._inflight.clear()
        self._cur = None
        for buf in list(self._held):  # dropped earlier but still pinned by a waiting read
            self._release(buf)
            if buf.data is None and buf.error is None:
                buf.scope.cancel()
        if self._scope is not None:
            self._scope.cancel()

    @property
    def held(self) -> int:
        """Bytes this prefetcher holds from the budget."""
        return sum(buf.reserved for buf in self._held)

    def check_invariants(self) -> None:
        """Assert the invariants of the module docstring that can be checked from outside (tests)."""
        segs, bs = self._segs, self._block_size
        assert self._seg_starts == [buf.start for buf in segs]
        if segs:
            assert self._streaming and not self._dead
            assert segs[0].start == self._s_start and segs[-1].end == self._s_end
        else:
            assert self._s_start == self._s_end
        for a, b in zip(segs, segs[1:]):
            assert a.end == b.start
        for buf in segs:
            assert 0 <= buf.start < buf.end <= self.size
            assert buf.start // self._part_size == (buf.end - 1) // self._part_size
        assert sum(1 for buf in self._blocks.values() if not buf.holders) <= self._max_blocks
        for i, buf in self._blocks.items():
            assert (buf.start, buf.end) == (i * bs, min((i + 1) * bs, self.size))
        indexed = [*segs, *self._blocks.values()]
        for buf in indexed:
            assert not buf.dropped or buf.reported  # only holes are dropped and still indexed
            assert buf.data is None or len(buf.data) == buf.end - buf.start
            assert (buf.data is None and buf.error is None) != buf.event.is_set()
            if buf.reserved:
                assert buf.data is not None or buf.error is None  # failed buffers hold nothing
        assert self._inflight <= {buf for buf in indexed if buf.data is None and buf.error is None}
        assert all(buf.reserved > 0 for buf in self._held)
        assert all(buf in self._held for buf in indexed if buf.reserved)
        assert self._cur is None or (self._cur in indexed and self._cur.data is not None)
        assert (self in self._peers) == (not self._closed or self._group is None)
        group = self._group
        if group is not None:
            assert group.kept_starts == [buf.start for buf in group.kept]
            assert all(a.end <= b.start for a, b in zip(group.kept, group.kept[1:]))
            assert all(buf.data is not None and buf.reserved for buf in group.kept)
            assert not group.kept or group.members
        assert all(peer.etag == self.etag and peer.size == self.size for peer in self._peers)
        if self._closed:
            assert not self._held and not indexed

    @property
    def window(self) -> int:
        """The current read-ahead window (bytes)."""
        return self._window

    @property
    def closed(self) -> bool:
        return self._closed

    # --- reads -------------------------------------------------------------------------------

    def read_buffered(self, offset: int, size: int) -> bytes | memoryview | None:
        """The hot path: the bytes of ``[offset, offset + size)`` (cut at the end of the object) if
        they have all arrived already, else None. Never awaits; on a hit it also advances the
        sequential state and schedules more read-ahead, so the stream keeps flowing."""
        if self._dead:
            return None
        end = offset + size
        if end > self.size:
            end = self.size
        if offset >= end:
            return b""
        buf = self._cur
        if buf is None or not buf.start <= offset < buf.end:
            buf = self._lookup(offset)
            if buf is None or buf.data is None:
                return self._read_shared(offset, end) if self._sharing() else None
        if end <= buf.end:
            start = buf.start
            data = buf.data
            assert data is not None
            result = memoryview(data)[offset - start:end - start]  # no copy: pyfuse3 takes any buffer
        else:
            nxt = self._lookup(buf.end)
            if nxt is None or nxt.data is None or end > nxt.end:
                return self._read_shared(offset, end) if self._sharing() else None
            assert buf.data is not None
            result = b"".join((memoryview(buf.data)[offset - buf.start:],
                               memoryview(nxt.data)[buf.end - nxt.start:end - nxt.start]))
            buf = nxt
        self._cur = buf
        self.stats["hits"] += 1
        self._note_read(offset, end)
        return result

    def _sharing(self) -> bool:
        """Whether other handles of this version (open, or closed leaving runs or buffers) count."""
        group = self._group
        return group is not None and (len(group.members) > 1 or bool(group.kept) or bool(group.done))

    def _read_shared(self, offset: int, end: int) -> bytes | memoryview | None:
        """``read_buffered`` for a range this handle has not (all) buffered: its arrived buffers and
        its peers', if together they hold all of [offset, end); else None."""
        pieces: list[memoryview] = []
        used: list[_Buffer] = []
        p = offset
        while p < end:
            buf = self._lookup(p)
            if buf is None or buf.data is None:
                found = self._peer_buffer(p, arrived=True)
                if found is None:
                    return None
                buf = found[1]
                used.append(buf)
            data = buf.data
            assert data is not None
            stop = end if end < buf.end else buf.end
            pieces.append(memoryview(data)[p - buf.start:stop - buf.start])
            p = stop
        for buf in used:
            self._taken(buf, end)
        self.stats["hits"] += 1
        self.stats["shared_reads"] += 1
        self._note_read(offset, end)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _peer_buffer(self, p: int, *, arrived: bool = False) -> tuple[Prefetcher | None, _Buffer] | None:
        """A buffer of another handle covering ``p`` and its owner (None: kept by the group for a
        closed one): an arrived one if any, else (unless ``arrived``) a pending one; never a failed
        one (that range is then this handle's to fetch)."""
        group = self._group
        if group is None:
            return None
        if group.kept:
            buf = group.find(p)
            if buf is not None:
                return None, buf
        pending = None
        for peer in self._peers:
            if peer is self or peer._dead:
                continue
            buf = peer._peek(p)
            if buf is None:
                continue
            if buf.data is not None:
                return peer, buf
            if pending is None and not arrived:
                pending = (peer, buf)
        return pending

    def _taken(self, buf: _Buffer, end: int) -> None:
        """A read of this handle used a peer's ``buf`` up to ``end``: a kept buffer read to its end
        is done with (the kernel's page cache has it now)."""
        if end >= buf.end and self._group is not None and self._group.kept:
            self._group.consumed(buf)

    def _peek(self, p: int) -> _Buffer | None:
        """For a peer: this handle's buffer covering ``p`` if it is pending or arrived (no LRU touch)."""
        if self._s_start <= p < self._s_end:
            buf = self._segs[bisect_right(self._seg_starts, p) - 1]
            if buf.error is None:
                return buf
        buf = self._blocks.get(p // self._block_size)
        if buf is not None and buf.error is None:
            return buf
        return None

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """``min(size, object size - offset)`` bytes at ``offset`` (b'' at or past the end), waiting
        for whatever is in flight. Raises the client's error for a failed GET (PreconditionFailed
        once the object has changed), trio.ClosedResourceError after :meth:`close`."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        if self._dead:
            self._raise_dead()
        end = offset + size
        if end > self.size:
            end = self.size
        if offset >= end:
            await trio.lowlevel.checkpoint()
            return b""
        data = self.read_buffered(offset, size)
        if data is not None:
            return data
        if self._nursery is None:
            raise RuntimeError("Prefetcher.start() has not been called")
        self.stats["misses"] += 1
        if self._note_read(offset, end) and self._s_end < end:
            self._extend(end)  # a sequential read the read-ahead has not reached: grow the stream

        # Start every fetch this read is missing (a bounded number) so they run in parallel; what
        # a peer holds or is fetching is not fetched again.
        shared = self._sharing()
        p, created = offset, 0
        while p < end and created < max(1, self._max_blocks // 2):
            buf = self._lookup(p)
            if buf is None:
                found = self._peer_buffer(p) if shared else None
                if found is None:
                    buf = self._new_block(p)
                    created += 1
                else:
                    buf = found[1]
            p = buf.end

        # Collect, pinning one buffer at a time (invariant 4).
        pieces: list[memoryview] = []
        from_peers = False
        p = offset
        while p < end:
            if self._dead:
                self._raise_dead()
            owner: Prefetcher | None = self
            buf = self._lookup(p)
            if buf is None:
                found = self._peer_buffer(p) if shared else None
                if found is None:
                    buf = self._new_block(p)
                else:
                    owner, buf = found
            if buf.data is None and buf.error is None:
                assert owner is not None  # kept buffers have all arrived
                buf.holders += 1
                try:
                    await buf.event.wait()
                finally:
                    buf.holders -= 1
                    if not buf.holders:
                        owner._unpinned(buf)
            data = buf.data
            if data is None and owner is not self:
                continue  # the peer's GET failed or was cancelled: not this read's error, fetch it here
            if owner is not self:
                from_peers = True
                self._taken(buf, end)
            if data is None:
                buf.reported = True
                if self._closed:
                    self._raise_dead()
                assert buf.error is not None
                raise _fresh(buf.error)
            stop = end if end < buf.end else buf.end
            pieces.append(memoryview(data)[p - buf.start:stop - buf.start])
            p = stop
        if from_peers:
            self.stats["shared_reads"] += 1
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _raise_dead(self) -> None:
        if self._stale is not None:
            raise _fresh(self._stale)
        raise trio.ClosedResourceError("the prefetcher is closed")

    def _lookup(self, p: int) -> _Buffer | None:
        """The indexed buffer covering ``p`` (stream first, then blocks), pending or not; a failed
        buffer whose error was already reported counts as absent (the range will be refetched)."""
        if self._s_start <= p < self._s_end:
            buf = self._segs[bisect_right(self._seg_starts, p) - 1]
            if not buf.reported:
                return buf
        i = p // self._block_size
        buf = self._blocks.get(i)
        if buf is not None and not buf.reported:
            self._blocks.move_to_end(i)
            return buf
        return None

    # --- access pattern and read-ahead -------------------------------------------------------

    def _note_read(self, offset: int, end: int) -> bool:
        """Classify a read of [offset, end) and move the stream along (synchronous). True if the
        read was sequential: the stream is then active and starts at or before ``offset``, or
        after blocks that cover ``offset``."""
        zone_start, zone_end = self._block_zone
        if not self._streaming and zone_start <= offset and end <= zone_end:
            self.stats["in_block_reads"] += 1  # still inside the blocks a random read fetched
            self._pos = max(self._pos, end)
            return False
        block = self._block_size
        # The kernel has several reads of a file in flight and trio runs them in any order, so a
        # stream's reads arrive shuffled (by a few MiB with several jobs reading one file): a read
        # a little behind is still this stream's (a seek further back restarts it), and a segment
        # is dropped only once the reader is that far past it, so the late read still finds it.
        behind = min(self._window, REORDER_BLOCKS * block)
        if behind < block:
            behind = block
        if self._s_start <= offset < self._s_end or self._pos - behind <= offset <= self._pos + self._window:
            self.stats["sequential_reads"] += 1
            segs = self._segs
            if segs and segs[0].end <= offset:
                self._pass(offset, behind)
            if end > self._pos:
                if self._group is not None and self._sharing():
                    self._follow_runs(self._pos, end)
                self._pos = end
            if not segs:
                # Restart where the stream ended, never behind it (a late read behind is fetched
                # on its own; what lies between was read already).
                at = offset if offset > self._s_end or not self._streaming else self._s_end
                self._s_start = self._s_end = self._restart_point(at)
                self._streaming = True
            self._pump()
            return True
        self.stats["random_reads"] += 1
        self._reset_stream(end)
        self._streaming = False
        self._window = self._initial_window
        self._grown_at = 0
        self._pos = end
        self._block_zone = (offset - offset % block, min(self.size, -(-end // block) * block))
        self._run_lo = self._block_zone[0]  # a later sequential read continues this run
        return False

    def _pass(self, offset: int, behind: int) -> None:
        """The reader is at ``offset``: each segment it passed for the first time doubles the
        window (up to max_window); those it passed by ``behind`` are dropped (until then a late
        read of the stream may still want them)."""
        segs = self._segs
        for buf in segs:
            if buf.end > offset:
                break
            if buf.end > self._grown_at:
                self._grown_at = buf.end
                if self._window < self._max_window:
                    self._window = min(self._window * 2, self._max_window)
        i, done = 0, offset - behind
        while i < len(segs) and segs[i].end <= done:
            self._discard(segs[i])
            i += 1
        if i:
            del segs[:i]
            del self._seg_starts[:i]
            self._s_start = segs[0].start if segs else self._s_end

    def _restart_point(self, offset: int) -> int:
        """Where a new stream begins: after the blocks that already cover ``offset``, or else at
        the block boundary below it."""
        r = offset
        while r < self.size:
            blk = self._blocks.get(r // self._block_size)
            if blk is None or blk.error is not None:
                break
            r = blk.end
        if r == offset:
            r -= r % self._block_size
        return min(r, self.size)

    def _reset_stream(self, at: int) -> None:
        for buf in self._segs:
            self._discard(buf)
        self._segs.clear()
        self._seg_starts.clear()
        self._s_start = self._s_end = at

    def _pump(self) -> None:
        """Schedule read-ahead up to [_pos, _pos + window) within max_parallel and the budget."""
        nursery = self._nursery
        if nursery is None or self._dead or not self._streaming:
            return
        target = self._pos + self._window
        if target > self.size:
            target = self.size
        s = self._s_end
        if s >= target:
            return
        limit = self.size  # a hard stop: the last GET is cut there, unlike at target
        if self._sharing() and len(self._inflight) < self._max_parallel:
            limit = self._peer_limit(s)
            if target > limit:
                target = limit
            if s >= target:
                return
        part = self._part_size
        inflight = self._inflight
        while s < target and len(inflight) < self._max_parallel:
            chunk = self._window if self._window < part else part
            e = (s // chunk + 1) * chunk
            part_end = (s // part + 1) * part
            if part_end < e:
                e = part_end
            if e > limit:
                e = limit
            if not self._budget.try_acquire(e - s):
                self.stats["readahead_skipped"] += 1
                break
            buf = _Buffer(s, e)
            buf.reserved = e - s
            self._held.add(buf)
            self._segs.append(buf)
            self._seg_starts.append(s)
            inflight.add(buf)
            nursery.start_soon(self._fetch, buf, False)
            s = e
        self._s_end = s

    def _run_starts(self) -> list[int]:
        """Where the runs of live streaming peers, and those closed peers read, began."""
        group = self._group
        assert group is not None
        starts = [peer._run_lo for peer in group.members if peer is not self and peer._streaming and not peer._dead]
        starts.extend(lo for lo, _ in group.done)
        return starts

    def _follow_runs(self, before: int, after: int) -> None:
        """The reader moves from ``before`` to ``after``. If it goes on into a run that began ahead
        of it, it follows that run from a small window, as a reader starting there would: a stray
        read past the end of its stretch fetches little, and a reader that goes on grows again.
        (A run that began behind this reader is a follower's: nothing to do here.)"""
        for lo in self._run_starts():
            if self._run_lo < lo and before <= lo < after:
                self._run_lo = lo
                self._window = self._initial_window

    def _peer_limit(self, s: int) -> int:
        """Where read-ahead from ``s`` must stop to leave peers their part (the rules are in the
        module docstring): at the start of a run (a live peer's, or one a closed peer read) that
        began ahead of this reader; before the buffers of a live peer whose run began at or before
        this one's, before the blocks of any peer, and before buffers closed peers left."""
        group = self._group
        assert group is not None
        target = self.size
        for lo in self._run_starts():
            if self._run_lo < lo and self._pos <= lo < target:
                target = lo if lo > s else s  # read, or being read (and read ahead), from there on
        for peer in group.members:
            if peer is self or peer._dead:
                continue
            if peer._streaming and peer._run_lo <= self._run_lo:
                lo, hi = peer._s_start, peer._s_end  # reading the same stretch: its buffers are its
                if lo < hi and s < hi and lo < target:
                    target = lo if lo > s else s
            for buf in peer._blocks.values():  # random reads' blocks: fetched or being fetched
                if buf.error is None and buf.end > s and buf.start < target:
                    target = buf.start if buf.start > s else s
        if group.kept:
            kept = group.next_start(s)
            if kept is not None and kept < target:
                target = kept
        return target

    def _extend(self, end: int) -> None:
        """Append demand segments (block-sized and -aligned, never across a part boundary) to the
        stream until it reaches ``end``, or a peer's buffer (the read uses that one): what a
        sequential read needs is not subject to max_parallel, and its fetches wait for budget
        instead of being skipped."""
        assert self._nursery is not None
        s, bs, part = self._s_end, self._block_size, self._part_size
        shared = self._sharing()
        while s < end:
            if shared and self._peer_buffer(s) is not None:
                break
            e = min((s // bs + 1) * bs, (s // part + 1) * part, self.size)
            buf = _Buffer(s, e)
            self._segs.append(buf)
            self._seg_starts.append(s)
            self._inflight.add(buf)
            self._nursery.start_soon(self._fetch, buf, True)
            s = e
        self._s_end = s

    def _new_block(self, p: int) -> _Buffer:
        """Index a demand block covering ``p`` and start its fetch (which waits for budget)."""
        assert self._nursery is not None
        i = p // self._block_size
        start = i * self._block_size
        old = self._blocks.pop(i, None)
        if old is not None:
            self._discard(old)
        buf = _Buffer(start, min(start + self._block_size, self.size))
        self._blocks[i] = buf
        self._inflight.add(buf)
        self._nursery.start_soon(self._fetch, buf, True)
        self._evict(buf)
        return buf

    def _evict(self, keep: _Buffer | None) -> None:
        """Drop least recently used unpinned blocks (but ``keep``) while there are too many."""
        while len(self._blocks) > self._max_blocks:
            victim = next((j for j, b in self._blocks.items() if not b.holders and b is not keep), None)
            if victim is None:
                break
            self._discard(self._blocks.pop(victim))

    # --- fetching and budget -----------------------------------------------------------------

    async def _fetch(self, buf: _Buffer, demand: bool) -> None:
        n = buf.end - buf.start
        try:
            with buf.scope:
                if demand:
                    await self._budget.acquire(n)
                    buf.reserved = min(n, self._budget.limit)
                    self._held.add(buf)
                data = await self._client.get_range(self.key, buf.start, n, if_match=self.etag)
                if len(data) != n:
                    raise ClientError(f"GetObject {self.key} [{buf.start}, {buf.end}): {len(data)} bytes "
                                      f"instead of {n}: the object is shorter than it was at open", key=self.key)
                buf.data = data
                self.stats["parts_fetched"] += 1
                self.stats["bytes_fetched"] += n
        except PreconditionFailed as exc:
            buf.error = exc
            self._go_stale(exc)
        except Exception as exc:  # read-ahead failures must never reach the nursery
            buf.error = exc
            log.debug("GET %s [%d, %d) failed: %r", self.key, buf.start, buf.end, exc)
        finally:
            self._inflight.discard(buf)
            if buf.data is None:
                if buf.error is None:
                    buf.error = self._stale or trio.ClosedResourceError("the read was cancelled")
                self._release(buf)
            elif buf.dropped and not buf.holders:
                self._release(buf)
            buf.event.set()
        self._pump()
        self._budget.notify()

    def _go_stale(self, exc: PreconditionFailed) -> None:
        if self._stale is not None:
            return
        self._stale = exc
        self._dead = True
        log.info("%s changed since it was opened (ETag %s): its reads now fail with ESTALE", self.key, self.etag)
        self._reset_stream(self._s_end)
        for buf in self._blocks.values():
            self._discard(buf)
        self._blocks.clear()

    def _release(self, buf: _Buffer) -> None:
        n = buf.reserved
        if n:
            buf.reserved = 0
            self._held.discard(buf)
            self._budget.release(n)

    def _discard(self, buf: _Buffer) -> None:
        """Drop a buffer the caller has just removed from the index (invariants 3 to 6)."""
        buf.dropped = True
        self._inflight.discard(buf)
        if buf is self._cur:
            self._cur = None
        if not buf.holders:
            self._release(buf)
            if buf.data is None and buf.error is None:
                buf.scope.cancel()

    def _force_drop(self, buf: _Buffer) -> None:
        buf.dropped = True
        self._release(buf)
        if buf.data is None and buf.error is None:
            buf.scope.cancel()

    def _unpinned(self, buf: _Buffer) -> None:
        """The last waiting read let go of ``buf``."""
        if buf.dropped:
            self._release(buf)
            if buf.data is None and buf.error is None:
                buf.scope.cancel()  # its reader was cancelled and nobody else wants it
        elif len(self._blocks) > self._max_blocks:
            self._evict(None)
        self._budget.notify()

    def reclaim(self, need: int) -> int:
        """Called by the budget for a waiting demand read: drop unpinned buffers worth ``need``
        bytes if possible, least useful first: segments the reader has passed (kept only for late
        reads), read-ahead at the far end of the stream (which shortens the stream), then blocks
        least recently used first, then any other unpinned stream segment, furthest first
        (replaced by a hole, so the stream stays contiguous). Every unpinned byte is reclaimable:
        that is what makes invariant 4 deadlock-free."""
        freed = 0
        segs = self._segs
        while segs and freed < need and segs[0].end <= self._pos and not segs[0].holders and segs[0].reserved:
            buf = segs.pop(0)
            self._seg_starts.pop(0)
            freed += buf.reserved
            self._discard(buf)
            self._s_start = segs[0].start if segs else self._s_end
        while segs and freed < need and not segs[-1].holders and (segs[-1].reserved or segs[-1].error is not None):
            buf = segs.pop()
            self._seg_starts.pop()
            self._s_end = buf.start
            freed += buf.reserved
            self._discard(buf)
        if not segs:
            self._s_start = self._s_end
        if freed < need:
            for i, buf in list(self._blocks.items()):
                if buf.holders or not buf.reserved:
                    continue
                del self._blocks[i]
                freed += buf.reserved
                self._discard(buf)
                if freed >= need:
                    break
        if freed < need:
            for i in range(len(segs) - 1, -1, -1):
                buf = segs[i]
                if buf.holders or not buf.reserved:
                    continue
                segs[i] = _hole(buf.start, buf.end)
                freed += buf.reserved
                self._discard(buf)
                if freed >= need:
                    break
        self.stats["reclaimed_bytes"] += freed
        return freed
