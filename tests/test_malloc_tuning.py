"""The allocator tuning is applied where glibc is present and harmless where it is not."""

import ctypes

import pytest

from s3xfs import malloc_tuning


def test_glibc_accepts_the_settings_and_large_buffers_still_work() -> None:
    if not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"):
        pytest.skip("not glibc")
    assert malloc_tuning.keep_freed_buffers() is True
    buffers = [bytearray(8 << 20) for _ in range(4)]  # above the default mmap threshold
    buffers[-1][-1] = 7
    assert buffers[-1][-1] == 7


def test_missing_libc_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc_tuning.ctypes.util, "find_library", lambda name: None)
    assert malloc_tuning.keep_freed_buffers() is False
