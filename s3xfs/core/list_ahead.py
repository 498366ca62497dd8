"""Directory read-ahead: while a traversal walks a directory's subdirectories, list the next ones early.

``find``, ``du``, ``ls -R``, ``rsync`` and a dataset loader's ``os.walk`` open the subdirectories of a
directory one after another, in the order readdir returned them, and each open waits for its own
LIST: on a bucket a few milliseconds away, a tree of 100 directories costs 100 round trips in a
row. Once the walk moves on from one subdirectory of a parent to a later one, it is taken as a
traversal and the next few siblings (in that readdir order) are listed in the background, a
fixed number ahead of the walk, like a file's sequential read-ahead; their opens then find the
listing done, or wait for the one under way instead of sending another.

How far ahead is bounded by the metadata TTL too: a listing is only worth making if the walk
will reach it before it expires. The walk's pace (seconds between one sibling's open and the
next) says when that will be: in a deep tree, where each sibling's own subtree takes seconds to
walk, fewer siblings (or none) are listed ahead under a short TTL.

This module only decides *which* siblings; :class:`~s3xfs.core.fs.Filesystem` lists them.
One open of one subdirectory (a shell's tab completion, ``ls dir/sub``), or opening the same one
again, lists nothing extra.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

# Siblings listed ahead of the walk: 8 LISTs of 1,000 names take about as long as one over a
# 4 ms link, and a walk that stops early wastes at most this many listings.
WINDOW = 8
# Parents whose walk is followed at once (a depth-first walk has one per level): older ones are
# forgotten, which at worst restarts their detection.
TRACKED_PARENTS = 64
# Seconds without a step after which a walk is over: two opens further apart than this are not
# one traversal (with `--metadata-ttl indefinite` a listing lives for hours), and a walk this slow
# loses nothing by waiting for each LIST.
WALK_IDLE = 30.0
# Weight of the latest step in the walk's pace (a moving average: one slow subtree does not stop
# the read-ahead, a run of them does).
PACE_WEIGHT = 0.5


@dataclass
class _Walk:
    """Where the walk of one parent's subdirectories stands, for one listing of that parent."""

    version: int  # the parent's listing version: a newer listing starts a new walk
    positions: dict[str, int] = field(default_factory=dict)  # subdirectory name -> its place
    subdirs: list[str] = field(default_factory=list)  # the subdirectories, in readdir order
    last: int = -1  # place of the furthest subdirectory opened so far
    last_at: float = -math.inf  # when it was opened
    pace: float = 0.0  # seconds between steps (moving average); 0 until there are two
    scheduled_until: int = 0  # places before this one were already offered


class ListAhead:
    """Which sibling directories to list ahead of a traversal."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._walks: OrderedDict[int, _Walk] = OrderedDict()

    def opened(self, parent_ino: int, version: int, listing: list[str], subdirs: int, name: str,
               now: float, ttl: float) -> list[str]:
        """Subdirectory ``name`` of the parent is being opened at ``now`` (monotonic seconds).

        ``listing`` is the parent's current listing, whose first ``subdirs`` names are its
        subdirectories (a listing puts them first, so a directory of a million files and a few
        subdirectories costs a few entries here), and ``version`` tells that listing apart from
        earlier ones. Returns the subdirectories that follow ``name``, not offered yet, within
        the window and within reach of the walk before ``ttl`` seconds, once the walk has moved
        forward from one subdirectory to a later one. The caller skips names that are no longer
        directories (a listing changes in place as this mount adds and removes names) and those
        whose listing is fresh or under way."""
        walk = self._walks.get(parent_ino)
        if walk is None or walk.version != version:
            names = listing[:subdirs]
            walk = self._walks[parent_ino] = _Walk(version, {child: i for i, child in enumerate(names)}, names)
            while len(self._walks) > TRACKED_PARENTS:
                self._walks.popitem(last=False)
        self._walks.move_to_end(parent_ino)
        position = walk.positions.get(name)
        if position is None:
            return []  # not from this listing (made here since): no order to follow
        if position <= walk.last:
            return []  # opened again, or going back: not a step of the walk
        step = now - walk.last_at
        first_step = walk.last < 0 or step > WALK_IDLE
        walk.last, walk.last_at = position, now
        if first_step:
            walk.pace = 0.0
            return []  # one open is not a traversal yet
        walk.pace = step if walk.pace == 0.0 else PACE_WEIGHT * step + (1 - PACE_WEIGHT) * walk.pace
        reach = self.window
        if not math.isinf(ttl) and walk.pace > 0:
            reach = min(reach, math.ceil(ttl / walk.pace) - 1)  # the k-th next is opened about k * pace from now
        start = max(position + 1, walk.scheduled_until)
        end = min(position + 1 + reach, len(walk.subdirs))
        if start >= end:
            return []
        walk.scheduled_until = end
        return walk.subdirs[start:end]
