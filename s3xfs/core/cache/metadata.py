"""The metadata cache: directory listings and single-object results, kept with their fetch time.

This is what lets a restarted training job skip re-listing its dataset: within ``--metadata-ttl``
of when they were fetched (wall-clock seconds, since they outlive the process), a listing or an
object's attributes are served without a request, also by a new mount; with ``indefinite`` they
are served until ``s3xfs cache clear``. Values are JSON (explicit fields, a format version), never
pickles. An entry from the future (the clock went back) or in an unknown format is ignored.

The methods block: call them through ``CacheStore.run``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ...client.protocol import ObjectInfo
from .store import CacheStore

T = TypeVar("T")

FORMAT = 1  # bump when the JSON layout changes: older entries are then ignored
CLOCK_SLACK = 5.0  # seconds an entry may seem to come from the future (clock adjustments) and still count


@dataclass(frozen=True)
class Listing:
    fetched_at: float  # time.time() when the LIST started
    dirs: list[str]  # child directory names
    files: list[ObjectInfo]


@dataclass(frozen=True)
class Entry:
    fetched_at: float
    info: ObjectInfo | None  # None: a directory (a key under name/ exists)


def _info_to_json(info: ObjectInfo) -> list[object]:
    return [info.key, info.size, info.etag, info.last_modified, info.storage_class, info.checksum_algorithm,
            info.checksum]


def _info_from_json(row: list[object]) -> ObjectInfo:
    key, size, etag, mtime, storage_class, algorithm, checksum = row
    if not (isinstance(key, str) and isinstance(size, int) and isinstance(etag, str)
            and isinstance(mtime, (int, float))):
        raise ValueError("malformed object entry")
    return ObjectInfo(key, size, etag, float(mtime), storage_class=storage_class,  # type: ignore[arg-type]
                      checksum_algorithm=algorithm, checksum=checksum)  # type: ignore[arg-type]


class MetadataCache:
    def __init__(self, store: CacheStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self.stats: Counter[str] = Counter()  # updated from worker threads: under the lock
        self._stats_lock = threading.Lock()

    def remaining(self, fetched_at: float, now: float | None = None) -> float:
        """Seconds an entry fetched at ``fetched_at`` is still good for (<= 0: expired)."""
        now = time.time() if now is None else now
        if fetched_at > now + CLOCK_SLACK:
            return 0.0
        return math.inf if math.isinf(self.ttl) else self.ttl - max(0.0, now - fetched_at)

    def _get(self, name: str) -> dict | None:
        raw = self.store.guard(self.store.cache.get, name)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except (ValueError, TypeError):  # not JSON, or not even text (another program's value)
            value = None
        if (not isinstance(value, dict) or value.get("v") != FORMAT or not isinstance(value.get("t"), (int, float))
                or not math.isfinite(value["t"])):  # NaN would never expire
            self.store.guard(self.store.cache.delete, name)
            return None
        return value

    def _put(self, name: str, value: dict) -> None:
        value["v"] = FORMAT
        self.store.guard(self.store.put, name, json.dumps(value, separators=(",", ":")).encode())

    def _load(self, kind: str, key: str, decode: Callable[[dict], T], restored: str, missed: str) -> T | None:
        """The stored value of (kind, key), decoded, if it is still within the TTL; a value that
        does not decode is deleted."""
        name = self.store.key(kind, key)
        value = self._get(name)
        try:
            if value is not None and self.remaining(value["t"]) > 0:
                result = decode(value)
                self._count(restored)
                return result
        except (KeyError, TypeError, ValueError):
            self.store.guard(self.store.cache.delete, name)
        self._count(missed)
        return None

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.stats[name] += 1

    def load_listing(self, prefix: str) -> Listing | None:
        """The stored listing of ``prefix`` if it is still within the TTL."""
        return self._load("list", prefix, lambda value: Listing(
            value["t"], [str(name) for name in value["dirs"]], [_info_from_json(row) for row in value["files"]]),
            "listings_restored", "listing_misses")

    def save_listing(self, prefix: str, listing: Listing) -> None:
        self._put(self.store.key("list", prefix), {"t": listing.fetched_at, "dirs": listing.dirs,
                                                   "files": [_info_to_json(info) for info in listing.files]})

    def load_entry(self, key: str) -> Entry | None:
        """The stored result of looking ``key`` up (a file, or a directory ``key/``) within the TTL."""
        return self._load("entry", key, lambda value: Entry(
            value["t"], None if value["file"] is None else _info_from_json(value["file"])),
            "entries_restored", "entry_misses")

    def save_entry(self, key: str, entry: Entry) -> None:
        self._put(self.store.key("entry", key), {"t": entry.fetched_at,
                                                 "file": None if entry.info is None else _info_to_json(entry.info)})

    def forget(self, keys: list[str], prefixes: list[str]) -> None:
        """The bucket changed here: drop what a later mount must not believe any more."""
        for key in keys:
            self.store.guard(self.store.cache.delete, self.store.key("entry", key))
        for prefix in prefixes:
            self.store.guard(self.store.cache.delete, self.store.key("list", prefix))
