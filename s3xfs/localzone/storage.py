"""Crash-safe on-disk store of the local zonal endpoint: buckets, objects, multipart uploads, listings.

Layout under ``root``::

    localzone.sqlite3      every bucket, object, segment, directory, upload and part (SQLite, WAL)
    blobs/<2 hex>/<hex>    object data; each file belongs to exactly one segment or one part
    tmp/                   bodies being received (:class:`Staged`), not yet visible
    lock                   flock'ed while a Store is open: one Store per root, one process

An object is a row in ``objects`` plus its ``segments`` (blob files, in order). A PUT is one segment;
CompleteMultipartUpload turns the chosen parts' blobs into the segments (no byte is copied); an append
adds a segment. Crash safety comes from ordering, not from journaling data:

* a body is written into ``tmp/``, then renamed into ``blobs/`` *before* the transaction that references
  it commits (inside it, once the preconditions passed);
* a blob is unlinked only *after* the transaction that dropped its last reference committed;
* at startup ``tmp/`` is emptied and every blob no row references is deleted.

So every change is atomic even across ``kill -9``: a crash leaves at most unreferenced files, which the
next start removes. With ``fsync=True`` blobs and their directories are fsynced and SQLite runs with
``synchronous=FULL`` (needed only against power loss, not against process death).

Readers (:meth:`Store.open`) take a snapshot of an object's segment list and *pin* its blobs in memory;
a writer that drops a pinned blob defers the unlink until the last reader closes. A concurrent overwrite,
append or delete therefore never tears a read.

Directory buckets keep real directories in ``dirs``: every object key and every in-progress upload key
holds one reference on each ancestor directory (``a/b/c`` on ``a/`` and ``a/b/``; a key ending in ``/``
also on itself). A directory whose count drops to zero disappears, which deletes empty directories
recursively up the tree. Listings of directory buckets are unordered: rows are ordered by
``(ord, key)`` where ``ord`` is a per-bucket salted 63-bit hash of the key, and continuation tokens
are positions in that order, so paging is stable while keys are added and removed.

The server is multi-threaded: each thread gets its own SQLite connection; write transactions are
serialised by a process-wide lock and ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import dataclasses
import fcntl
import hashlib
import heapq
import json
import os
import secrets
import shutil
import sqlite3
import string
import struct
import threading
import time
import weakref
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .checksums import b64, combine_crc, composite, new_hasher
from .errors import (
    S3Error,
    internal_error,
    invalid_argument,
    invalid_request,
    malformed_xml,
    no_such_bucket,
    no_such_key,
    no_such_upload,
)

__all__ = [
    "BucketInfo",
    "ObjectMeta",
    "Staged",
    "ObjectReader",
    "UploadInfo",
    "PartInfo",
    "ObjectListing",
    "UploadListing",
    "Store",
    "MIN_PART_SIZE",
    "MAX_PARTS",
]

MiB = 1 << 20
CHUNK = MiB
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
SCHEMA_VERSION = 1
_ALNUM = string.ascii_lowercase + string.digits
_CRCS = ("CRC32", "CRC32C")
# Directory-bucket listing without delimiter under a non-empty prefix: up to this many keys below the
# prefix, read the key range and sort it by ord; above, walk the bucket's ord index and filter.
_SORT_THRESHOLD = 20_000
_MAX_FDS_PER_READER = 8

Precondition = Callable[["ObjectMeta | None"], None]


# --------------------------------------------------------------------------------------------------
# Public value types


@dataclass(frozen=True)
class BucketInfo:
    name: str
    directory: bool
    region: str
    zone: str | None
    created: float


@dataclass(frozen=True)
class ObjectMeta:
    bucket: str
    key: str
    size: int
    etag: str  # unquoted
    last_modified: float
    content_type: str
    headers: dict[str, str]  # cache-control, content-disposition, content-encoding, content-language, expires
    user_metadata: dict[str, str]  # x-amz-meta-* without the prefix
    checksum_algorithm: str | None
    checksum: str | None
    checksum_type: str | None  # 'FULL_OBJECT' | 'COMPOSITE'
    part_sizes: tuple[int, ...]  # segment lengths
    multipart: bool
    storage_class: str


@dataclass(frozen=True)
class UploadInfo:
    upload_id: str
    bucket: str
    key: str
    initiated: float
    content_type: str
    headers: dict[str, str]
    user_metadata: dict[str, str]
    checksum_algorithm: str | None
    checksum_type: str | None
    storage_class: str = "STANDARD"


@dataclass(frozen=True)
class PartInfo:
    number: int
    size: int
    etag: str  # unquoted
    last_modified: float
    checksum: str | None


@dataclass
class ObjectListing:
    contents: list[ObjectMeta]
    common_prefixes: list[str]
    truncated: bool
    next_token: str | None  # V2: continuation token; V1: NextMarker (the last key or prefix returned)


@dataclass
class UploadListing:
    uploads: list[UploadInfo]
    common_prefixes: list[str]
    truncated: bool
    next_key_marker: str | None
    next_upload_id_marker: str | None


@dataclass
class Staged:
    """A body written to ``tmp/``, not yet visible.

    ``checksums`` maps algorithm -> base64 digest; ``digests`` keeps the raw digests (a CRC's integer is
    ``int.from_bytes(digest, 'big')``). ``md5_hex`` is '' when it was not computed (``stage_range`` with
    ``md5=False``). Store methods that take a Staged own it afterwards: it is moved into the store or
    deleted whatever the outcome, so ``discard()`` after them is a harmless no-op.
    """

    path: Path
    size: int
    md5_hex: str
    checksums: dict[str, str] = field(default_factory=dict)
    digests: dict[str, bytes] = field(default_factory=dict)

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def crc(self, algorithm: str) -> int:
        return int.from_bytes(self.digests[algorithm], "big")


# --------------------------------------------------------------------------------------------------
# Helpers


def _enc(key: str) -> bytes:
    return key.encode("utf-8")


def _random_etag() -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(32))


def _chain(key: bytes) -> list[bytes]:
    """The directories a key holds a reference on: every prefix ending in '/' (the key itself if it does)."""
    out = []
    i = key.find(b"/")
    while i >= 0:
        out.append(key[: i + 1])
        i = key.find(b"/", i + 1)
    return out


def _parent(key: bytes) -> bytes:
    """The directory an object key is listed in: everything up to and including its last '/'."""
    return key[: key.rfind(b"/") + 1]


def _dir_parent(prefix: bytes) -> bytes:
    return prefix[: prefix.rfind(b"/", 0, len(prefix) - 1) + 1]


def _succ(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix`` (None: no such)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])


def _ord(salt: bytes, key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, key=salt).digest(), "big") >> 1


def _token(kind: bytes, payload: bytes) -> str:
    raw = kind + payload
    raw += zlib.crc32(raw).to_bytes(4, "big")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _untoken(token: str, kind: bytes) -> bytes | None:
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
    except (ValueError, UnicodeEncodeError):
        return None
    if len(raw) < 5 or raw[:1] != kind or zlib.crc32(raw[:-4]).to_bytes(4, "big") != raw[-4:]:
        return None
    return raw[1:-4]


def _bad_token(token: str) -> S3Error:
    return invalid_argument("The continuation token provided is incorrect", "continuation-token", token)


def _hash_file(path: Path, algorithms: Iterable[str], md5: bool) -> tuple[str, dict[str, bytes]]:
    hashers = {a: new_hasher(a) for a in algorithms}
    m = hashlib.md5(usedforsecurity=False) if md5 else None
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if m is not None:
                m.update(chunk)
            for h in hashers.values():
                h.update(chunk)
    return (m.hexdigest() if m is not None else ""), {a: h.digest() for a, h in hashers.items()}


def _complete_digests(staged: Staged, algorithms: Iterable[str], md5: bool = False) -> None:
    missing = [a for a in dict.fromkeys(algorithms) if a not in staged.digests]
    need_md5 = md5 and not staged.md5_hex
    if not missing and not need_md5:
        return
    md5_hex, digests = _hash_file(staged.path, missing, need_md5)
    if need_md5:
        staged.md5_hex = md5_hex
    for a, d in digests.items():
        staged.digests[a] = d
        staged.checksums[a] = b64(d)


def _dumps(d: dict[str, str] | None) -> str:
    return json.dumps({k.lower(): v for k, v in (d or {}).items()}, separators=(",", ":"), sort_keys=True)


def _too_many_parts() -> S3Error:
    return S3Error(400, "TooManyParts",
                   f"You have attempted to append to an object that already has the maximum number of parts ({MAX_PARTS}).")


def _invalid_part(upload_id: str, number: int, etag: str) -> S3Error:
    return S3Error(400, "InvalidPart",
                   "One or more of the specified parts could not be found.  The part may not have been uploaded, "
                   "or the specified entity tag may not match the part's entity tag.",
                   {"UploadId": upload_id, "PartNumber": str(number), "ETag": etag})


def _invalid_part_order(message: str | None = None) -> S3Error:
    return S3Error(400, "InvalidPartOrder", message or
                   "The list of parts was not in ascending order. The parts list must be specified in order by part number.")


# Object row columns, in this order, everywhere.
_OCOLS = ("oid, key, size, etag, last_modified, content_type, headers, user_metadata, "
          "checksum_algorithm, checksum, checksum_type, multipart, nsegments")
_O_OID, _O_KEY, _O_SIZE, _O_ETAG, _O_LM, _O_CT, _O_HDR, _O_UM, _O_CA, _O_CS, _O_CTYPE, _O_MP, _O_NSEG = range(13)

_UCOLS = "upload_id, key, ord, initiated, content_type, headers, user_metadata, checksum_algorithm, checksum_type"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets(
    name TEXT PRIMARY KEY,
    directory INTEGER NOT NULL,
    region TEXT NOT NULL,
    zone TEXT,
    created REAL NOT NULL,
    salt BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS objects(
    oid INTEGER PRIMARY KEY,
    bucket TEXT NOT NULL,
    key BLOB NOT NULL,
    parent BLOB NOT NULL,
    ord INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    last_modified REAL NOT NULL,
    content_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    user_metadata TEXT NOT NULL,
    checksum_algorithm TEXT,
    checksum TEXT,
    checksum_type TEXT,
    multipart INTEGER NOT NULL,
    nsegments INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS objects_key ON objects(bucket, key);
CREATE INDEX IF NOT EXISTS objects_ord ON objects(bucket, ord, key);
CREATE INDEX IF NOT EXISTS objects_parent ON objects(bucket, parent, ord, key);
CREATE TABLE IF NOT EXISTS segments(
    oid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    blob TEXT NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY(oid, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs(
    bucket TEXT NOT NULL,
    prefix BLOB NOT NULL,
    parent BLOB NOT NULL,
    ord INTEGER NOT NULL,
    refs INTEGER NOT NULL,
    PRIMARY KEY(bucket, prefix)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dirs_parent ON dirs(bucket, parent, ord, prefix);
CREATE TABLE IF NOT EXISTS uploads(
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key BLOB NOT NULL,
    ord INTEGER NOT NULL,
    initiated REAL NOT NULL,
    content_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    user_metadata TEXT NOT NULL,
    checksum_algorithm TEXT,
    checksum_type TEXT
);
CREATE INDEX IF NOT EXISTS uploads_key ON uploads(bucket, key, upload_id);
CREATE TABLE IF NOT EXISTS parts(
    upload_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    md5 TEXT NOT NULL,
    last_modified REAL NOT NULL,
    checksum TEXT,
    PRIMARY KEY(upload_id, number)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class _Bucket:
    info: BucketInfo
    salt: bytes

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def directory(self) -> bool:
        return self.info.directory

    @property
    def storage_class(self) -> str:
        return "EXPRESS_ONEZONE" if self.info.directory else "STANDARD"

    def ord(self, key: bytes) -> int:
        return _ord(self.salt, key)


class _ConnHolder:
    """Weak-referenceable owner of one thread's connection (dies with the thread's local storage)."""

    __slots__ = ("db", "__weakref__")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db


class _Tx:
    """State of one write transaction: blobs placed into blobs/ and blobs to free after commit."""

    def __init__(self, store: Store, db: sqlite3.Connection) -> None:
        self.store = store
        self.db = db
        self.added: list[str] = []
        self.dropped: list[str] = []
        self.on_commit: list[Callable[[], None]] = []

    def execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def bucket(self, name: str) -> _Bucket:
        row = self.db.execute("SELECT name, directory, region, zone, created, salt FROM buckets WHERE name=?",
                              (name,)).fetchone()
        if row is None:
            raise no_such_bucket(name)
        return Store._bucket_from_row(row)

    def current(self, bucket: _Bucket, key: bytes) -> tuple | None:
        return self.db.execute(f"SELECT {_OCOLS} FROM objects WHERE bucket=? AND key=?", (bucket.name, key)).fetchone()

    def meta(self, bucket: _Bucket, row: tuple | None) -> ObjectMeta | None:
        if row is None:
            return None
        return self.store._meta(bucket, row, self.store._part_sizes(self.db, row))

    def adopt(self, staged: Staged) -> str:
        """Move a staged body into blobs/ (before the commit that references it)."""
        name = secrets.token_hex(16)
        target = self.store._blob_path(name)
        os.rename(staged.path, target)
        self.added.append(name)
        if self.store.fsync:
            _fsync_dir(target.parent)
        return name

    def drop_object(self, oid: int) -> None:
        self.dropped.extend(r[0] for r in self.db.execute("SELECT blob FROM segments WHERE oid=?", (oid,)))
        self.db.execute("DELETE FROM segments WHERE oid=?", (oid,))
        self.db.execute("DELETE FROM objects WHERE oid=?", (oid,))

    def add_refs(self, bucket: _Bucket, prefixes: Iterable[bytes]) -> None:
        if not bucket.directory:
            return
        self.db.executemany(
            "INSERT INTO dirs(bucket, prefix, parent, ord, refs) VALUES(?, ?, ?, ?, 1) "
            "ON CONFLICT(bucket, prefix) DO UPDATE SET refs = refs + 1",
            [(bucket.name, p, _dir_parent(p), bucket.ord(p)) for p in prefixes],
        )

    def release_refs(self, bucket: _Bucket, prefixes: Iterable[bytes]) -> None:
        if not bucket.directory:
            return
        params = [(bucket.name, p) for p in prefixes]
        self.db.executemany("UPDATE dirs SET refs = refs - 1 WHERE bucket=? AND prefix=?", params)
        self.db.executemany("DELETE FROM dirs WHERE bucket=? AND prefix=? AND refs <= 0", params)

    def move_refs(self, bucket: _Bucket, old: bytes | None, new: bytes | None) -> None:
        """Swap the references of key ``old`` for those of key ``new`` (either may be None)."""
        if not bucket.directory:
            return
        old_chain = _chain(old) if old is not None else []
        new_chain = _chain(new) if new is not None else []
        common = set(old_chain) & set(new_chain)
        self.add_refs(bucket, [p for p in new_chain if p not in common])
        self.release_refs(bucket, [p for p in old_chain if p not in common])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# Reading


class ObjectReader:
    """An immutable snapshot of one object: its metadata and the blobs holding its bytes.

    The blobs are pinned until :meth:`close`, so the bytes stay readable whatever writers do meanwhile.
    File descriptors are opened lazily (at most a few at once); an fd yielded by :meth:`pieces` stays
    valid until the iteration advances or the reader is closed.
    """

    def __init__(self, store: Store, meta: ObjectMeta, blobs: list[str]) -> None:
        self.meta = meta
        self._store = store
        self._blobs = blobs
        self._lengths = list(meta.part_sizes)
        self._starts: list[int] = []
        pos = 0
        for n in self._lengths:
            self._starts.append(pos)
            pos += n
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._closed = False

    def _fd(self, index: int) -> int:
        if self._closed:
            raise ValueError("reader is closed")
        fd = self._fds.get(index)
        if fd is not None:
            self._fds.move_to_end(index)
            return fd
        try:
            fd = os.open(self._store._blob_path(self._blobs[index]), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise internal_error() from None
        self._fds[index] = fd
        while len(self._fds) > _MAX_FDS_PER_READER:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def pieces(self, start: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(fd, offset_in_file, count) triples covering [start, start + length) of the object."""
        if start < 0 or length < 0 or start + length > self.meta.size:
            raise ValueError(f"range {start}+{length} outside object of size {self.meta.size}")
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while length > 0:
            offset = start - self._starts[i]
            count = min(self._lengths[i] - offset, length)
            if count > 0:
                yield self._fd(i), offset, count
                start += count
                length -= count
            i += 1

    def read(self, start: int, length: int) -> bytes:
        out = []
        for fd, offset, count in self.pieces(start, length):
            while count > 0:
                data = os.pread(fd, min(count, 16 * MiB), offset)
                if not data:
                    raise internal_error()
                out.append(data)
                offset += len(data)
                count -= len(data)
        return b"".join(out)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._store._unpin(self._blobs)

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------------
# The store


