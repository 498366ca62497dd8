"""Fixtures for the reliability and security suite (issue 9): the mount fixtures of tests/mount."""

from __future__ import annotations

from tests.mount.conftest import mount_factory  # noqa: F401 - re-exported as a fixture
