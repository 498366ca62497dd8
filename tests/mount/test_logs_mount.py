"""A real daemon's log: levels, the run-time level signals, and no secret even with botocore at DEBUG."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.localzone import ACCESS_KEY, DIRECTORY_BUCKET as BUCKET, SECRET_KEY

TOKEN_LIKE = re.compile(r"[A-Za-z0-9_\-]{96,}")  # the endpoint's session tokens are 128 such characters


@pytest.fixture
def server(localzone_factory):
    server = localzone_factory("--bucket", BUCKET)
    server.client().put_object(Bucket=BUCKET, Key="data/a.txt", Body=b"alpha\n")
    return server


def _wait_for(path: Path, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.05)


def test_debug_log_of_every_request_holds_no_secret(server, mount_factory, tmp_path):
    log = tmp_path / "debug.log"
    mount = mount_factory(server, BUCKET, "--log-file", str(log), "--log-level", "DEBUG",
                          "--debug", "botocore:urllib3")
    assert (mount.path / "data" / "a.txt").read_text() == "alpha\n"
    (mount.path / "data" / "b.txt").write_text("beta\n")
    server.expire_sessions()  # a second CreateSession, whose response carries new credentials
    assert sorted(p.name for p in (mount.path / "data").iterdir()) == ["a.txt", "b.txt"]
    mount.stop()
    text = log.read_text()
    assert "botocore" in text and "CreateSession" in text  # the dump really is there...
    assert "<redacted>" in text  # ...with its credentials replaced
    assert SECRET_KEY not in text
    assert TOKEN_LIKE.search(text) is None, TOKEN_LIKE.search(text).group(0)[:20]
    assert ACCESS_KEY in text  # an access key id is an identifier, not a secret: kept for debugging


def test_sigusr1_and_sigusr2_change_the_level_at_run_time(server, mount_factory, tmp_path):
    log = tmp_path / "s3xfs.log"
    mount = mount_factory(server, BUCKET, "--log-file", str(log), "--read-only")
    (mount.path / "data" / "a.txt").read_text()
    assert " DEBUG " not in log.read_text() and " INFO " not in log.read_text()
    mount.proc.send_signal(signal.SIGUSR1)
    assert "log level now INFO" in _wait_for(log, "log level now INFO")
    mount.proc.send_signal(signal.SIGUSR1)  # one at a time: signals pending together count once
    assert "log level now DEBUG" in _wait_for(log, "log level now DEBUG")
    (mount.path / "data" / "missing.txt").exists()
    assert " DEBUG s3xfs." in _wait_for(log, " DEBUG s3xfs.")
    mount.proc.send_signal(signal.SIGUSR2)
    assert "log level now WARNING" in _wait_for(log, "log level now WARNING")
    size = len(log.read_text())
    (mount.path / "data" / "other-missing.txt").exists()
    time.sleep(0.5)
    assert " DEBUG " not in log.read_text()[size:]
    assert mount.proc.poll() is None  # the signals changed the level, not the mount
