"""Open handles: file handles (an inode, its pinned ETag, its prefetcher) and directory handles."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Generic, TypeVar

from .inodes import Inode
from .prefetch import Prefetcher

T = TypeVar("T")


@dataclass
class FileHandle:
    inode: Inode
    key: str
    etag: str | None  # reads are pinned to the version seen at open (None: nothing in the bucket yet)
    size: int
    prefetcher: Prefetcher | None  # made by the first read that needs the bucket (see ``remote``)
    direct: bool
    writable: bool = False  # opened for writing: flush and fsync commit, the last close cleans up
    readable: bool = True
    # Opened on a version in the bucket: the first read that misses the page cache starts its
    # read-ahead. Not at open: an open the page cache serves whole must not pay for a task.
    remote: bool = False


class HandleTable(Generic[T]):
    """Integer handles for the kernel (never 0, never reused while the process lives)."""

    def __init__(self) -> None:
        self._items: dict[int, T] = {}
        self._ids = itertools.count(1)

    def add(self, item: T) -> int:
        fh = next(self._ids)
        self._items[fh] = item
        return fh

    def get(self, fh: int) -> T | None:
        return self._items.get(fh)

    def pop(self, fh: int) -> T | None:
        return self._items.pop(fh, None)

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())
