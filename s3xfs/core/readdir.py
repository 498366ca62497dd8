"""One listing snapshot per opendir.

Directory-bucket listings are unordered and paged by opaque tokens, so readdir offsets cannot be
positions in the server's order: the whole listing is read once, when the directory is opened,
and offsets index that snapshot. Entries never repeat or vanish within one opendir, whatever
happens in the bucket meanwhile.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from .inodes import Inode


@dataclass(slots=True)  # one per name of every open directory
class DirEntry:
    name: str
    inode: Inode
    counted: bool  # False for '.' and '..': their lookup counts must not be raised


@dataclass
class DirHandle:
    inode: Inode
    entries: list[DirEntry] = field(default_factory=list)

    def page(self, start: int) -> Iterator[tuple[int, DirEntry]]:
        """Entries from offset ``start`` on, with the offset that follows each (lazily: the kernel
        takes a few dozen per call, and a directory may hold many thousands)."""
        return zip(itertools.count(start + 1), itertools.islice(self.entries, start, None))
