"""Outage: the endpoint stopped for real in the middle of the workload, then started again.

Why: zonal endpoints go away (a deployment, a network partition, an AZ event). While they are
gone every operation must fail within a bounded time (EIO), nothing may hang (not the
application, not the daemon, not `s3xfs stats`), and when the endpoint is back the same mount
must work again by itself. A restarted endpoint has forgotten every session token, so recovery
includes creating a new session on the first refusal. ``S3XFS_OUTAGE_SECONDS`` sets how long the
endpoint stays down (default 20, as the issue asks).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.workload import SUITE_RESULTS, Report, Workload, WorkloadConfig, mount_stats, operation_bound, \
    record_figures, time_to_first_write
from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, LocalZone
from tests.support.mount import needs_fuse

pytestmark = [pytest.mark.fuse, needs_fuse]

OUTAGE_SECONDS = float(os.environ.get("S3XFS_OUTAGE_SECONDS", "20"))
BEFORE_SECONDS = 10.0  # workload before the outage: files to read, append to and rename meanwhile
AFTER_SECONDS = 15.0  # workload after it: everything must work again


class Background:
    """The workload in a thread of its own (its run() watches for hung operations), so the test's
    thread can stop and start the endpoint meanwhile."""

    def __init__(self, workload: Workload, seconds: float) -> None:
        self.workload = workload
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(seconds,), name="workload-runner", daemon=True)
        self.thread.start()

    def _run(self, seconds: float) -> None:
        try:
            self.workload.run(seconds)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread by join()
            self.error = exc

    def join(self) -> None:
        # The workload ends by itself (duration); its watchdog turns a hang into a report, not a wait.
        self.thread.join(timeout=self.workload.config.duration + self.workload.config.op_timeout + 60)
        assert not self.thread.is_alive(), "the workload did not stop"
        if self.error is not None:
            raise self.error


def restart(workdir: Path, root: Path, port: int, attempts: int = 10) -> LocalZone:
    """A new endpoint on the same port and storage: it knows the objects, not the sessions."""
    for attempt in range(attempts):
        server = LocalZone(workdir, "--bucket", BUCKET, "--port", str(port), root=root)
        try:
            return server.start()
        except RuntimeError:  # the port is briefly taken (a client socket's local port): try again
            server.stop()
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def outage_figures(report: Report, window: tuple[float, float], **extra: Any) -> dict[str, Any]:
    """What the outage did: failures and the slowest operation during it, and recovery after it."""
    start, end = window
    during = report.failures_between(start, end)
    after = report.failures_between(end, float("inf"))
    return {**report.summary(), "outage_s": round(end - start, 1), "failed_during_outage": dict(during),
            "failed_after_outage": dict(after), "max_op_latency_during_outage_s": round(report.max_latency(window=window), 2),
            **extra}


def test_endpoint_stopped_for_twenty_seconds_mid_workload(localzone_factory, mount_factory, tmp_path: Path):
    bound = operation_bound()
    root = tmp_path / "root"
    server = localzone_factory("--bucket", BUCKET, root=root)
    port = server.port
    mount = mount_factory(server, BUCKET, "--part-size", "5M", "--staging-dir", str(tmp_path / "staging"))
    workload = Workload(mount.path, WorkloadConfig(seed=31, duration=BEFORE_SECONDS + OUTAGE_SECONDS + AFTER_SECONDS,
                                                   op_timeout=bound), endpoint=lambda: current.client(), bucket=BUCKET)
    current = server
    workload.prepare()
    background = Background(workload, workload.config.duration)
    restarted: LocalZone | None = None
    try:
        time.sleep(BEFORE_SECONDS)
        server.stop()
        stopped_at = time.monotonic()
        time.sleep(OUTAGE_SECONDS / 2)
        daemon_during = mount_stats(mount.path)  # the daemon answers while the bucket does not
        assert mount.proc is not None and mount.proc.poll() is None
        time.sleep(max(0.0, stopped_at + OUTAGE_SECONDS - time.monotonic()))
        restarted = current = restart(tmp_path, root, port)
        started_at = time.monotonic()
        recovery = time_to_first_write(mount.path / "probe", bound)
    finally:
        if restarted is None:
            workload.stop()
        background.join()
    try:
        endpoint_after = restarted.stats()  # before verify(): its boto3 client makes sessions of its own
        daemon = mount_stats(mount.path)
        report = workload.verify()
    finally:
        restarted.stop()
    window = (stopped_at, started_at)
    result = outage_figures(report, window, op_bound_s=round(bound, 1), recovery_s=round(recovery, 2),
                            sessions_after_restart=endpoint_after["sessions"]["ReadWrite"],
                            session_invalidations=daemon["sessions"]["invalidations"], retries=daemon["s3"]["retries"])
    record_figures(SUITE_RESULTS, "outage", result)
    print(f"\n[outage] {OUTAGE_SECONDS:.0f} s down: failed {result['failed_during_outage']}, slowest operation "
          f"{result['max_op_latency_during_outage_s']} s (bound {bound:.0f} s), recovered {result['recovery_s']} s "
          f"after the restart; {result['operations_total']} operations, {report.verified_files} files verified")
    assert report.problems == 0, report.describe()  # no wrong bytes, nothing lost, no hang
    assert sum(result["failed_during_outage"].values()) > 0, "nothing noticed the outage"
    assert set(report.failed_by_errno) <= {"EIO"}, report.describe()  # whenever they started
    assert result["failed_after_outage"] == {}, report.describe()
    assert daemon_during["s3"]["failures"].get("Unavailable", 0) > 0
    # The restarted endpoint knew no session: the mount made a new one when the old was refused.
    assert endpoint_after["sessions"]["ReadWrite"] >= 1 and daemon["sessions"]["invalidations"] >= 1
    assert report.verified_files > 0
    assert mount.proc is not None and mount.proc.poll() is None, "the daemon died"


def test_outage_fault_flag_mid_workload(localzone_factory, mount_factory, tmp_path: Path):
    """The endpoint's ``outage`` flag (every connection reset) instead of a stopped process: the
    sessions survive, so this isolates connection failures from session re-creation."""
    bound = operation_bound()
    server = localzone_factory("--bucket", BUCKET)
    mount = mount_factory(server, BUCKET, "--part-size", "5M", "--staging-dir", str(tmp_path / "staging"))
    workload = Workload(mount.path, WorkloadConfig(seed=32, duration=25, op_timeout=bound), endpoint=server.client,
                        bucket=BUCKET)
    workload.prepare()
    background = Background(workload, workload.config.duration)
    try:
        time.sleep(5)
        server.set_faults(outage=True)
        started = time.monotonic()
        time.sleep(10)
    finally:
        server.set_faults(outage=False)
        ended = time.monotonic()
        try:
            recovery = time_to_first_write(mount.path / "probe", bound)
        finally:
            background.join()
    report = workload.verify()
    result = outage_figures(report, (started, ended), op_bound_s=round(bound, 1), recovery_s=round(recovery, 2))
    record_figures(SUITE_RESULTS, "outage_flag", result)
    print(f"\n[outage flag] failed {result['failed_during_outage']}, slowest operation "
          f"{result['max_op_latency_during_outage_s']} s, recovered {result['recovery_s']} s after")
    assert report.problems == 0, report.describe()
    assert sum(result["failed_during_outage"].values()) > 0
    assert set(report.failed_by_errno) <= {"EIO"}, report.describe()
    assert result["failed_after_outage"] == {}, report.describe()
