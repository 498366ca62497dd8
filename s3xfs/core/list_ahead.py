"""Directory read-ahead: while a traversal walks a directory's subdirectories, list the next ones early.

``find``, ``du``, ``ls -R``, ``rsync``, ``os.walk`` and a dataset loader's class folders open the
subdirectories of a directory one after another, and each open waits for its own LIST: on a
bucket a few milliseconds away, a tree of 100 directories costs 100 round trips in a row. Walkers
follow one of two orders: readdir's (``find``, ``du``, ``os.walk``) or the names sorted
(``ls -R``, ``rsync``, torchvision's ``ImageFolder``). Once the walk opens the subdirectory that
follows the last one it opened, in either order, it is taken as a traversal in that order and
the next few subdirectories in it are listed in the background, a fixed number ahead of the
walk, like a file's sequential read-ahead; their opens then find the listing done, or wait for
the one under way instead of sending another. A walk in any other order lists nothing ahead.

How far ahead is bounded by the metadata TTL too: a listing is only worth making if the walk
will reach it before it expires. The walk's pace (seconds between one subdirectory's open and
the next) says when that will be: in a deep tree, where each subdirectory's own subtree takes
seconds to walk, fewer (or none) are listed ahead under a short TTL.

This module only decides *which* subdirectories; :class:`~s3xfs.core.fs.Filesystem` lists them.
One open of one subdirectory (a shell's tab completion, ``ls dir/sub``), or opening the same one
again, lists nothing extra.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

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
class _Order:
    """The subdirectories of a parent in one order a walk may follow."""

    names: list[str]
    positions: dict[str, int]
    scheduled_until: int = 0  # places before this one were already offered

    @classmethod
    def of(cls, names: list[str]) -> _Order:
        return cls(names, {name: index for index, name in enumerate(names)})

    def follows(self, previous: str, name: str) -> bool:
        return self.positions[name] == self.positions[previous] + 1


@dataclass
class _Walk:
    """Where the walk of one parent's subdirectories stands, for one listing of that parent."""

    version: int  # the parent's listing version: a newer listing starts a new walk
    readdir: _Order  # the subdirectories in readdir order (the listing's)
    by_name: _Order  # and sorted by name (code points: Python's sorted(), and byte order)
    last: str | None = None  # the subdirectory opened last
    last_at: float = -math.inf  # when
    pace: float = 0.0  # seconds between opens (moving average); 0 until there are two


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
        earlier ones. When ``name`` follows the subdirectory opened before it, in readdir or name
        order, returns the subdirectories that come next in that order, not offered yet, within
        the window and within reach of the walk before ``ttl`` seconds. The caller skips names
        that are no longer directories (a listing changes in place as this mount adds and
        removes names) and those whose listing is fresh or under way."""
        walk = self._walks.get(parent_ino)
        if walk is None or walk.version != version:
            names = listing[:subdirs]
            walk = self._walks[parent_ino] = _Walk(version, _Order.of(names), _Order.of(sorted(names)))
            while len(self._walks) > TRACKED_PARENTS:
                self._walks.popitem(last=False)
        self._walks.move_to_end(parent_ino)
        if name not in walk.readdir.positions or name == walk.last:
            return []  # not from this listing (made here since), or opened again: no step
        previous, step = walk.last, now - walk.last_at
        walk.last, walk.last_at = name, now
        if previous is None or step > WALK_IDLE:
            walk.pace = 0.0
            return []  # one open is not a traversal yet
        walk.pace = step if walk.pace == 0.0 else PACE_WEIGHT * step + (1 - PACE_WEIGHT) * walk.pace
        order = next((o for o in (walk.readdir, walk.by_name) if o.follows(previous, name)), None)
        if order is None:
            return []  # a jump, in no order this module knows: nothing to predict
        reach = self.window
        if not math.isinf(ttl) and walk.pace > 0:
            reach = min(reach, math.ceil(ttl / walk.pace) - 1)  # the k-th next is opened about k * pace from now
        position = order.positions[name]
        start = max(position + 1, order.scheduled_until)
        end = min(position + 1 + reach, len(order.names))
        if start >= end:
            return []
        order.scheduled_until = end
        return order.names[start:end]
