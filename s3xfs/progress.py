"""Progress of a long command (``s3xfs warm``): counters shared by worker threads, and their rendering.

On a terminal one line is redrawn in place (at most ``TTY_REFRESH`` apart), because a scrolling
log of a copy is noise there; anywhere else (a log file, a CI job, journald) a plain line every
``interval`` seconds, since carriage returns turn into garbage there. The formatting functions are
pure and the clock is injectable, so all of it is testable without a terminal.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

TTY_REFRESH = 0.2  # seconds between redraws on a terminal: lively, yet cheap to draw
RATE_WINDOW = 5.0  # seconds the rate is measured over: recent enough to follow, long enough to be steady
UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``: binary units, as the mount options and docs use them."""
    value = float(max(0.0, n))
    for unit in UNITS:
        if value < 1024 or unit == UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """``185`` -> ``3m05s``; None (unknown) -> ``?``."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    whole = max(0, int(round(seconds)))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def eta(remaining_bytes: int, rate: float | None) -> float | None:
    """Seconds left at the current rate; None while there is no rate to go by."""
    if remaining_bytes <= 0:
        return 0.0
    if not rate or rate <= 0:
        return None
    return remaining_bytes / rate


class RateMeter:
    """Bytes per second over the last ``window`` seconds, from (time, running total) samples."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> None:
        self._samples.append((now, total))
        # Keep one sample at or before the window's start, so the rate spans the whole window.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None


def progress_line(files_done: int, files_total: int, bytes_done: int, bytes_total: int, rate: float | None) -> str:
    """``3/10 files, 1.5 MiB/8.0 MiB (18%), 2.0 MiB/s, ETA 3s``."""
    bytes_done = min(bytes_done, bytes_total) if bytes_total else bytes_done
    percent = f" ({100 * bytes_done // bytes_total}%)" if bytes_total else ""
    speed = f"{human_bytes(rate)}/s" if rate is not None else "-- B/s"
    return (f"{files_done:,}/{files_total:,} files, {human_bytes(bytes_done)}/{human_bytes(bytes_total)}{percent}, "
            f"{speed}, ETA {human_duration(eta(bytes_total - bytes_done, rate))}")


class Progress:
    """Counters that worker threads advance, and a renderer the main thread calls with :meth:`tick`
    (any thread may print :meth:`error` lines).

    ``tty``: redraw one line with ``\\r``; otherwise print a line every ``interval`` seconds.
    ``quiet``: render nothing but :meth:`error` lines.
    """

    def __init__(self, stream: TextIO, *, tty: bool, interval: float, quiet: bool = False, prefix: str = "",
                 clock: Callable[[], float] = time.monotonic, width: Callable[[], int] | None = None) -> None:
        self.stream = stream
        self.tty = tty
        self.interval = interval
        self.quiet = quiet
        self.prefix = prefix
        self.clock = clock
        self.width = width or (lambda: shutil.get_terminal_size().columns)
        self.meter = RateMeter()
        self._lock = threading.Lock()  # the counters
        self._output = threading.Lock()  # the stream: workers report errors while the main thread draws
        self.files_total = 0
        self.bytes_total = 0
        self.files_done = 0
        self.bytes_done = 0
        self.started: float | None = None
        self._last_render: float | None = None
        self._drawn = 0  # length of the line on screen (tty), to blank it before other output
        self.describe: Callable[[], str] | None = None  # overrides the line (e.g. while scanning)

    # --- counters (any thread) ---------------------------------------------------------------

    def start(self, files_total: int, bytes_total: int) -> None:
        with self._lock:
            self.files_total, self.bytes_total = files_total, bytes_total
            self.files_done = self.bytes_done = 0
            self.started = self.clock()
            self.meter = RateMeter()
            self.meter.add(self.started, 0)
            self.describe = None

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def average_rate(self) -> float | None:
        elapsed = self.elapsed()
        return self.bytes_done / elapsed if elapsed > 0 else None

    # --- rendering (main thread) -------------------------------------------------------------

    def line(self) -> str:
        if self.describe is not None:
            return self.prefix + self.describe()
        with self._lock:
            counts = (self.files_done, self.files_total, self.bytes_done, self.bytes_total)
        return self.prefix + progress_line(*counts, self.meter.rate())

    def tick(self) -> bool:
        """Sample the rate and render if it is time; True if something was written."""
        now = self.clock()
        with self._lock:
            done = self.bytes_done
        if self.started is not None:
            self.meter.add(now, done)
        if self.quiet:
            return False
        if self._last_render is None:
            # A terminal shows the line at once; a log waits one interval (short runs print only the summary).
            self._last_render = now if not self.tty else now - TTY_REFRESH
        wait = TTY_REFRESH if self.tty else self.interval
        if now - self._last_render < wait:
            return False
        self._last_render = now
        line = self.line()
        with self._output:
            if self.tty:
                self._draw(line)
            else:
                self.stream.write(line + "\n")
                self.stream.flush()
        return True

    def message(self, text: str) -> None:
        """An informational line (not in quiet mode), printed above the redrawn line."""
        if not self.quiet:
            self._print(text)

    def error(self, text: str) -> None:
        """A line that is always printed."""
        self._print(text)

    def finish(self, summary: str) -> None:
        """Replace the progress line with the summary (not in quiet mode)."""
        if self.quiet:
            return
        self._print(summary)

    def _print(self, text: str) -> None:
        with self._output:
            self._clear()
            self.stream.write(text + "\n")
            self.stream.flush()

    def _draw(self, text: str) -> None:
        text = text[:max(10, self.width() - 1)]  # a wrapped line could not be redrawn in place
        self.stream.write("\r" + text + " " * max(0, self._drawn - len(text)))
        self.stream.flush()
        self._drawn = len(text)

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0
