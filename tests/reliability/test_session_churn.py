"""Session churn through a real mount: 2-second sessions under a mixed read/write/list workload.

Why: S3 Express credentials live 5 minutes; a mount that only works between two refreshes works
for 4 minutes. With 2-second sessions every second of the workload crosses a refresh, so a
request signed with a session about to expire, a refresh that races a request, or a session
created per request all show up within minutes, as failed operations or as a CreateSession count
out of proportion. ``S3XFS_CHURN_SECONDS`` sets the length of the read-write run (default 300:
the five minutes the issue asks for).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.workload import SUITE_RESULTS, Workload, WorkloadConfig, mount_stats, record_figures
from tests.support.localzone import DIRECTORY_BUCKET as BUCKET
from tests.support.mount import needs_fuse

pytestmark = [pytest.mark.fuse, needs_fuse]

CHURN_SECONDS = float(os.environ.get("S3XFS_CHURN_SECONDS", "300"))  # the five minutes
READ_ONLY_SECONDS = float(os.environ.get("S3XFS_CHURN_READ_ONLY_SECONDS", "30"))  # reads only: a shorter check
SESSION_TTL = 2  # seconds: a refresh every second or so


def session_bounds(seconds: float, ttl: float = SESSION_TTL) -> tuple[float, float]:
    """How many CreateSession a mount may make in ``seconds`` of ``ttl``-second sessions.

    The endpoint's Expiration has whole seconds, so the client sees lifetimes of ttl-1 to ttl
    seconds; it refreshes when half the lifetime (plus up to 10% jitter) remains, i.e. every
    (0.4 to 0.5) x lifetime: one session per 0.4-1.0 s for ttl=2. Allow 10% either way for the
    start-up session and scheduling noise. Fewer means sessions outlived their use (requests
    signed with expired tokens); more means sessions made on demand, per request."""
    shortest, longest = (ttl - 1) * 0.4, ttl * 0.5
    return seconds / longest * 0.9, seconds / shortest * 1.1 + 2


def run_churn(server, mount, *, seconds: float, read_only: bool, seed: int) -> tuple[Workload, dict, dict]:
    """Run the workload for ``seconds``, then verify; returns it, the endpoint's and the mount's stats."""
    workload = Workload(mount.path, WorkloadConfig(seed=seed, duration=seconds, read_only=read_only),
                        endpoint=server.client, bucket=BUCKET)
    workload.prepare()  # in read-only mode its PUTs go through boto3's own session: not counted below
    server.reset_stats()
    workload.run()
    endpoint = server.stats()  # before verify(): its boto3 client makes sessions of its own
    daemon = mount_stats(mount.path)
    workload.verify()
    return workload, endpoint, daemon


def figures(workload: Workload, endpoint: dict, daemon: dict, **extra: object) -> dict:
    sessions = endpoint["sessions"]
    return {**workload.report.summary(), "create_session": sessions["ReadOnly"] + sessions["ReadWrite"],
            "sessions_by_mode": sessions, "mutating_requests": endpoint["mutating_requests"],
            "s3_requests": sum(n for op, n in endpoint["requests"].items() if op != "CreateSession"),
            "retries": daemon["s3"]["retries"], "session_invalidations": daemon["sessions"]["invalidations"],
            "endpoint_errors": endpoint["errors"], **extra}


@pytest.mark.slow
@pytest.mark.timeout(CHURN_SECONDS + 600)
def test_two_second_sessions_under_a_mixed_workload_fail_nothing(localzone_factory, mount_factory, tmp_path: Path):
    server = localzone_factory("--bucket", BUCKET, "--session-ttl", str(SESSION_TTL))
    mount = mount_factory(server, BUCKET, "--part-size", "5M", "--staging-dir", str(tmp_path / "staging"))
    workload, endpoint, daemon = run_churn(server, mount, seconds=CHURN_SECONDS, read_only=False, seed=9)
    report = workload.report
    result = figures(workload, endpoint, daemon, session_ttl_s=SESSION_TTL)
    record_figures(SUITE_RESULTS, "session_churn", result)
    low, high = session_bounds(report.duration)
    print(f"\n[churn] {result['operations_total']} operations in {report.duration:.0f} s {result['operations']}, "
          f"{result['create_session']} CreateSession (expected {low:.0f}-{high:.0f}), {result['retries']} retries, "
          f"{result['verified_files']} files verified")
    assert report.failed == 0 and report.problems == 0, report.describe()
    assert all(report.operations[kind] > 0 for kind in ("write", "read", "read_range", "list", "stat", "append",
                                                        "rename", "unlink")), report.operations
    assert report.verified_files > 0
    assert endpoint["sessions"]["ReadOnly"] == 0, "a read-write mount made ReadOnly sessions"
    assert low <= result["create_session"] <= high, result
    # Not a session per request: thousands of requests share each session.
    assert result["create_session"] * 5 < result["s3_requests"], result
    assert daemon["sessions"]["created"] >= result["create_session"]  # every session came from the mount
    # A session is dropped 0.1-0.2 s before it expires: only a request delayed longer than that on
    # its way (a loaded machine) may arrive late, and is retried at once. A refresher that falls
    # behind makes one per session or more.
    assert endpoint["errors"].get("ExpiredToken", 0) <= max(2, result["create_session"] // 50), result


@pytest.mark.slow
@pytest.mark.timeout(READ_ONLY_SECONDS + 300)
def test_read_only_mount_under_churn_makes_only_read_only_sessions(localzone_factory, mount_factory):
    server = localzone_factory("--bucket", BUCKET, "--session-ttl", str(SESSION_TTL))
    mount = mount_factory(server, BUCKET, "--read-only", "--part-size", "5M")
    workload, endpoint, daemon = run_churn(server, mount, seconds=READ_ONLY_SECONDS, read_only=True, seed=10)
    report = workload.report
    result = figures(workload, endpoint, daemon, session_ttl_s=SESSION_TTL, read_only=True)
    record_figures(SUITE_RESULTS, "session_churn_read_only", result)
    low, high = session_bounds(report.duration)
    print(f"\n[churn, read-only] {result['operations_total']} operations in {report.duration:.0f} s, "
          f"{result['sessions_by_mode']} sessions (expected {low:.0f}-{high:.0f})")
    assert report.failed == 0 and report.problems == 0, report.describe()
    assert report.operations["read"] > 0 and report.operations["list"] > 0
    assert endpoint["sessions"]["ReadWrite"] == 0, "a read-only mount made ReadWrite sessions"
    assert endpoint["mutating_requests"] == 0, endpoint["requests"]
    assert low <= endpoint["sessions"]["ReadOnly"] <= high, result
    assert daemon["sessions"]["mode"] == "ReadOnly"
