"""Shared fixtures: a local zonal endpoint per test session, and a factory for special ones."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.localzone import DIRECTORY_BUCKET, GENERAL_BUCKET, LocalZone

# Never let a developer's own AWS configuration or an instance metadata service leak into tests.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_CONFIG_FILE"] = "/nonexistent/s3xfs-tests/config"
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/s3xfs-tests/credentials"
for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
             "AWS_ENDPOINT_URL", "AWS_S3_DISABLE_EXPRESS_SESSION_AUTH"):
    os.environ.pop(name, None)

# A non-interactive shell starts background jobs (`./dev test &`) with SIGINT ignored, and an ignored
# signal stays ignored across exec: every daemon, endpoint and `s3xfs warm` a test starts would then
# shrug off the Ctrl-C the tests send. A handler of ours is reset to the default at exec instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def localzone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalZone]:
    """One endpoint shared by tests that only need ordinary behaviour (use unique keys)."""
    server = LocalZone(tmp_path_factory.mktemp("localzone"), "--bucket", DIRECTORY_BUCKET, "--bucket", GENERAL_BUCKET)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def localzone_factory(tmp_path: Path) -> Iterator[Callable[..., LocalZone]]:
    """Start endpoints with special options; every one is stopped when the test ends."""
    started: list[LocalZone] = []

    def start(*args: str, root: Path | None = None, workdir: Path | None = None) -> LocalZone:
        server = LocalZone(workdir or tmp_path, *args, root=root)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()
