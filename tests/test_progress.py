"""Progress rendering (s3xfs/progress.py) with a fake clock and a string stream: no terminal needed."""

from __future__ import annotations

import io

import pytest

from s3xfs.progress import TTY_REFRESH, Progress, RateMeter, eta, human_bytes, human_duration, progress_line

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                         (10 * MiB, "10.0 MiB"), (3 * 1024**3 // 2, "1.5 GiB"),
                                         (2 * 1024**5, "2.0 PiB"), (5 * 1024**6, "5120.0 PiB"), (-5, "0 B")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (0.4, "0s"), (59.4, "59s"), (60, "1m00s"), (185, "3m05s"),
                                               (3599, "59m59s"), (3600, "1h00m"), (7380, "2h03m"), (None, "?"),
                                               (float("inf"), "?"), (float("nan"), "?")])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


def test_eta():
    assert eta(100 * MiB, 10 * MiB) == pytest.approx(10.0)
    assert eta(0, None) == 0.0  # nothing left: done, whatever the rate
    assert eta(-3, 5.0) == 0.0
    assert eta(MiB, None) is None and eta(MiB, 0.0) is None


def test_rate_is_measured_over_the_recent_window_only():
    meter = RateMeter(window=5.0)
    assert meter.rate() is None
    meter.add(0.0, 0)
    assert meter.rate() is None  # one sample: no rate yet
    meter.add(1.0, 100 * MiB)  # a fast start...
    assert meter.rate() == pytest.approx(100 * MiB)
    for t in range(2, 20):  # ...then a steady 1 MiB/s
        meter.add(float(t), 100 * MiB + (t - 1) * MiB)
    assert meter.rate() == pytest.approx(MiB)
    meter.add(20.0, 100 * MiB + 18 * MiB)  # stalled for a second: the rate falls, but not to zero
    assert 0 < meter.rate() < MiB


def test_rate_with_samples_at_the_same_instant_is_unknown():
    meter = RateMeter()
    meter.add(5.0, 0)
    meter.add(5.0, 10)
    assert meter.rate() is None


def test_progress_line():
    line = progress_line(3, 10, 2 * MiB, 8 * MiB, MiB)
    assert line == "3/10 files, 2.0 MiB/8.0 MiB (25%), 1.0 MiB/s, ETA 6s"
    assert progress_line(0, 1200, 0, 5 * MiB, None) == "0/1,200 files, 0 B/5.0 MiB (0%), -- B/s, ETA ?"
    # A file that grew since the walk never shows more than 100%.
    assert "(100%)" in progress_line(1, 1, 9 * MiB, 8 * MiB, MiB)
    assert progress_line(0, 0, 0, 0, None) == "0/0 files, 0 B/0 B, -- B/s, ETA 0s"


def test_terminal_redraws_one_line_at_most_five_times_a_second():
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, tty=True, interval=10, prefix="w: ", clock=clock, width=lambda: 200)
    progress.start(2, 4 * MiB)
    assert progress.tick()  # drawn at once
    drawn = 1
    for _ in range(100):  # 100 ticks over 2 s
        clock.now += 0.02
        progress.add_bytes(20_000)
        drawn += progress.tick()
    assert 9 <= drawn <= 11  # 2 s / TTY_REFRESH, plus the first
    text = out.getvalue()
    assert "\n" not in text and text.count("\r") == drawn
    assert text.startswith("\rw: 0/2 files, 0 B/4.0 MiB (0%)")
    last = text.rsplit("\r", 1)[1]
    assert "1.9 MiB/4.0 MiB (47%)" in last and "ETA" in last
    progress.file_done()
    progress.finish("w: done")
    final = out.getvalue()[len(text):]
    # The summary blanks the drawn line, then takes its place, and ends the line.
    assert final.startswith("\r" + " " * len(last.rstrip()))
    assert final.endswith("\rw: done\n")


def test_terminal_line_is_cut_to_the_width_and_messages_go_above_it():
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, tty=True, interval=10, clock=clock, width=lambda: 30)
    progress.start(1, MiB)
    progress.tick()
    assert len(out.getvalue()) == 1 + 29  # '\r' and one column less than the terminal
    progress.error("oops")
    assert out.getvalue().endswith("\r" + " " * 29 + "\roops\n")
    clock.now += TTY_REFRESH
    assert progress.tick()  # drawn again below the message
    assert out.getvalue().endswith("\roops\n\r0/1 files, 0 B/1.0 MiB (0%), ")


def test_not_a_terminal_prints_a_plain_line_every_interval():
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, tty=False, interval=10, prefix="s3xfs warm: ", clock=clock)
    progress.start(4, 40 * MiB)
    assert not progress.tick()  # a log waits one interval: a short run prints only its summary
    for second in range(1, 26):
        clock.now += 1
        progress.add_bytes(MiB)
        if second % 10 == 0:
            progress.file_done()
        progress.tick()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == ["s3xfs warm: 1/4 files, 10.0 MiB/40.0 MiB (25%), 1.0 MiB/s, ETA 30s",
                     "s3xfs warm: 2/4 files, 20.0 MiB/40.0 MiB (50%), 1.0 MiB/s, ETA 20s"]
    progress.finish("s3xfs warm: summary")
    assert out.getvalue().splitlines()[-1] == "s3xfs warm: summary"


def test_a_describe_function_replaces_the_line_before_start():
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, tty=False, interval=1, clock=clock)
    found = [0]
    progress.describe = lambda: f"scanning: {found[0]} files"
    progress.tick()
    clock.now += 1
    found[0] = 7
    progress.tick()
    assert out.getvalue() == "scanning: 7 files\n"
    progress.start(7, 0)
    assert progress.describe is None


def test_quiet_prints_only_errors():
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, tty=True, interval=0, quiet=True, clock=clock)
    progress.start(1, MiB)
    clock.now += 5
    assert not progress.tick()
    progress.message("info")
    progress.finish("summary")
    progress.error("a/b: Input/output error")
    assert out.getvalue() == "a/b: Input/output error\n"


def test_counters_from_many_threads():
    import threading

    progress = Progress(io.StringIO(), tty=False, interval=10)
    progress.start(800, 800 * 1000)

    def work() -> None:
        for _ in range(100):
            progress.add_bytes(1000)
            progress.file_done()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (progress.files_done, progress.bytes_done) == (800, 800_000)
