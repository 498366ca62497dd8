"""Directory read-ahead: while a traversal walks a directory's subdirectories, list the next ones early.

``find``, ``du``, ``ls -R``, ``rsync`` and a dataset loader's ``os.walk`` open the subdirectories of a
directory one after another, in the order readdir returned them, and each open waits for its own
LIST: on a bucket a few milliseconds away, a tree of 100 directories costs 100 round trips in a
row. Once a second subdirectory of the same parent is opened, the walk is taken as a traversal and
the next few siblings (in that readdir order) are listed in the background, a fixed number ahead
of the walk, like a file's sequential read-ahead; their opens then find the listing done, or wait
for the one under way instead of sending another.

This module only decides *which* siblings; :class:`~s3xfs.core.fs.Filesystem` lists them.
One open of one subdirectory (a shell's tab completion, ``ls dir/sub``) lists nothing extra.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

# Subdirectories of one parent opened before the walk counts as a traversal: the second one.
# A single open (``cd``, ``ls sub``) is not a traversal and must not cost extra LISTs.
TRAVERSAL_AFTER = 2
# Siblings listed ahead of the walk: 8 LISTs of 1,000 names take about as long as one over a
# 4 ms link, and a walk that stops early wastes at most this many requests.
WINDOW = 8
# Parents whose walk is followed at once (a depth-first walk has one per level): older ones are
# forgotten, which at worst restarts their detection.
TRACKED_PARENTS = 64


@dataclass
class _Walk:
    """Where the walk of one parent's subdirectories stands, for one listing of that parent."""

    names: list[str]  # the parent's listing (identity tells a newer listing apart)
    subdirs: int  # how many names at its front are subdirectories: only they are followed
    positions: dict[str, int] = field(default_factory=dict)  # of those names; made on first use
    opened: int = 0  # subdirectories opened so far
    scheduled_until: int = 0  # listing positions before this one were already considered


class ListAhead:
    """Which sibling directories to list ahead of a traversal."""

    def __init__(self, window: int = WINDOW, traversal_after: int = TRAVERSAL_AFTER) -> None:
        self.window = window
        self.traversal_after = traversal_after
        self._walks: OrderedDict[int, _Walk] = OrderedDict()

    def opened(self, parent_ino: int, listing: list[str], subdirs: int, name: str) -> list[str]:
        """Subdirectory ``name`` of the parent is being opened; the parent's current listing is
        ``listing``, whose first ``subdirs`` names are its subdirectories (a listing puts them
        first, so a directory of a million files and a few subdirectories costs a few entries
        here). The subdirectories that follow ``name`` and were not offered yet, up to the window,
        once the walk counts as a traversal. The caller skips names that are no longer
        directories (the listing changes in place as this mount adds and removes names) and
        those whose listing is fresh or under way."""
        walk = self._walks.get(parent_ino)
        if walk is None or walk.names is not listing:
            walk = self._walks[parent_ino] = _Walk(listing, subdirs)
            while len(self._walks) > TRACKED_PARENTS:
                self._walks.popitem(last=False)
        self._walks.move_to_end(parent_ino)
        if not walk.positions:
            walk.positions = {child: index for index, child in enumerate(listing[:walk.subdirs])}
        position = walk.positions.get(name)
        if position is None:
            return []  # not from this listing (made here since): no order to follow
        walk.opened += 1
        if walk.opened < self.traversal_after:
            return []
        start = max(position + 1, walk.scheduled_until)
        end = min(position + 1 + self.window, walk.subdirs, len(listing))
        if start >= end:
            return []
        walk.scheduled_until = end
        return listing[start:end]

    def forget(self, parent_ino: int) -> None:
        """The parent is gone or changed: its walk starts over."""
        self._walks.pop(parent_ino, None)
