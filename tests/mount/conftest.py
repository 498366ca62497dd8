"""Fixtures for tests through a real FUSE mount of s3xfs on s3xfs-localzone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.localzone import LocalZone
from tests.support.mount import FUSE_MISSING, Mount

pytestmark = pytest.mark.fuse


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Mount with any options; every mount made is unmounted at the end, also on failure."""
    mounts: list[Mount] = []

    def make(server: LocalZone, source: str, *args: str, name: str = "mnt", env: dict[str, str] | None = None) -> Mount:
        if FUSE_MISSING:
            pytest.skip(FUSE_MISSING)
        mount = Mount(server, source, tmp_path / name, *args, env=env)
        mounts.append(mount)
        return mount.start()

    try:
        yield make
    finally:
        for mount in mounts:
            mount.stop()