class Store:
    def __init__(self, root: Path | str, *, fsync: bool = False, min_part_size: int = MIN_PART_SIZE) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.min_part_size = min_part_size
        self.root.mkdir(parents=True, exist_ok=True)
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        self._dbpath = self.root / "localzone.sqlite3"
        self._lockfd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lockfd)
            raise RuntimeError(f"{self.root} is in use by another Store") from None
        self._closed = False
        self._local = threading.local()
        self._conns: weakref.WeakSet[_ConnHolder] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._wlock = threading.Lock()
        # Reentrant: an ObjectReader finalised by the cyclic GC while this thread holds the lock unpins.
        self._pin_lock = threading.RLock()
        self._pins: dict[str, int] = {}
        self._deferred: set[str] = set()
        self._unlink_gen = 0
        try:
            self._blobs.mkdir(exist_ok=True)
            for i in range(256):
                (self._blobs / f"{i:02x}").mkdir(exist_ok=True)
            if self._tmp.exists():
                shutil.rmtree(self._tmp)
            self._tmp.mkdir()
            db = self._db()
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._buckets: dict[str, _Bucket] = {
                r[0]: self._bucket_from_row(r)
                for r in db.execute("SELECT name, directory, region, zone, created, salt FROM buckets")
            }
            self._collect_garbage(db)
        except BaseException:
            self.close()
            raise

    # -- plumbing -------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        holder = getattr(self._local, "holder", None)
        if holder is None:
            if self._closed:
                raise RuntimeError("store is closed")
            db = sqlite3.connect(self._dbpath, isolation_level=None, check_same_thread=False, timeout=30.0,
                                 cached_statements=256)
            db.execute("PRAGMA busy_timeout=30000")
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            holder = _ConnHolder(db)
            self._local.holder = holder
            with self._conns_lock:
                self._conns.add(holder)
        return holder.db

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._conns_lock:
            holders = list(self._conns)
        for h in holders:
            with contextlib.suppress(Exception):
                h.db.close()
        self._local = threading.local()
        with contextlib.suppress(OSError):
            fcntl.flock(self._lockfd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(self._lockfd)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _blob_path(self, name: str) -> Path:
        return self._blobs / name[:2] / name

    def _collect_garbage(self, db: sqlite3.Connection) -> None:
        referenced = {r[0] for r in db.execute("SELECT blob FROM segments UNION ALL SELECT blob FROM parts")}
        for sub in os.scandir(self._blobs):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if entry.name not in referenced:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Tx]:
        db = self._db()
        with self._wlock:
            db.execute("BEGIN IMMEDIATE")
            tx = _Tx(self, db)
            try:
                yield tx
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                for name in tx.added:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._blob_path(name))
                raise
            for callback in tx.on_commit:
                callback()
        if tx.dropped:
            self._free(tx.dropped)

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        db = self._db()
        if db.in_transaction:  # e.g. a precondition reading inside a write transaction
            yield db
            return
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def _free(self, names: list[str]) -> None:
        """Unlink blobs dropped by a committed transaction (later, for those a reader has pinned)."""
        with self._pin_lock:
            self._unlink_gen += 1
            for name in names:
                if name in self._pins:
                    self._deferred.add(name)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._blob_path(name))

    def _pin(self, names: list[str], generation: int) -> bool:
        """Pin a snapshot's blobs; False if one of them was already unlinked (take a new snapshot)."""
        with self._pin_lock:
            for name in names:
                self._pins[name] = self._pins.get(name, 0) + 1
            changed = self._unlink_gen != generation
        # Unlinks happen under _pin_lock, so a pinned blob that exists now stays.
        if changed and not all(self._blob_path(n).exists() for n in names):
            self._unpin(names)
            return False
        return True

    def _unpin(self, names: list[str]) -> None:
        with self._pin_lock:
            for name in names:
                count = self._pins[name] - 1
                if count:
                    self._pins[name] = count
                else:
                    del self._pins[name]
                    if name in self._deferred:
                        self._deferred.discard(name)
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._blob_path(name))

    @staticmethod
    def _bucket_from_row(row: tuple) -> _Bucket:
        name, directory, region, zone, created, salt = row
        return _Bucket(BucketInfo(name, bool(directory), region, zone, created), salt)

    def _cached_bucket(self, name: str) -> _Bucket:
        b = self._buckets.get(name)
        if b is None:
            raise no_such_bucket(name)
        return b

    @staticmethod
    def _part_sizes(db: sqlite3.Connection, row: tuple) -> tuple[int, ...]:
        if row[_O_NSEG] == 1:
            return (row[_O_SIZE],)
        return tuple(r[0] for r in db.execute("SELECT length FROM segments WHERE oid=? ORDER BY seq", (row[_O_OID],)))

    @staticmethod
    def _meta(bucket: _Bucket, row: tuple, part_sizes: tuple[int, ...]) -> ObjectMeta:
        return ObjectMeta(
            bucket=bucket.name,
            key=row[_O_KEY].decode("utf-8"),
            size=row[_O_SIZE],
            etag=row[_O_ETAG],
            last_modified=row[_O_LM],
            content_type=row[_O_CT],
            headers=json.loads(row[_O_HDR]),
            user_metadata=json.loads(row[_O_UM]),
            checksum_algorithm=row[_O_CA],
            checksum=row[_O_CS],
            checksum_type=row[_O_CTYPE],
            part_sizes=part_sizes,
            multipart=bool(row[_O_MP]),
            storage_class=bucket.storage_class,
        )

    def _insert_object(self, tx: _Tx, bucket: _Bucket, key: bytes, *, size: int, etag: str, last_modified: float,
                       content_type: str, headers: str, user_metadata: str, checksum_algorithm: str | None,
                       checksum: str | None, checksum_type: str | None, multipart: bool,
                       segments: list[tuple[str, int]]) -> int:
        cur = tx.execute(
            "INSERT INTO objects(bucket, key, parent, ord, size, etag, last_modified, content_type, headers, "
            "user_metadata, checksum_algorithm, checksum, checksum_type, multipart, nsegments) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (bucket.name, key, _parent(key), bucket.ord(key), size, etag, last_modified, content_type, headers,
             user_metadata, checksum_algorithm, checksum, checksum_type, int(multipart), len(segments)),
        )
        oid = cur.lastrowid
        tx.db.executemany("INSERT INTO segments(oid, seq, blob, length) VALUES(?, ?, ?, ?)",
                          [(oid, i, blob, length) for i, (blob, length) in enumerate(segments)])
        return oid

    # -- buckets --------------------------------------------------------------------------------

    def create_bucket(self, name: str, *, directory: bool, region: str, zone: str | None) -> BucketInfo:
        with self._write() as tx:
            if tx.execute("SELECT 1 FROM buckets WHERE name=?", (name,)).fetchone():
                raise S3Error(409, "BucketAlreadyOwnedByYou",
                              "Your previous request to create the named bucket succeeded and you already own it.",
                              {"BucketName": name})
            row = (name, int(directory), region, zone, time.time(), os.urandom(16))
            tx.execute("INSERT INTO buckets(name, directory, region, zone, created, salt) VALUES(?, ?, ?, ?, ?, ?)", row)
            bucket = self._bucket_from_row(row)
            tx.on_commit.append(lambda: self._buckets.__setitem__(name, bucket))
        return bucket.info

    def get_bucket(self, name: str) -> BucketInfo | None:
        b = self._buckets.get(name)
        return b.info if b else None

    def list_buckets(self) -> list[BucketInfo]:
        return [b.info for _, b in sorted(self._buckets.items())]

    def delete_bucket(self, name: str) -> None:
        with self._write() as tx:
            tx.bucket(name)
            if (tx.execute("SELECT 1 FROM objects WHERE bucket=? LIMIT 1", (name,)).fetchone()
                    or tx.execute("SELECT 1 FROM uploads WHERE bucket=? LIMIT 1", (name,)).fetchone()):
                raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty",
                              {"BucketName": name})
            tx.execute("DELETE FROM dirs WHERE bucket=?", (name,))
            tx.execute("DELETE FROM buckets WHERE name=?", (name,))
            tx.on_commit.append(lambda: self._buckets.pop(name, None))

    # -- staging --------------------------------------------------------------------------------

    def _new_tmp(self) -> Path:
        return self._tmp / secrets.token_hex(16)

    def stage(self, body: Any, algorithms: Iterable[str] = (), *, max_size: int | None = None) -> Staged:
        """Write ``body`` (anything with ``.read(n)``) to tmp/, computing MD5 and the requested checksums."""
        hashers = {a: new_hasher(a) for a in dict.fromkeys(algorithms)}
        md5 = hashlib.md5(usedforsecurity=False)
        path = self._new_tmp()
        size = 0
        try:
            with open(path, "xb") as f:
                while True:
                    chunk = body.read(CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if max_size is not None and size > max_size:
                        raise S3Error(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                                      {"MaxSizeAllowed": str(max_size)})
                    md5.update(chunk)
                    for h in hashers.values():
                        h.update(chunk)
                    f.write(chunk)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        digests = {a: h.digest() for a, h in hashers.items()}
        return Staged(path, size, md5.hexdigest(), {a: b64(d) for a, d in digests.items()}, digests)

    def stage_range(self, reader: ObjectReader, start: int, length: int, algorithms: Iterable[str] = (), *,
                    md5: bool = True) -> Staged:
        """Copy [start, start + length) of an open object into tmp/ (CopyObject, UploadPartCopy).

        When nothing needs hashing (``md5=False`` and no algorithms) the copy is done in the kernel with
        ``copy_file_range`` (a reflink on filesystems that support it); otherwise the bytes pass through
        here once, hashed on the way.
        """
        algos = list(dict.fromkeys(algorithms))
        hashers = {a: new_hasher(a) for a in algos}
        m = hashlib.md5(usedforsecurity=False) if md5 else None
        path = self._new_tmp()
        try:
            with open(path, "xb", buffering=0) as f:
                out = f.fileno()
                for fd, offset, count in reader.pieces(start, length):
                    if m is None and not hashers and _copy_range(fd, offset, count, out):
                        continue
                    while count > 0:
                        data = os.pread(fd, min(count, CHUNK), offset)
                        if not data:
                            raise internal_error()
                        if m is not None:
                            m.update(data)
                        for h in hashers.values():
                            h.update(data)
                        view = memoryview(data)
                        while view:
                            view = view[os.write(out, view):]
                        offset += len(data)
                        count -= len(data)
                if self.fsync:
                    os.fsync(out)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        digests = {a: h.digest() for a, h in hashers.items()}
        return Staged(path, length, m.hexdigest() if m is not None else "", {a: b64(d) for a, d in digests.items()},
                      digests)

    # -- objects --------------------------------------------------------------------------------

    def head(self, bucket: str, key: str) -> ObjectMeta | None:
        b = self._cached_bucket(bucket)
        db = self._db()
        row = db.execute(f"SELECT {_OCOLS} FROM objects WHERE bucket=? AND key=?", (bucket, _enc(key))).fetchone()
        if row is None:
            return None
        if row[_O_NSEG] == 1:
            return self._meta(b, row, (row[_O_SIZE],))
        with self._read() as db:  # row and segments from one snapshot
            row = db.execute(f"SELECT {_OCOLS} FROM objects WHERE bucket=? AND key=?", (bucket, _enc(key))).fetchone()
            if row is None:
                return None
            return self._meta(b, row, self._part_sizes(db, row))

    def open(self, bucket: str, key: str) -> ObjectReader | None:
        b = self._cached_bucket(bucket)
        kb = _enc(key)
        for _attempt in range(100):
            generation = self._unlink_gen
            with self._read() as db:
                row = db.execute(f"SELECT {_OCOLS} FROM objects WHERE bucket=? AND key=?", (bucket, kb)).fetchone()
                if row is None:
                    return None
                segs = db.execute("SELECT blob, length FROM segments WHERE oid=? ORDER BY seq", (row[_O_OID],)).fetchall()
            blobs = [s[0] for s in segs]
            if self._pin(blobs, generation):
                return ObjectReader(self, self._meta(b, row, tuple(s[1] for s in segs)), blobs)
        raise internal_error()

    def put(self, bucket: str, key: str, staged: Staged, *, content_type: str = "binary/octet-stream",
            headers: dict[str, str] | None = None, user_metadata: dict[str, str] | None = None,
            checksum_algorithm: str | None = None, checksum: str | None = None, checksum_type: str | None = None,
            precondition: Precondition | None = None) -> ObjectMeta:
        """Create or replace an object with a staged body (which the store takes over).

        ETag: 32 random lowercase alphanumerics in a directory bucket, the MD5 hex of the content otherwise.
        With ``checksum_algorithm`` and no ``checksum`` the staged digest is used (computed if missing).
        """
        try:
            kb = _enc(key)
            if checksum_algorithm and checksum is None:
                _complete_digests(staged, [checksum_algorithm])
                checksum = staged.checksums[checksum_algorithm]
            if checksum_algorithm and checksum_type is None:
                checksum_type = "FULL_OBJECT"
            with self._write() as tx:
                b = tx.bucket(bucket)
                current = tx.current(b, kb)
                if precondition is not None:
                    precondition(tx.meta(b, current))
                if not b.directory:
                    _complete_digests(staged, (), md5=True)
                etag = _random_etag() if b.directory else staged.md5_hex
                blob = tx.adopt(staged)
                if current is not None:
                    tx.drop_object(current[_O_OID])
                else:
                    tx.add_refs(b, _chain(kb))
                now = time.time()
                fields = dict(size=staged.size, etag=etag, last_modified=now, content_type=content_type,
                              headers=_dumps(headers), user_metadata=_dumps(user_metadata),
                              checksum_algorithm=checksum_algorithm if checksum else None,
                              checksum=checksum, checksum_type=checksum_type if checksum else None)
                self._insert_object(tx, b, kb, multipart=False, segments=[(blob, staged.size)], **fields)
                return ObjectMeta(
                    bucket=bucket, key=key, size=staged.size, etag=etag, last_modified=now, content_type=content_type,
                    headers=json.loads(fields["headers"]), user_metadata=json.loads(fields["user_metadata"]),
                    checksum_algorithm=fields["checksum_algorithm"], checksum=checksum,
                    checksum_type=fields["checksum_type"], part_sizes=(staged.size,), multipart=False,
                    storage_class=b.storage_class,
                )
        finally:
            staged.discard()

    def append(self, bucket: str, key: str, staged: Staged, *, offset: int, precondition: Precondition | None = None,
               content_type: str = "binary/octet-stream", headers: dict[str, str] | None = None,
               user_metadata: dict[str, str] | None = None, checksum_algorithm: str | None = None,
               checksum: str | None = None, checksum_type: str | None = None) -> ObjectMeta:
        """S3 Express append (PutObject with x-amz-write-offset-bytes): add ``staged`` as a new segment.

        * ``offset`` 0 on a missing key creates the object (with ``content_type``, ``headers``,
          ``user_metadata``; its checksum is ``checksum_algorithm``'s, or, if none is named, the single
          algorithm ``staged`` was hashed with, as FULL_OBJECT); a non-zero offset on a missing key is
          404 NoSuchKey; otherwise ``offset`` must equal the current size (400 InvalidWriteOffset).
        * An empty body is 400 InvalidArgument; more than 10,000 segments is 400 TooManyParts.
        * Every append gives a new random ETag and a new last-modified time; content type and metadata
          of an existing object are kept (the metadata arguments are ignored then).
        * Checksums: a FULL_OBJECT CRC32 or CRC32C checksum is extended (``combine_crc``) with the
          appended bytes' CRC, without rereading the object. Any other checksum (SHA1/SHA256, or a
          COMPOSITE multipart checksum) cannot be extended and is dropped: the object then has none.
        * The precondition sees the current object (or None) before the offset is checked.
        """
        try:
            if staged.size == 0:
                raise invalid_argument("The request body of an append (write offset) PUT must not be empty.",
                                       "x-amz-write-offset-bytes", str(offset))
            kb = _enc(key)
            # Hash the new bytes with the object's CRC algorithm now, outside the write lock, if needed.
            existing = self.head(bucket, key)
            if existing is not None and existing.checksum_type == "FULL_OBJECT" and existing.checksum_algorithm in _CRCS:
                _complete_digests(staged, [existing.checksum_algorithm])
            with self._write() as tx:
                b = tx.bucket(bucket)
                current = tx.current(b, kb)
                if precondition is not None:
                    precondition(tx.meta(b, current))
                now = time.time()
                if current is None:
                    if offset != 0:
                        raise no_such_key(key)
                    algo = checksum_algorithm
                    if algo is None and len(staged.checksums) == 1:
                        algo = next(iter(staged.checksums))
                    if algo and checksum is None:
                        _complete_digests(staged, [algo])
                        checksum = staged.checksums[algo]
                    ctype = (checksum_type or "FULL_OBJECT") if algo else None
                    etag = _random_etag()
                    blob = tx.adopt(staged)
                    tx.add_refs(b, _chain(kb))
                    hdr, um = _dumps(headers), _dumps(user_metadata)
                    self._insert_object(tx, b, kb, size=staged.size, etag=etag, last_modified=now,
                                        content_type=content_type, headers=hdr, user_metadata=um,
                                        checksum_algorithm=algo, checksum=checksum, checksum_type=ctype,
                                        multipart=False, segments=[(blob, staged.size)])
                    return ObjectMeta(bucket, key, staged.size, etag, now, content_type, json.loads(hdr),
                                      json.loads(um), algo, checksum, ctype, (staged.size,), False, b.storage_class)
                size = current[_O_SIZE]
                if offset != size:
                    raise S3Error(400, "InvalidWriteOffset",
                                  "The write offset value that you provided does not match the current object size.")
                nseg = current[_O_NSEG]
                if nseg >= MAX_PARTS:
                    raise _too_many_parts()
                algo, value, ctype = current[_O_CA], current[_O_CS], current[_O_CTYPE]
                if ctype == "FULL_OBJECT" and algo in _CRCS and value:
                    _complete_digests(staged, [algo])  # only if the object changed since the head above
                    old = int.from_bytes(base64.b64decode(value), "big")
                    new = combine_crc(algo, old, staged.crc(algo), staged.size)
                    value = b64(new.to_bytes(4, "big"))
                else:
                    algo = value = ctype = None
                etag = _random_etag()
                blob = tx.adopt(staged)
                oid = current[_O_OID]
                tx.execute("INSERT INTO segments(oid, seq, blob, length) VALUES(?, ?, ?, ?)", (oid, nseg, blob, staged.size))
                tx.execute("UPDATE objects SET size=?, etag=?, last_modified=?, checksum_algorithm=?, checksum=?, "
                           "checksum_type=?, multipart=1, nsegments=? WHERE oid=?",
                           (size + staged.size, etag, now, algo, value, ctype, nseg + 1, oid))
                row = tx.current(b, kb)
                return self._meta(b, row, self._part_sizes(tx.db, row))
        finally:
            staged.discard()

    def delete(self, bucket: str, key: str, *, precondition: Precondition | None = None) -> bool:
        kb = _enc(key)
        with self._write() as tx:
            b = tx.bucket(bucket)
            current = tx.current(b, kb)
            if precondition is not None:
                precondition(tx.meta(b, current))
            if current is None:
                return False
            tx.drop_object(current[_O_OID])
            tx.release_refs(b, _chain(kb))
            return True

    def rename(self, bucket: str, src_key: str, dst_key: str, *, src_precondition: Precondition | None = None,
               dst_precondition: Precondition | None = None) -> ObjectMeta:
        """Move an object to another key in one transaction, keeping ETag, checksums, metadata and dates.

        A missing source is 404 NoSuchKey; an existing destination is replaced. Key shapes are the
        caller's business. Renaming a key onto itself only checks the preconditions.
        """
        skb, dkb = _enc(src_key), _enc(dst_key)
        with self._write() as tx:
            b = tx.bucket(bucket)
            src = tx.current(b, skb)
            if src is None:
                raise no_such_key(src_key)
            src_meta = tx.meta(b, src)
            if src_precondition is not None:
                src_precondition(src_meta)
            dst = tx.current(b, dkb)
            if dst_precondition is not None:
                dst_precondition(tx.meta(b, dst))
            if skb == dkb:
                return src_meta
            if dst is not None:
                tx.drop_object(dst[_O_OID])
                tx.release_refs(b, _chain(skb))
            else:
                tx.move_refs(b, skb, dkb)
            tx.execute("UPDATE objects SET key=?, parent=?, ord=? WHERE oid=?",
                       (dkb, _parent(dkb), b.ord(dkb), src[_O_OID]))
            return dataclasses.replace(src_meta, key=dst_key)

    # -- multipart uploads ----------------------------------------------------------------------

    def create_upload(self, bucket: str, key: str, *, content_type: str = "binary/octet-stream",
                      headers: dict[str, str] | None = None, user_metadata: dict[str, str] | None = None,
                      checksum_algorithm: str | None = None, checksum_type: str | None = None) -> str:
        """Start a multipart upload; the id sorts by creation time (then randomly), and is url-safe."""
        kb = _enc(key)
        upload_id = f"{time.time_ns():016x}" + secrets.token_urlsafe(48)
        if checksum_algorithm and checksum_type is None:
            checksum_type = "COMPOSITE"
        with self._write() as tx:
            b = tx.bucket(bucket)
            tx.execute(f"INSERT INTO uploads(bucket, {_UCOLS}) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (bucket, upload_id, kb, b.ord(kb), time.time(), content_type, _dumps(headers),
                        _dumps(user_metadata), checksum_algorithm, checksum_type if checksum_algorithm else None))
            tx.add_refs(b, _chain(kb))
        return upload_id

    @staticmethod
    def _upload_info(bucket: _Bucket, row: tuple) -> UploadInfo:
        upload_id, key, _ord, initiated, ct, hdr, um, ca, ctype = row
        return UploadInfo(upload_id, bucket.name, key.decode("utf-8"), initiated, ct, json.loads(hdr), json.loads(um),
                          ca, ctype, bucket.storage_class)

    def get_upload(self, bucket: str, upload_id: str) -> UploadInfo | None:
        b = self._cached_bucket(bucket)
        row = self._db().execute(f"SELECT {_UCOLS} FROM uploads WHERE upload_id=? AND bucket=?",
                                 (upload_id, bucket)).fetchone()
        return self._upload_info(b, row) if row else None

    def put_part(self, bucket: str, upload_id: str, part_number: int, staged: Staged, *,
                 checksum: str | None = None) -> PartInfo:
        """Store (or replace) one part. Its ETag is the MD5 hex (general) or random (directory bucket).

        If the upload has a checksum algorithm and no ``checksum`` is given, the staged digest is
        used (computed if the body was staged without it).
        """
        try:
            if not 1 <= part_number <= MAX_PARTS:
                raise invalid_argument("Part number must be an integer between 1 and 10000, inclusive",
                                       "partNumber", str(part_number))
            upload = self.get_upload(bucket, upload_id)
            if upload is None:
                raise no_such_upload(upload_id)
            algo = upload.checksum_algorithm
            if algo and checksum is None:
                _complete_digests(staged, [algo])
                checksum = staged.checksums[algo]
            with self._write() as tx:
                b = tx.bucket(bucket)
                if not tx.execute("SELECT 1 FROM uploads WHERE upload_id=? AND bucket=?", (upload_id, bucket)).fetchone():
                    raise no_such_upload(upload_id)
                _complete_digests(staged, (), md5=not b.directory)
                etag = _random_etag() if b.directory else staged.md5_hex
                old = tx.execute("SELECT blob FROM parts WHERE upload_id=? AND number=?", (upload_id, part_number)).fetchone()
                if old:
                    tx.dropped.append(old[0])
                blob = tx.adopt(staged)
                now = time.time()
                tx.execute("INSERT OR REPLACE INTO parts(upload_id, number, blob, size, etag, md5, last_modified, checksum) "
                           "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                           (upload_id, part_number, blob, staged.size, etag, staged.md5_hex, now, checksum))
                return PartInfo(part_number, staged.size, etag, now, checksum)
        finally:
            staged.discard()

    def list_parts(self, bucket: str, upload_id: str, *, marker: int = 0,
                   max_parts: int = 1000) -> tuple[list[PartInfo], bool, int]:
        """Parts numbered above ``marker``, ascending: (parts, truncated, next marker)."""
        self._cached_bucket(bucket)
        with self._read() as db:
            if not db.execute("SELECT 1 FROM uploads WHERE upload_id=? AND bucket=?", (upload_id, bucket)).fetchone():
                raise no_such_upload(upload_id)
            rows = db.execute("SELECT number, size, etag, last_modified, checksum FROM parts "
                              "WHERE upload_id=? AND number>? ORDER BY number LIMIT ?",
                              (upload_id, marker, max_parts + 1)).fetchall()
        parts = [PartInfo(*r) for r in rows[:max_parts]]
        truncated = len(rows) > max_parts
        return parts, truncated, (parts[-1].number if parts else marker)

    def complete_upload(self, bucket: str, upload_id: str, parts: list[tuple[int, str]], *,
                        precondition: Precondition | None = None) -> ObjectMeta:
        """Turn the chosen parts into the object (their blobs become its segments; no byte is copied).

        Checks, in order: empty list (MalformedXML), ascending numbers (InvalidPartOrder), directory
        buckets: exactly 1..N (InvalidPartOrder), each part uploaded with that ETag (InvalidPart), every
        part but the last at least ``min_part_size`` (EntityTooSmall), then the precondition.
        ETag: random (directory) or MD5 of the binary part MD5s + '-N'. Checksum with the upload's
        algorithm: COMPOSITE (checksum of part checksums, '-N'), or for a CRC with checksum type
        FULL_OBJECT the CRC of the whole object (combined from the part CRCs).
        """
        with self._write() as tx:
            b = tx.bucket(bucket)
            urow = tx.execute(f"SELECT {_UCOLS} FROM uploads WHERE upload_id=? AND bucket=?", (upload_id, bucket)).fetchone()
            if urow is None:
                raise no_such_upload(upload_id)
            upload = self._upload_info(b, urow)
            if not parts:
                raise malformed_xml()
            numbers = [n for n, _ in parts]
            if any(a >= c for a, c in zip(numbers, numbers[1:])):
                raise _invalid_part_order()
            if b.directory and numbers != list(range(1, len(numbers) + 1)):
                raise _invalid_part_order("Part numbers must be consecutive, starting from 1, for directory buckets: "
                                          "the parts list must name parts 1 to N in order.")
            stored = {r[0]: r[1:] for r in tx.execute(
                "SELECT number, blob, size, etag, md5, checksum FROM parts WHERE upload_id=?", (upload_id,))}
            chosen = []
            for number, etag in parts:
                etag = etag.strip().strip('"')
                part = stored.get(number)
                if part is None or part[2] != etag:
                    raise _invalid_part(upload_id, number, etag)
                chosen.append((number, *part))
            for number, _blob, size, etag, _md5, _cs in chosen[:-1]:
                if size < self.min_part_size:
                    raise S3Error(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size",
                                  {"ProposedSize": str(size), "MinSizeAllowed": str(self.min_part_size),
                                   "PartNumber": str(number), "ETag": etag})
            kb = urow[1]
            current = tx.current(b, kb)
            if precondition is not None:
                precondition(tx.meta(b, current))
            n = len(chosen)
            if b.directory:
                etag = _random_etag()
            else:
                joined = b"".join(bytes.fromhex(c[4]) for c in chosen)
                etag = f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{n}"
            algo, ctype, checksum = upload.checksum_algorithm, upload.checksum_type, None
            if algo:
                values = [c[5] for c in chosen]
                if any(v is None for v in values):
                    algo = ctype = None  # cannot happen through put_part; be safe
                elif ctype == "FULL_OBJECT" and algo in _CRCS:
                    crc = 0
                    for c in chosen:
                        crc = combine_crc(algo, crc, int.from_bytes(base64.b64decode(c[5]), "big"), c[2])
                    checksum = b64(crc.to_bytes(4, "big"))
                else:
                    ctype = "COMPOSITE"
                    checksum = composite(algo, values)
            used = {c[1] for c in chosen}
            tx.dropped.extend(p[0] for p in stored.values() if p[0] not in used)
            tx.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
            tx.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))
            if current is not None:
                tx.drop_object(current[_O_OID])
                tx.release_refs(b, _chain(kb))  # the object keeps its refs; the upload's go
            # else: the upload's dir refs become the object's
            now = time.time()
            segments = [(c[1], c[2]) for c in chosen]
            size = sum(c[2] for c in chosen)
            hdr, um = _dumps(upload.headers), _dumps(upload.user_metadata)
            self._insert_object(tx, b, kb, size=size, etag=etag, last_modified=now, content_type=upload.content_type,
                                headers=hdr, user_metadata=um, checksum_algorithm=algo, checksum=checksum,
                                checksum_type=ctype, multipart=True, segments=segments)
            return ObjectMeta(bucket, upload.key, size, etag, now, upload.content_type, json.loads(hdr), json.loads(um),
                              algo, checksum, ctype, tuple(c[2] for c in chosen), True, b.storage_class)

    def abort_upload(self, bucket: str, upload_id: str) -> None:
        with self._write() as tx:
            b = tx.bucket(bucket)
            row = tx.execute("SELECT key FROM uploads WHERE upload_id=? AND bucket=?", (upload_id, bucket)).fetchone()
            if row is None:
                raise no_such_upload(upload_id)
            tx.dropped.extend(r[0] for r in tx.execute("SELECT blob FROM parts WHERE upload_id=?", (upload_id,)))
            tx.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
            tx.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))
            tx.release_refs(b, _chain(row[0]))

    def list_uploads(self, bucket: str, *, prefix: str = "", delimiter: str | None = None,
                     key_marker: str | None = None, upload_id_marker: str | None = None,
                     max_uploads: int = 1000) -> UploadListing:
        """In-progress uploads under ``prefix``.

        General purpose: by key, then initiation time (upload ids sort that way); ``key_marker`` and
        ``upload_id_marker`` as in S3. Directory buckets: unordered (by the key's ord), prefix and
        delimiter rules as for ListObjectsV2, ``key_marker`` is the opaque NextKeyMarker of the
        previous page and ``upload_id_marker`` is ignored (unsupported there).
        """
        b = self._cached_bucket(bucket)
        delimiter = delimiter or None
        pb = _enc(prefix)
        if b.directory:
            self._check_directory_listing(prefix, delimiter)
        db_ = self._db()
        params: list[Any] = [bucket, pb]
        sql = f"SELECT {_UCOLS} FROM uploads WHERE bucket=? AND key>=?"
        end = _succ(pb) if pb else None
        if end is not None:
            sql += " AND key<?"
            params.append(end)
        if not b.directory:
            # Everything before the marker's key can be skipped in SQL.
            if key_marker:
                params[1] = max(pb, _enc(key_marker))
        rows = db_.execute(sql + " ORDER BY key, upload_id", params).fetchall()
        db = delimiter.encode("utf-8") if delimiter else None

        # Each item: (sort key, kind, payload)
        items: dict[Any, tuple] = {}
        for row in rows:
            key = row[1]
            cp = None
            if db is not None:
                i = key.find(db, len(pb))
                if i >= 0:
                    cp = key[: i + len(db)]
            if cp is not None:
                sk = (b.ord(cp), cp, "") if b.directory else (cp, "")
                items.setdefault(sk, (sk, "p", cp))
            else:
                sk = (row[2], key, row[0]) if b.directory else (key, row[0])
                items[sk] = (sk, "u", row)
        ordered = sorted(items.values(), key=lambda it: it[0])

        if b.directory:
            if key_marker:
                raw = _untoken(key_marker, b"U")
                if raw is None or len(raw) < 10:
                    raise invalid_argument("Invalid key marker", "key-marker", key_marker)
                (mord, klen), rest = struct.unpack(">QH", raw[:10]), raw[10:]
                pos = (mord, rest[:klen], rest[klen:].decode("ascii", "replace"))
                ordered = [it for it in ordered if it[0] > pos]
        elif key_marker:
            km = _enc(key_marker)
            um = upload_id_marker or None
            kept = []
            for it in ordered:
                if it[1] == "p":
                    if it[2] > km:
                        kept.append(it)
                else:
                    k, uid = it[0]
                    if k > km or (k == km and um is not None and uid > um):
                        kept.append(it)
            ordered = kept

        page = ordered[:max(max_uploads, 0)]
        truncated = len(ordered) > len(page)
        uploads, prefixes = [], []
        for _sk, kind, payload in page:
            if kind == "p":
                prefixes.append(payload.decode("utf-8"))
            else:
                uploads.append(self._upload_info(b, payload))
        next_key = next_uid = None
        if truncated and page:
            sk, kind, payload = page[-1]
            if b.directory:
                o, k, uid = sk
                next_key = _token(b"U", struct.pack(">QH", o, len(k)) + k + uid.encode("ascii"))
            elif kind == "p":
                next_key = payload.decode("utf-8")
            else:
                next_key, next_uid = payload[1].decode("utf-8"), payload[0]
        return UploadListing(uploads, prefixes, truncated, next_key, next_uid)

    # -- listing --------------------------------------------------------------------------------

    @staticmethod
    def _check_directory_listing(prefix: str, delimiter: str | None) -> None:
        if delimiter is not None and delimiter != "/":
            raise invalid_argument("Directory buckets support only '/' as a delimiter.", "delimiter", delimiter)
        if prefix and not prefix.endswith("/"):
            raise invalid_request("This bucket does not support a prefix that does not end in a delimiter. "
                                  "Specify a prefix path ending with a delimiter and try again.")

    def list_objects(self, bucket: str, *, prefix: str = "", delimiter: str | None = None, max_keys: int = 1000,
                     token: str | None = None, start_after: str | None = None) -> ObjectListing:
        """ListObjectsV2. General purpose buckets: S3 byte order; directory buckets: unordered."""
        b = self._cached_bucket(bucket)
        delimiter = delimiter or None
        if b.directory:
            self._check_directory_listing(prefix, delimiter)
            if start_after:
                raise invalid_argument("StartAfter is not supported by directory buckets.", "start-after", start_after)
            pos = None
            if token is not None:
                raw = _untoken(token, b"D")
                if raw is None or len(raw) < 8:
                    raise _bad_token(token)
                pos = (struct.unpack(">Q", raw[:8])[0], raw[8:])
            return self._list_directory(b, _enc(prefix), delimiter is not None, max_keys, pos)
        after = None
        if token is not None:
            after = _untoken(token, b"G")
            if after is None:
                raise _bad_token(token)
        elif start_after:
            after = _enc(start_after)
        listing, last = self._list_general(b, _enc(prefix), _enc(delimiter) if delimiter else None, max_keys, after)
        listing.next_token = _token(b"G", last) if listing.truncated and last is not None else None
        return listing

    def list_objects_v1(self, bucket: str, *, prefix: str = "", delimiter: str | None = None, max_keys: int = 1000,
                        marker: str | None = None) -> ObjectListing:
        """ListObjects (V1), general purpose buckets only; ``next_token`` is the NextMarker."""
        b = self._cached_bucket(bucket)
        if b.directory:
            raise S3Error(501, "NotImplemented", "ListObjects (version 1) is not supported for directory buckets.")
        delimiter = delimiter or None
        listing, last = self._list_general(b, _enc(prefix), _enc(delimiter) if delimiter else None, max_keys,
                                           _enc(marker) if marker else None)
        listing.next_token = last.decode("utf-8") if listing.truncated and last is not None else None
        return listing

    def _metas(self, db: sqlite3.Connection, b: _Bucket, rows: list[tuple]) -> list[ObjectMeta]:
        multi = [r[_O_OID] for r in rows if r[_O_NSEG] != 1]
        sizes: dict[int, list[int]] = {}
        for i in range(0, len(multi), 500):
            chunk = multi[i:i + 500]
            for oid, length in db.execute(
                    f"SELECT oid, length FROM segments WHERE oid IN ({','.join('?' * len(chunk))}) ORDER BY oid, seq",
                    chunk):
                sizes.setdefault(oid, []).append(length)
        return [self._meta(b, r, (r[_O_SIZE],) if r[_O_NSEG] == 1 else tuple(sizes.get(r[_O_OID], ()))) for r in rows]

    def _list_general(self, b: _Bucket, prefix: bytes, delim: bytes | None, max_keys: int,
                      after: bytes | None) -> tuple[ObjectListing, bytes | None]:
        """Byte-ordered listing with common prefixes found by skip-scanning.

        Everything returned is > ``after``; a common prefix <= ``after`` is skipped with its whole group
        (it was returned before, or ``after`` lies inside it), so a page may end on a prefix and the next
        one continues past it.
        """
        if max_keys <= 0:
            return ObjectListing([], [], False, None), None
        need = max_keys + 1
        end = _succ(prefix) if prefix else None
        if after is not None and after >= prefix:
            lo, inclusive = after, False
        else:
            lo, inclusive = prefix, True
        items: list[tuple[str, Any]] = []
        with self._read() as db:
            while len(items) < need and (end is None or lo < end):
                limit = need - len(items)
                sql = (f"SELECT {_OCOLS} FROM objects WHERE bucket=? AND key {'>=' if inclusive else '>'} ?"
                       + (" AND key < ?" if end is not None else "") + " ORDER BY key LIMIT ?")
                params = (b.name, lo, end, limit) if end is not None else (b.name, lo, limit)
                got = 0
                jumped = False
                for row in db.execute(sql, params):
                    got += 1
                    key = row[_O_KEY]
                    if delim is not None:
                        i = key.find(delim, len(prefix))
                        if i >= 0:
                            cp = key[: i + len(delim)]
                            if after is None or cp > after:
                                items.append(("p", cp))
                            nxt = _succ(cp)
                            if nxt is None:
                                lo, end = cp, cp  # nothing can follow
                            else:
                                lo, inclusive = nxt, True
                            jumped = True
                            break
                    items.append(("k", row))
                    lo, inclusive = key, False
                    if len(items) >= need:
                        break
                if not jumped and got < limit:
                    break
            page = items[:max_keys]
            contents = self._metas(db, b, [p for kind, p in page if kind == "k"])
        prefixes = [p.decode("utf-8") for kind, p in page if kind == "p"]
        truncated = len(items) > max_keys
        last = None
        if page:
            kind, p = page[-1]
            last = p if kind == "p" else p[_O_KEY]
        return ObjectListing(contents, prefixes, truncated, None), last

    def _list_directory(self, b: _Bucket, prefix: bytes, delimited: bool, max_keys: int,
                        pos: tuple[int, bytes] | None) -> ObjectListing:
        """Unordered listing: items in (ord, key) order, the token being the last position returned."""
        if max_keys <= 0:
            return ObjectListing([], [], False, None)
        need = max_keys + 1
        o, k = pos if pos is not None else (-1, b"")
        with self._read() as db:
            if delimited:
                objs = db.execute(
                    f"SELECT {_OCOLS}, ord FROM objects WHERE bucket=? AND parent=? AND (ord, key) > (?, ?) "
                    "ORDER BY ord, key LIMIT ?", (b.name, prefix, o, k, need)).fetchall()
                dirs = db.execute(
                    "SELECT ord, prefix FROM dirs WHERE bucket=? AND parent=? AND (ord, prefix) > (?, ?) "
                    "ORDER BY ord, prefix LIMIT ?", (b.name, prefix, o, k, need)).fetchall()
                merged = list(heapq.merge(((r[-1], r[_O_KEY], "k", r) for r in objs),
                                          ((r[0], r[1], "p", r[1]) for r in dirs)))[:need]
            else:
                if not prefix:
                    sql = (f"SELECT {_OCOLS}, ord FROM objects INDEXED BY objects_ord WHERE bucket=? "
                           "AND (ord, key) > (?, ?) ORDER BY ord, key LIMIT ?")
                    params: tuple = (b.name, o, k, need)
                else:
                    refs = db.execute("SELECT refs FROM dirs WHERE bucket=? AND prefix=?", (b.name, prefix)).fetchone()
                    index = "objects_key" if refs is None or refs[0] <= _SORT_THRESHOLD else "objects_ord"
                    sql = (f"SELECT {_OCOLS}, ord FROM objects INDEXED BY {index} WHERE bucket=? AND key >= ? "
                           "AND key < ? AND (ord, key) > (?, ?) ORDER BY ord, key LIMIT ?")
                    params = (b.name, prefix, _succ(prefix), o, k, need)
                merged = [(r[-1], r[_O_KEY], "k", r) for r in db.execute(sql, params)]
            page = merged[:max_keys]
            contents = self._metas(db, b, [it[3][:-1] for it in page if it[2] == "k"])
        prefixes = [it[3].decode("utf-8") for it in page if it[2] == "p"]
        truncated = len(merged) > max_keys
        token = None
        if truncated:
            last = page[-1]
            token = _token(b"D", struct.pack(">Q", last[0]) + last[1])
        return ObjectListing(contents, prefixes, truncated, token)


def _copy_range(src: int, offset: int, count: int, dst: int) -> bool:
    """Kernel-side copy of ``count`` bytes from ``src`` at ``offset`` to the end of ``dst``; False if unsupported."""
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return False
    done = 0
    try:
        while done < count:
            n = copy(src, dst, count - done, offset + done)
            if n == 0:
                raise internal_error()
            done += n
    except OSError:
        if done:
            raise
        return False
    return True
