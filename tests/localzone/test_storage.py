"""Tests of the on-disk store of s3xfs-localzone (s3xfs/localzone/storage.py)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from pathlib import Path

import google_crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from s3xfs.localzone import storage
from s3xfs.localzone.checksums import b64, combine_crc, composite
from s3xfs.localzone.errors import S3Error
from s3xfs.localzone.storage import Store

GP = "general"
DX = "photos--usw2-az1--x-s3"
PROJECT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------
# helpers


def make_store(path: Path, **kw) -> Store:
    s = Store(path, **kw)
    if s.get_bucket(GP) is None:
        s.create_bucket(GP, directory=False, region="us-west-2", zone=None)
    if s.get_bucket(DX) is None:
        s.create_bucket(DX, directory=True, region="us-west-2", zone="usw2-az1")
    return s


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def small(tmp_path):
    """A store whose minimum part size is 1 byte, so multipart tests stay small."""
    s = make_store(tmp_path / "store", min_part_size=1)
    yield s
    s.close()


def stage(s: Store, data: bytes, algos=()):
    return s.stage(io.BytesIO(data), algos)


def put(s: Store, bucket: str, key: str, data: bytes, algo: str | None = None, **kw):
    st_ = stage(s, data, [algo] if algo else [])
    return s.put(bucket, key, st_, content_type=kw.pop("content_type", "text/plain"), headers=kw.pop("headers", {}),
                 user_metadata=kw.pop("user_metadata", {}), checksum_algorithm=algo, **kw)


def append(s: Store, bucket: str, key: str, data: bytes, offset: int, algo: str | None = None, **kw):
    return s.append(bucket, key, stage(s, data, [algo] if algo else []), offset=offset, **kw)


def read_all(s: Store, bucket: str, key: str) -> bytes | None:
    r = s.open(bucket, key)
    if r is None:
        return None
    with r:
        return r.read(0, r.meta.size)


def blob_files(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs").glob("*/*")}


def referenced(s: Store) -> set[str]:
    return {r[0] for r in s._db().execute("SELECT blob FROM segments UNION ALL SELECT blob FROM parts")}


def assert_no_orphans(s: Store) -> None:
    assert blob_files(s.root) == referenced(s)
    assert list((s.root / "tmp").iterdir()) == []


def dirs(s: Store, bucket: str = DX) -> dict[str, int]:
    return {p.decode(): r for p, r in s._db().execute("SELECT prefix, refs FROM dirs WHERE bucket=?", (bucket,))}


def list_all(s: Store, bucket: str, *, page: int = 1000, **kw) -> tuple[list[str], list[str], int]:
    keys, prefixes, pages, token = [], [], 0, None
    while True:
        res = s.list_objects(bucket, max_keys=page, token=token, **kw)
        pages += 1
        assert len(res.contents) + len(res.common_prefixes) <= page
        keys += [m.key for m in res.contents]
        prefixes += res.common_prefixes
        if not res.truncated:
            assert res.next_token is None
            return keys, prefixes, pages
        assert res.next_token
        token = res.next_token


def expected_dirs(objects, uploads=()) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in list(objects) + list(uploads):
        for i, ch in enumerate(key):
            if ch == "/":
                out[key[: i + 1]] = out.get(key[: i + 1], 0) + 1
    return out


def err(exc_info) -> tuple[int, str]:
    return exc_info.value.status, exc_info.value.code


# ------------------------------------------------------------------------------------------------
# checksums.combine_crc


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_combine_crc_matches_concatenation(a, b):
    assert combine_crc("CRC32", zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert combine_crc("CRC32C", google_crc32c.value(a), google_crc32c.value(b), len(b)) == google_crc32c.value(a + b)


def test_combine_crc_large_lengths_and_errors():
    a, b = os.urandom(1000), os.urandom(3 * 1024 * 1024 + 7)
    assert combine_crc("CRC32", zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    chain, crc = b"", 0
    for n in (1, 2, 1 << 16, 5):
        piece = os.urandom(n)
        crc = combine_crc("CRC32C", crc, google_crc32c.value(piece), n)
        chain += piece
    assert crc == google_crc32c.value(chain)
    with pytest.raises(ValueError):
        combine_crc("SHA1", 0, 0, 1)


# ------------------------------------------------------------------------------------------------
# buckets and staging


def test_buckets(tmp_path):
    s = Store(tmp_path / "s")
    info = s.create_bucket(DX, directory=True, region="us-west-2", zone="usw2-az1")
    assert info.directory and info.zone == "usw2-az1" and info.created > 0
    s.create_bucket(GP, directory=False, region="us-east-1", zone=None)
    with pytest.raises(S3Error) as e:
        s.create_bucket(GP, directory=False, region="us-east-1", zone=None)
    assert err(e) == (409, "BucketAlreadyOwnedByYou")
    assert [b.name for b in s.list_buckets()] == sorted([GP, DX])
    assert s.get_bucket("nope") is None
    put(s, GP, "x", b"1")
    with pytest.raises(S3Error) as e:
        s.delete_bucket(GP)
    assert err(e) == (409, "BucketNotEmpty")
    s.delete(GP, "x")
    uid = s.create_upload(GP, "u")
    with pytest.raises(S3Error) as e:
        s.delete_bucket(GP)
    assert err(e) == (409, "BucketNotEmpty")
    s.abort_upload(GP, uid)
    s.delete_bucket(GP)
    assert s.get_bucket(GP) is None
    for call in (lambda: s.head(GP, "x"), lambda: s.open(GP, "x"), lambda: put(s, GP, "x", b""),
                 lambda: s.delete(GP, "x"), lambda: s.list_objects(GP), lambda: s.delete_bucket(GP),
                 lambda: s.create_upload(GP, "k")):
        with pytest.raises(S3Error) as e:
            call()
        assert err(e) == (404, "NoSuchBucket")
    assert list((s.root / "tmp").iterdir()) == []
    s.close()
    s = Store(tmp_path / "s")
    assert [b.name for b in s.list_buckets()] == [DX]
    s.close()


def test_one_store_per_root(tmp_path):
    s = Store(tmp_path / "s")
    with pytest.raises(RuntimeError):
        Store(tmp_path / "s")
    s.close()
    Store(tmp_path / "s").close()


def test_stage_hashes_and_limits(store):
    data = os.urandom(3 * storage.CHUNK + 5)
    st_ = store.stage(io.BytesIO(data), ["CRC32", "CRC32C", "SHA256", "SHA1"])
    assert st_.size == len(data) and st_.md5_hex == hashlib.md5(data).hexdigest()
    assert st_.checksums["CRC32"] == b64(zlib.crc32(data).to_bytes(4, "big"))
    assert st_.checksums["CRC32C"] == b64(google_crc32c.value(data).to_bytes(4, "big"))
    assert st_.checksums["SHA256"] == b64(hashlib.sha256(data).digest())
    assert st_.crc("CRC32") == zlib.crc32(data)
    assert st_.path.read_bytes() == data
    st_.discard()
    st_.discard()
    assert not st_.path.exists()

    with pytest.raises(S3Error) as e:
        store.stage(io.BytesIO(b"x" * 101), max_size=100)
    assert err(e) == (400, "EntityTooLarge")
    store.stage(io.BytesIO(b"x" * 100), max_size=100).discard()

    class Broken:
        def __init__(self):
            self.n = 0

        def read(self, n):
            self.n += 1
            if self.n > 2:
                raise ConnectionResetError("client went away")
            return b"y" * 10

    with pytest.raises(ConnectionResetError):
        store.stage(Broken())
    assert list((store.root / "tmp").iterdir()) == []


def test_stage_range(small):
    s = small
    uid = s.create_upload(GP, "big")
    chunks = [os.urandom(n) for n in (1000, 1, 5000, 300)]
    parts = [(i + 1, s.put_part(GP, uid, i + 1, stage(s, c)).etag) for i, c in enumerate(chunks)]
    s.complete_upload(GP, uid, parts)
    whole = b"".join(chunks)
    with s.open(GP, "big") as r:
        for start, length, md5 in [(0, len(whole), True), (999, 2, True), (500, 5000, False), (0, 0, False),
                                   (1001, 5300, False)]:
            st_ = s.stage_range(r, start, length, [] if not md5 else ["CRC32"], md5=md5)
            assert st_.path.read_bytes() == whole[start:start + length]
            if md5:
                assert st_.md5_hex == hashlib.md5(whole[start:start + length]).hexdigest()
                assert st_.crc("CRC32") == zlib.crc32(whole[start:start + length])
            else:
                assert st_.md5_hex == ""
            # a general purpose put computes the missing MD5 itself
            meta = s.put(GP, "copy", st_)
            assert meta.etag == hashlib.md5(whole[start:start + length]).hexdigest()
    assert read_all(s, GP, "copy") == whole[1001:6301]
    assert_no_orphans(s)


# ------------------------------------------------------------------------------------------------
# objects


def test_put_head_open(store):
    m = put(store, GP, "dir/é.txt", b"hello world", "CRC32", headers={"Cache-Control": "no-cache"},
            user_metadata={"Color": "blue"}, content_type="text/x")
    assert m.etag == hashlib.md5(b"hello world").hexdigest()
    assert m.storage_class == "STANDARD" and not m.multipart and m.part_sizes == (11,)
    assert m.checksum == b64(zlib.crc32(b"hello world").to_bytes(4, "big")) and m.checksum_type == "FULL_OBJECT"
    h = store.head(GP, "dir/é.txt")
    assert h == m
    assert h.headers == {"cache-control": "no-cache"} and h.user_metadata == {"color": "blue"}
    assert h.content_type == "text/x"
    assert store.head(GP, "dir/") is None and store.head(GP, "dir/é.tx") is None
    assert read_all(store, GP, "dir/é.txt") == b"hello world"
    assert store.open(GP, "missing") is None

    d = put(store, DX, "a/b", b"")
    assert re.fullmatch(r"[a-z0-9]{32}", d.etag) and d.storage_class == "EXPRESS_ONEZONE"
    assert d.checksum is None and d.size == 0 and d.part_sizes == (0,)
    with store.open(DX, "a/b") as r:
        assert list(r.pieces(0, 0)) == [] and r.read(0, 0) == b""
        with pytest.raises(ValueError):
            list(r.pieces(0, 1))
    d2 = put(store, DX, "a/b", b"x")
    assert d2.etag != d.etag and len(referenced(store)) == 2
    assert_no_orphans(store)


def test_pieces_across_segments(small):
    s = small
    chunks = [os.urandom(n) for n in (7, 1, 20, 3, 0)]
    uid = s.create_upload(DX, "k")
    parts = [(i + 1, s.put_part(DX, uid, i + 1, stage(s, c)).etag) for i, c in enumerate(chunks)]
    m = s.complete_upload(DX, uid, parts)
    whole = b"".join(chunks)
    assert m.part_sizes == (7, 1, 20, 3, 0) and m.multipart and m.size == len(whole)
    assert s.head(DX, "k").part_sizes == m.part_sizes
    with s.open(DX, "k") as r:
        pieces = list(r.pieces(5, 20))
        assert [(off, cnt) for _, off, cnt in pieces] == [(5, 2), (0, 1), (0, 17)]
        assert len({fd for fd, _, _ in pieces}) == 3
        for start in range(len(whole) + 1):
            for length in range(len(whole) - start + 1):
                assert r.read(start, length) == whole[start:start + length]
                got = b"".join(os.pread(fd, cnt, off) for fd, off, cnt in r.pieces(start, length))
                assert got == whole[start:start + length]


def test_many_segments_bounded_fds(small):
    s = small
    data = b""
    for i in range(40):
        piece = bytes([i]) * (i + 1)
        append(s, DX, "log", piece, len(data))
        data += piece
    with s.open(DX, "log") as r:
        assert r.read(0, len(data)) == data
        assert len(r._fds) <= storage._MAX_FDS_PER_READER
        assert r.read(3, 500) == data[3:503]


def test_overwrite_and_delete_while_reader_open(store):
    old = os.urandom(100_000)
    put(store, DX, "f", old)
    r1 = store.open(DX, "f")
    r2 = store.open(DX, "f")
    put(store, DX, "f", b"new")
    assert read_all(store, DX, "f") == b"new"
    assert store.delete(DX, "f")
    assert store.open(DX, "f") is None
    assert r1.read(0, len(old)) == old and r1.meta.size == len(old)
    r1.close()
    assert r2.read(50_000, 10) == old[50_000:50_010]
    assert len(blob_files(store.root)) == 1  # still pinned by r2
    r2.close()
    r2.close()
    assert blob_files(store.root) == set()
    assert_no_orphans(store)


def test_precondition_runs_inside_write_transaction(store):
    put(store, GP, "k", b"one")
    seen = []

    def check(current):
        seen.append(current)
        # another connection cannot start a write while we are inside the transaction
        other = sqlite3.connect(store.root / "localzone.sqlite3", timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
        raise S3Error(412, "PreconditionFailed", "nope")

    before = blob_files(store.root)
    for action in (lambda: put(store, GP, "k", b"two", precondition=check),
                   lambda: put(store, GP, "new", b"two", precondition=check),
                   lambda: store.delete(GP, "k", precondition=check),
                   lambda: append(store, DX, "k", b"x", 0, precondition=check),
                   lambda: store.rename(DX, "k", "k2", src_precondition=check)):
        with pytest.raises(S3Error) as e:
            action()
        assert e.value.status in (412, 404)
    assert seen[0].etag == hashlib.md5(b"one").hexdigest() and seen[1] is None and seen[2].size == 3
    assert seen[3] is None
    assert read_all(store, GP, "k") == b"one" and store.head(GP, "new") is None
    assert blob_files(store.root) == before
    assert_no_orphans(store)

    # a passing precondition sees the current object and the write happens
    m = put(store, GP, "k", b"three", precondition=lambda cur: seen.append(cur))
    assert seen[-1].size == 3 and read_all(store, GP, "k") == b"three" and m.size == 5


def test_conditional_create_is_atomic_across_threads(store):
    winners = []
    barrier = threading.Barrier(8)

    def if_none_match(cur):
        if cur is not None:
            raise S3Error(412, "PreconditionFailed", "exists")

    def worker(i):
        st_ = stage(store, str(i).encode())
        barrier.wait()
        try:
            store.put(DX, "once", st_, precondition=if_none_match)
            winners.append(i)
        except S3Error:
            pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert read_all(store, DX, "once") == str(winners[0]).encode()
    assert_no_orphans(store)


def test_concurrent_writers_and_readers(store):
    """Readers always see a complete version (content checks itself), whatever writers do."""
    stop = time.monotonic() + 1.5
    failures = []

    def body(key, version):
        return (f"{key}:{version}:".encode() * (version % 50 + 1))[: 1 + version * 37 % 20_000]

    def writer(n):
        rng = random.Random(n)
        v = 0
        while time.monotonic() < stop:
            key = f"d{rng.randrange(3)}/k{rng.randrange(5)}"
            v += 1
            if rng.random() < 0.2:
                store.delete(DX, key)
            else:
                data = body(key, v * 10 + n)
                m = put(store, DX, key, data, "CRC32C")
                assert m.size == len(data)

    def reader(n):
        rng = random.Random(100 + n)
        while time.monotonic() < stop:
            key = f"d{rng.randrange(3)}/k{rng.randrange(5)}"
            r = store.open(DX, key)
            if r is None:
                continue
            with r:
                data = r.read(0, r.meta.size)
                if b64(google_crc32c.value(data).to_bytes(4, "big")) != r.meta.checksum:
                    failures.append((key, r.meta))
            store.list_objects(DX, prefix=key.split("/")[0] + "/", delimiter="/")

    def run(fn, n):
        try:
            fn(n)
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(writer, i)) for i in range(3)]
    threads += [threading.Thread(target=run, args=(reader, i)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    keys, _, _ = list_all(store, DX)
    assert dirs(store) == expected_dirs(keys)
    assert_no_orphans(store)


# ------------------------------------------------------------------------------------------------
# append


def test_append_rules(store, monkeypatch):
    with pytest.raises(S3Error) as e:
        append(store, DX, "log", b"abc", 5)
    assert err(e) == (404, "NoSuchKey")
    with pytest.raises(S3Error) as e:
        append(store, DX, "log", b"", 0)
    assert err(e) == (400, "InvalidArgument")
    m0 = append(store, DX, "log", b"abc", 0, content_type="text/plain", user_metadata={"a": "1"},
                headers={"cache-control": "x"})
    assert m0.size == 3 and not m0.multipart and m0.part_sizes == (3,) and m0.content_type == "text/plain"
    with pytest.raises(S3Error) as e:
        append(store, DX, "log", b"def", 2)
    assert err(e) == (400, "InvalidWriteOffset")
    assert "does not match the current object size" in e.value.message
    with pytest.raises(S3Error) as e:
        append(store, DX, "log", b"def", 4)
    assert err(e) == (400, "InvalidWriteOffset")
    time.sleep(0.01)
    m1 = append(store, DX, "log", b"defg", 3, content_type="ignored/type", user_metadata={"b": "2"})
    assert m1.size == 7 and m1.multipart and m1.part_sizes == (3, 4)
    assert m1.etag != m0.etag and re.fullmatch(r"[a-z0-9]{32}", m1.etag) and m1.last_modified > m0.last_modified
    assert m1.content_type == "text/plain" and m1.user_metadata == {"a": "1"} and m1.headers == {"cache-control": "x"}
    assert store.head(DX, "log") == m1
    assert read_all(store, DX, "log") == b"abcdefg"
    with pytest.raises(S3Error) as e:
        append(store, DX, "log", b"", 7)
    assert err(e) == (400, "InvalidArgument")

    monkeypatch.setattr(storage, "MAX_PARTS", 3)
    append(store, DX, "log", b"h", 7)
    with pytest.raises(S3Error) as e:
        append(store, DX, "log", b"i", 8)
    assert err(e) == (400, "TooManyParts")
    assert read_all(store, DX, "log") == b"abcdefgh"
    # an empty object made by a plain PUT can be appended to
    put(store, DX, "empty", b"")
    assert append(store, DX, "empty", b"z", 0).part_sizes == (0, 1)
    assert_no_orphans(store)


@pytest.mark.parametrize("algo", ["CRC32", "CRC32C"])
def test_append_extends_full_object_crc(store, algo):
    fn = zlib.crc32 if algo == "CRC32" else google_crc32c.value
    data = os.urandom(1000)
    m = put(store, DX, "obj", data, algo)
    for i in range(5):
        piece = os.urandom(1 + i * 977)
        # staged with the algorithm, or without it (the store hashes the new bytes itself)
        m = append(store, DX, "obj", piece, len(data), algo if i % 2 else None)
        data += piece
        assert m.checksum_algorithm == algo and m.checksum_type == "FULL_OBJECT"
        assert m.checksum == b64(fn(data).to_bytes(4, "big"))
    assert read_all(store, DX, "obj") == data
    # an object created by an append takes the staged algorithm
    m = append(store, DX, "new", b"abc", 0, algo)
    m = append(store, DX, "new", b"def", 3)
    assert m.checksum == b64(fn(b"abcdef").to_bytes(4, "big"))


def test_append_drops_unextendable_checksums(small):
    s = small
    m = put(s, DX, "sha", b"abc", "SHA256")
    assert m.checksum_algorithm == "SHA256"
    m = append(s, DX, "sha", b"d", 3, "SHA256")
    assert (m.checksum_algorithm, m.checksum, m.checksum_type) == (None, None, None)
    uid = s.create_upload(DX, "mp", checksum_algorithm="CRC32")
    e1 = s.put_part(DX, uid, 1, stage(s, b"aa")).etag
    m = s.complete_upload(DX, uid, [(1, e1)])
    assert m.checksum_type == "COMPOSITE"
    m = append(s, DX, "mp", b"bb", 2, "CRC32")
    assert m.checksum is None and m.part_sizes == (2, 2)


# ------------------------------------------------------------------------------------------------
# multipart


def test_multipart_general_etag_and_composite(small):
    s = small
    uid = s.create_upload(GP, "big", content_type="text/csv", user_metadata={"k": "v"}, checksum_algorithm="CRC32C")
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", uid)
    info = s.get_upload(GP, uid)
    assert info.key == "big" and info.checksum_type == "COMPOSITE" and info.content_type == "text/csv"
    assert s.get_upload(DX, uid) is None and s.get_upload(GP, "nope") is None
    chunks = [os.urandom(n) for n in (10, 20, 5)]
    infos = [s.put_part(GP, uid, i + 1, stage(s, c)) for i, c in enumerate(chunks)]
    assert [p.etag for p in infos] == [hashlib.md5(c).hexdigest() for c in chunks]
    assert infos[0].checksum == b64(google_crc32c.value(chunks[0]).to_bytes(4, "big"))
    # replace part 2; the old blob goes
    chunks[1] = os.urandom(21)
    infos[1] = s.put_part(GP, uid, 2, stage(s, chunks[1], ["CRC32C"]))
    assert len(blob_files(s.root)) == 3
    unused = s.put_part(GP, uid, 7, stage(s, b"unused"))
    parts, truncated, marker = s.list_parts(GP, uid, max_parts=2)
    assert [p.number for p in parts] == [1, 2] and truncated and marker == 2
    parts, truncated, marker = s.list_parts(GP, uid, marker=marker, max_parts=2)
    assert [p.number for p in parts] == [3, 7] and not truncated and marker == 7
    assert s.list_parts(GP, uid, marker=7) == ([], False, 7)

    m = s.complete_upload(GP, uid, [(p.number, f'"{p.etag}"') for p in infos])
    expected = hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest() + "-3"
    assert m.etag == expected and m.multipart and m.part_sizes == (10, 21, 5)
    assert m.checksum == composite("CRC32C", [p.checksum for p in infos]) and m.checksum.endswith("-3")
    assert m.checksum_type == "COMPOSITE" and m.content_type == "text/csv" and m.user_metadata == {"k": "v"}
    assert s.head(GP, "big") == m
    assert read_all(s, GP, "big") == b"".join(chunks)
    assert s.get_upload(GP, uid) is None
    with pytest.raises(S3Error) as e:
        s.list_parts(GP, uid)
    assert err(e) == (404, "NoSuchUpload")
    with pytest.raises(S3Error) as e:
        s.complete_upload(GP, uid, [(1, infos[0].etag)])
    assert err(e) == (404, "NoSuchUpload")
    assert unused.etag  # its blob was freed
    assert_no_orphans(s)
    assert len(blob_files(s.root)) == 3


def test_multipart_full_object_crc(small):
    s = small
    uid = s.create_upload(DX, "f", checksum_algorithm="CRC32", checksum_type="FULL_OBJECT")
    chunks = [os.urandom(n) for n in (100, 3, 50)]
    etags = [s.put_part(DX, uid, i + 1, stage(s, c, ["CRC32"])).etag for i, c in enumerate(chunks)]
    m = s.complete_upload(DX, uid, list(zip([1, 2, 3], etags)))
    assert m.checksum_type == "FULL_OBJECT" and m.checksum == b64(zlib.crc32(b"".join(chunks)).to_bytes(4, "big"))
    assert re.fullmatch(r"[a-z0-9]{32}", m.etag) and all(re.fullmatch(r"[a-z0-9]{32}", e) for e in etags)


def test_multipart_validation(small):
    s = small
    uid = s.create_upload(GP, "k")
    e = {n: s.put_part(GP, uid, n, stage(s, bytes([n]) * 3)).etag for n in (1, 2, 4)}
    cases = [
        ([], (400, "MalformedXML")),
        ([(2, e[2]), (1, e[1])], (400, "InvalidPartOrder")),
        ([(1, e[1]), (1, e[1])], (400, "InvalidPartOrder")),
        ([(1, e[1]), (3, e[2])], (400, "InvalidPart")),
        ([(1, e[1]), (2, e[1])], (400, "InvalidPart")),
    ]
    for parts, expected in cases:
        with pytest.raises(S3Error) as exc:
            s.complete_upload(GP, uid, parts)
        assert err(exc) == expected, parts
    # general purpose buckets accept gaps
    m = s.complete_upload(GP, uid, [(1, e[1]), (4, e[4])])
    assert read_all(s, GP, "k") == b"\x01" * 3 + b"\x04" * 3 and m.etag.endswith("-2")
    with pytest.raises(S3Error) as exc:
        s.put_part(GP, uid, 1, stage(s, b"x"))
    assert err(exc) == (404, "NoSuchUpload")
    with pytest.raises(S3Error) as exc:
        s.put_part(GP, "bogus", 1, stage(s, b"x"))
    assert err(exc) == (404, "NoSuchUpload")
    uid2 = s.create_upload(GP, "k2")
    with pytest.raises(S3Error) as exc:
        s.put_part(GP, uid2, 10_001, stage(s, b"x"))
    assert err(exc) == (400, "InvalidArgument")

    # directory buckets: exactly 1..N
    uid = s.create_upload(DX, "d/k")
    e = {n: s.put_part(DX, uid, n, stage(s, b"abc")).etag for n in (1, 2, 3)}
    for parts in ([(1, e[1]), (3, e[3])], [(2, e[2]), (3, e[3])]):
        with pytest.raises(S3Error) as exc:
            s.complete_upload(DX, uid, parts)
        assert err(exc) == (400, "InvalidPartOrder") and "consecutive" in exc.value.message
    s.complete_upload(DX, uid, [(1, e[1]), (2, e[2])])
    assert read_all(s, DX, "d/k") == b"abcabc"
    s.abort_upload(GP, uid2)
    assert_no_orphans(s)


def test_multipart_entity_too_small_and_precondition(store):
    uid = store.create_upload(GP, "k")
    e1 = store.put_part(GP, uid, 1, stage(store, b"a" * 100)).etag
    e2 = store.put_part(GP, uid, 2, stage(store, b"b" * 100)).etag
    with pytest.raises(S3Error) as exc:
        store.complete_upload(GP, uid, [(1, e1), (2, e2)])
    assert err(exc) == (400, "EntityTooSmall") and exc.value.extra["PartNumber"] == "1"
    big = os.urandom(storage.MIN_PART_SIZE)
    e1 = store.put_part(GP, uid, 1, stage(store, big)).etag

    def refuse(cur):
        raise S3Error(412, "PreconditionFailed", "no")

    with pytest.raises(S3Error) as exc:
        store.complete_upload(GP, uid, [(1, e1), (2, e2)], precondition=refuse)
    assert err(exc) == (412, "PreconditionFailed")
    assert store.get_upload(GP, uid) is not None and store.head(GP, "k") is None
    m = store.complete_upload(GP, uid, [(1, e1), (2, e2)])
    assert m.size == len(big) + 100 and read_all(store, GP, "k")[-100:] == b"b" * 100


def test_abort_upload(small):
    s = small
    uid = s.create_upload(DX, "a/b/c")
    s.put_part(DX, uid, 1, stage(s, b"xyz"))
    assert dirs(s) == {"a/": 1, "a/b/": 1}
    s.abort_upload(DX, uid)
    assert dirs(s) == {}
    with pytest.raises(S3Error) as exc:
        s.abort_upload(DX, uid)
    assert err(exc) == (404, "NoSuchUpload")
    assert_no_orphans(s)
    assert blob_files(s.root) == set()


def test_complete_over_existing_object_moves_refs(small):
    s = small
    put(s, DX, "a/b/k", b"old")
    uid = s.create_upload(DX, "a/b/k")
    assert dirs(s) == {"a/": 2, "a/b/": 2}
    e = s.put_part(DX, uid, 1, stage(s, b"new")).etag
    s.complete_upload(DX, uid, [(1, e)])
    assert dirs(s) == {"a/": 1, "a/b/": 1}
    assert read_all(s, DX, "a/b/k") == b"new"
    uid = s.create_upload(DX, "x/y")
    e = s.put_part(DX, uid, 1, stage(s, b"new")).etag
    s.complete_upload(DX, uid, [(1, e)])
    assert dirs(s) == {"a/": 1, "a/b/": 1, "x/": 1}
    s.delete(DX, "a/b/k")
    s.delete(DX, "x/y")
    assert dirs(s) == {}
    assert_no_orphans(s)


# ------------------------------------------------------------------------------------------------
# rename


def test_rename(store):
    m = put(store, DX, "a/b/src", b"payload", "CRC32", user_metadata={"m": "1"}, content_type="x/y")
    put(store, DX, "c/dst", b"old destination")
    assert dirs(store) == {"a/": 1, "a/b/": 1, "c/": 1}
    before = blob_files(store.root)
    time.sleep(0.01)
    r = store.rename(DX, "a/b/src", "c/dst")
    assert r.key == "c/dst"
    for field in ("etag", "checksum", "checksum_type", "user_metadata", "content_type", "last_modified", "size"):
        assert getattr(r, field) == getattr(m, field)
    assert store.head(DX, "c/dst") == r
    assert store.head(DX, "a/b/src") is None
    assert read_all(store, DX, "c/dst") == b"payload"
    assert dirs(store) == {"c/": 1}
    assert len(blob_files(store.root)) == 1 and blob_files(store.root) < before

    r2 = store.rename(DX, "c/dst", "e/f/g")
    assert dirs(store) == {"e/": 1, "e/f/": 1} and r2.etag == m.etag
    with pytest.raises(S3Error) as exc:
        store.rename(DX, "nope", "x")
    assert err(exc) == (404, "NoSuchKey")

    put(store, DX, "e/other", b"o")
    def dst_if_none_match(cur):
        if cur is not None:
            raise S3Error(412, "PreconditionFailed", "exists")
    with pytest.raises(S3Error) as exc:
        store.rename(DX, "e/f/g", "e/other", dst_precondition=dst_if_none_match)
    assert err(exc) == (412, "PreconditionFailed")
    assert read_all(store, DX, "e/other") == b"o" and read_all(store, DX, "e/f/g") == b"payload"
    seen = []
    store.rename(DX, "e/f/g", "e/new", src_precondition=seen.append, dst_precondition=seen.append)
    assert seen[0].key == "e/f/g" and seen[1] is None
    assert dirs(store) == {"e/": 2}
    assert store.rename(DX, "e/new", "e/new").key == "e/new"
    # a reader of the source keeps reading after the rename
    with store.open(DX, "e/new") as rd:
        store.rename(DX, "e/new", "e/newer")
        assert rd.read(0, 7) == b"payload"
    assert_no_orphans(store)


# ------------------------------------------------------------------------------------------------
# directory-bucket directories


def test_dirs_implicit_and_recursive(store):
    put(store, DX, "a/b/c/d.txt", b"1")
    assert dirs(store) == {"a/": 1, "a/b/": 1, "a/b/c/": 1}
    put(store, DX, "a/x", b"2")
    put(store, DX, "a", b"file a")  # `a` and `a/...` coexist
    assert read_all(store, DX, "a") == b"file a" and read_all(store, DX, "a/x") == b"2"
    assert dirs(store) == {"a/": 2, "a/b/": 1, "a/b/c/": 1}
    keys, prefixes, _ = list_all(store, DX, delimiter="/")
    assert keys == ["a"] and prefixes == ["a/"]
    store.delete(DX, "a/b/c/d.txt")
    assert dirs(store) == {"a/": 1}
    keys, prefixes, _ = list_all(store, DX, prefix="a/", delimiter="/")
    assert keys == ["a/x"] and prefixes == []
    store.delete(DX, "a/x")
    assert dirs(store) == {}
    assert list_all(store, DX, delimiter="/")[:2] == (["a"], [])
    assert dirs(store, GP) == {}
    put(store, GP, "g/h/i", b"")
    assert dirs(store, GP) == {}  # general purpose buckets have no directories


def test_dirs_marker_keys(store):
    put(store, DX, "m/", b"")
    assert dirs(store) == {"m/": 1}
    keys, prefixes, _ = list_all(store, DX, delimiter="/")
    assert keys == [] and prefixes == ["m/"]
    keys, prefixes, _ = list_all(store, DX, prefix="m/", delimiter="/")
    assert keys == ["m/"] and prefixes == []
    assert list_all(store, DX)[0] == ["m/"]
    put(store, DX, "m/n/", b"")
    put(store, DX, "m/n/o", b"x")
    assert dirs(store) == {"m/": 3, "m/n/": 2}
    store.delete(DX, "m/n/o")
    assert dirs(store) == {"m/": 2, "m/n/": 1}
    store.delete(DX, "m/")
    assert dirs(store) == {"m/": 1, "m/n/": 1}
    assert list_all(store, DX, delimiter="/")[1] == ["m/"]
    store.delete(DX, "m/n/")
    assert dirs(store) == {}


def test_dirs_in_progress_uploads(store):
    uid = store.create_upload(DX, "up/load/key")
    keys, prefixes, _ = list_all(store, DX, delimiter="/")
    assert keys == [] and prefixes == ["up/"]
    assert list_all(store, DX, prefix="up/", delimiter="/")[1] == ["up/load/"]
    assert list_all(store, DX)[0] == []  # no object exists
    store.abort_upload(DX, uid)
    assert list_all(store, DX, delimiter="/")[1] == []


# ------------------------------------------------------------------------------------------------
# directory-bucket listings


def test_directory_listing_unordered_complete(store):
    names = [f"k{i:03d}" for i in range(60)] + [f"d{i}/f" for i in range(15)] + ["d0/g", "d0/sub/h", "é/x"]
    for n in names:
        put(store, DX, n, b"")
    for page in (1, 2, 7, 1000):
        keys, prefixes, pages = list_all(store, DX, page=page)
        assert sorted(keys) == sorted(names) and len(keys) == len(set(keys)) and prefixes == []
        assert pages == -(-len(names) // page)  # no empty trailing page
    keys, _, _ = list_all(store, DX)
    assert keys != sorted(keys)  # not lexicographic
    assert keys == list_all(store, DX, page=3)[0]  # but a stable order
    keys, prefixes, _ = list_all(store, DX, delimiter="/", page=4)
    assert sorted(keys) == [f"k{i:03d}" for i in range(60)]
    assert sorted(prefixes) == sorted([f"d{i}/" for i in range(15)] + ["é/"])
    assert len(prefixes) == len(set(prefixes))
    keys, prefixes, _ = list_all(store, DX, prefix="d0/", delimiter="/", page=1)
    assert sorted(keys) == ["d0/f", "d0/g"] and prefixes == ["d0/sub/"]
    keys, prefixes, _ = list_all(store, DX, prefix="d0/", page=1)
    assert sorted(keys) == ["d0/f", "d0/g", "d0/sub/h"] and prefixes == []
    assert list_all(store, DX, prefix="zz/")[:2] == ([], [])
    res = store.list_objects(DX, max_keys=0)
    assert res.contents == [] and not res.truncated
    # a page ending in a common prefix continues correctly
    res = store.list_objects(DX, delimiter="/", max_keys=len(prefixes) + 1)
    assert res.truncated


@pytest.mark.parametrize("bucket", [DX, GP])
def test_listing_stable_under_modification(store, bucket):
    stable = {f"s{i}" for i in range(40)} | {f"sd{i}/x" for i in range(10)}
    doomed = {f"t{i}" for i in range(40)} | {f"td{i}/x" for i in range(10)}
    for n in stable | doomed:
        put(store, bucket, n, b"")
    for delimiter in (None, "/"):
        seen: list[str] = []
        token, i, added = None, 0, set()
        while True:
            res = store.list_objects(bucket, max_keys=3, token=token, delimiter=delimiter)
            seen += [m.key for m in res.contents] + res.common_prefixes
            # churn between pages: delete some, add some
            for n in sorted(doomed)[i * 3:i * 3 + 3]:
                store.delete(bucket, n)
            new = f"new{delimiter}{i}" if i % 2 else f"newd{delimiter}{i}/x"
            put(store, bucket, new, b"")
            added.add(new)
            i += 1
            if not res.truncated:
                break
            token = res.next_token
        assert len(seen) == len(set(seen)), "duplicates"
        expected = stable if delimiter is None else {n.split("/")[0] + "/" if "/" in n else n for n in stable}
        assert expected <= set(seen), "an item present throughout was missed"
        for n in added:
            store.delete(bucket, n)
        for n in doomed:
            put(store, bucket, n, b"")


def test_directory_listing_errors(store):
    for kwargs, expected in [
        (dict(prefix="a"), (400, "InvalidRequest")),
        (dict(prefix="a/b", delimiter="/"), (400, "InvalidRequest")),
        (dict(delimiter="-"), (400, "InvalidArgument")),
        (dict(start_after="a"), (400, "InvalidArgument")),
        (dict(token="garbage"), (400, "InvalidArgument")),
        (dict(token=""), (400, "InvalidArgument")),
    ]:
        with pytest.raises(S3Error) as exc:
            store.list_objects(DX, **kwargs)
        assert err(exc) == expected, kwargs
    with pytest.raises(S3Error) as exc:
        store.list_objects(DX, prefix="a")
    assert "does not support a prefix that does not end in a delimiter" in exc.value.message
    with pytest.raises(S3Error) as exc:
        store.list_objects(DX, token="garbage")
    assert exc.value.message == "The continuation token provided is incorrect"
    with pytest.raises(S3Error) as exc:
        store.list_objects_v1(DX)
    assert exc.value.status == 501
    # a general purpose token is no directory-bucket token
    for i in range(3):
        put(store, GP, f"g{i}", b"")
    token = store.list_objects(GP, max_keys=1).next_token
    with pytest.raises(S3Error) as exc:
        store.list_objects(DX, token=token)
    assert err(exc) == (400, "InvalidArgument")


def test_directory_listing_large_prefix_uses_ord_walk(store, monkeypatch):
    monkeypatch.setattr(storage, "_SORT_THRESHOLD", 5)
    names = [f"big/{i}" for i in range(30)] + [f"small/{i}" for i in range(3)] + ["other"]
    for n in names:
        put(store, DX, n, b"")
    for prefix in ("big/", "small/"):
        keys, _, _ = list_all(store, DX, prefix=prefix, page=4)
        assert sorted(keys) == sorted(n for n in names if n.startswith(prefix))


# ------------------------------------------------------------------------------------------------
# general purpose listings


def test_general_listing_order_and_delimiters(store):
    names = ["a", "a/b", "a/c/d", "a/c/e", "a+", "b", "é", "z~", "a/b/", "ab", "a-b-c", "a-x", "\u00ff", "\U0001f600"]
    for n in names:
        put(store, GP, n, b"")
    expected = sorted(names, key=lambda k: k.encode())
    for page in (1, 2, 5, 1000):
        keys, prefixes, _ = list_all(store, GP, page=page)
        assert keys == expected and prefixes == []
    keys, prefixes, _ = list_all(store, GP, delimiter="/", page=1)
    assert keys == [k for k in expected if "/" not in k] and prefixes == ["a/"]
    keys, prefixes, _ = list_all(store, GP, prefix="a/", delimiter="/")
    assert keys == ["a/b"] and prefixes == ["a/b/", "a/c/"]
    keys, prefixes, _ = list_all(store, GP, prefix="a", delimiter="-", page=1)
    assert prefixes == ["a-"] and "a-b-c" not in keys and "a/c/d" in keys
    keys, prefixes, _ = list_all(store, GP, delimiter="b/")
    assert prefixes == ["a/b/"] and "a/b" in keys
    keys, prefixes, _ = list_all(store, GP, prefix="a/c")
    assert keys == ["a/c/d", "a/c/e"]
    keys, prefixes, _ = list_all(store, GP, prefix="a/c/", delimiter="/")
    assert keys == ["a/c/d", "a/c/e"] and prefixes == []
    # start_after
    keys, _, _ = list_all(store, GP, start_after="a/c/d")
    assert keys == [k for k in expected if k.encode() > b"a/c/d"]
    keys, prefixes, _ = list_all(store, GP, delimiter="/", start_after="a/b")
    assert prefixes == [] and keys == [k for k in expected if k.encode() > b"a/b" and "/" not in k]
    keys, prefixes, _ = list_all(store, GP, delimiter="/", start_after="a+")
    assert prefixes == ["a/"]
    assert list_all(store, GP, start_after="\U0001f600")[0] == []
    # a page that ends on a common prefix: next page goes past the whole group
    res = store.list_objects(GP, delimiter="/", max_keys=3)
    assert [m.key for m in res.contents] == ["a", "a+", "a-b-c"] and res.truncated
    res = store.list_objects(GP, delimiter="/", max_keys=2, token=res.next_token)
    assert [m.key for m in res.contents] == ["a-x"] and res.common_prefixes == ["a/"] and res.truncated
    res = store.list_objects(GP, delimiter="/", max_keys=1, token=res.next_token)
    assert [m.key for m in res.contents] == ["ab"]
    assert store.list_objects(GP, max_keys=0).contents == []
    with pytest.raises(S3Error) as exc:
        store.list_objects(GP, token="!!!not a token")
    assert err(exc) == (400, "InvalidArgument")


def test_general_listing_skip_scans_common_prefixes(store):
    for i in range(5):
        for j in range(300):
            put(store, GP, f"p{i}/{j:04d}", b"")
    statements = []
    db = store._db()
    db.set_trace_callback(statements.append)
    res = store.list_objects(GP, delimiter="/")
    db.set_trace_callback(None)
    assert res.common_prefixes == [f"p{i}/" for i in range(5)] and res.contents == []
    selects = [s for s in statements if s.startswith("SELECT") and "FROM objects" in s]
    assert len(selects) == 6  # one seek per prefix, not a scan of 1500 keys
    for i in range(5):  # each prefix's group is skipped by seeking to its successor, 'p<i>/' -> 'p<i>0'
        assert any(f"key >= x'{f'p{i}0'.encode().hex()}'" in sql for sql in selects)


def test_list_objects_v1(store):
    names = ["a/1", "a/2", "b", "c/1", "d"]
    for n in names:
        put(store, GP, n, b"x")
    res = store.list_objects_v1(GP, max_keys=2)
    assert [m.key for m in res.contents] == ["a/1", "a/2"] and res.truncated and res.next_token == "a/2"
    res = store.list_objects_v1(GP, max_keys=2, marker="a/2")
    assert [m.key for m in res.contents] == ["b", "c/1"]
    res = store.list_objects_v1(GP, delimiter="/", max_keys=2)
    assert res.common_prefixes == ["a/"] and [m.key for m in res.contents] == ["b"] and res.next_token == "b"
    res = store.list_objects_v1(GP, delimiter="/", max_keys=1, marker="b")
    assert res.common_prefixes == ["c/"] and res.next_token == "c/" and res.truncated
    res = store.list_objects_v1(GP, delimiter="/", max_keys=5, marker="c/")
    assert [m.key for m in res.contents] == ["d"] and res.common_prefixes == [] and not res.truncated
    assert res.next_token is None
    res = store.list_objects_v1(GP, marker="zzz")
    assert res.contents == []


def test_listing_reports_meta_and_part_sizes(small):
    s = small
    uid = s.create_upload(GP, "mp")
    e = [s.put_part(GP, uid, n, stage(s, b"ab" * n)).etag for n in (1, 2)]
    s.complete_upload(GP, uid, [(1, e[0]), (2, e[1])])
    put(s, GP, "single", b"xyz", user_metadata={"q": "r"})
    res = s.list_objects(GP)
    assert {m.key: m.part_sizes for m in res.contents} == {"mp": (2, 4), "single": (3,)}
    assert res.contents == [s.head(GP, "mp"), s.head(GP, "single")]
    for i in range(3):
        append(s, DX, "d/log", b"x" * (i + 1), i * (i + 1) // 2)
    res = s.list_objects(DX, prefix="d/", delimiter="/")
    assert res.contents == [s.head(DX, "d/log")] and res.contents[0].part_sizes == (1, 2, 3)


# ------------------------------------------------------------------------------------------------
# multipart upload listings


def test_list_uploads_general(store):
    ids = {}
    for key in ["b", "a/x", "a/y", "c", "a/x", "b"]:
        ids.setdefault(key, []).append(store.create_upload(GP, key))
    res = store.list_uploads(GP)
    got = [(u.key, u.upload_id) for u in res.uploads]
    assert got == sorted(got, key=lambda t: (t[0].encode(), t[1]))
    assert [u.upload_id for u in res.uploads if u.key == "b"] == ids["b"]  # initiation order
    res = store.list_uploads(GP, delimiter="/")
    assert res.common_prefixes == ["a/"] and [u.key for u in res.uploads] == ["b", "b", "c"]
    res = store.list_uploads(GP, prefix="a/", max_uploads=2)
    assert [u.key for u in res.uploads] == ["a/x", "a/x"] and res.truncated
    assert (res.next_key_marker, res.next_upload_id_marker) == ("a/x", ids["a/x"][1])
    res = store.list_uploads(GP, prefix="a/", key_marker=res.next_key_marker, upload_id_marker=res.next_upload_id_marker)
    assert [u.key for u in res.uploads] == ["a/y"] and not res.truncated
    res = store.list_uploads(GP, key_marker="a/x", upload_id_marker=ids["a/x"][0])
    assert [u.upload_id for u in res.uploads] == [ids["a/x"][1], ids["a/y"][0], *ids["b"], ids["c"][0]]
    res = store.list_uploads(GP, key_marker="b")
    assert [u.key for u in res.uploads] == ["c"]
    res = store.list_uploads(GP, delimiter="/", max_uploads=1)
    assert res.common_prefixes == ["a/"] and res.next_key_marker == "a/" and res.next_upload_id_marker is None
    res = store.list_uploads(GP, delimiter="/", key_marker="a/")
    assert [u.key for u in res.uploads] == ["b", "b", "c"] and res.common_prefixes == []


def test_list_uploads_directory(store):
    keys = [f"k{i}" for i in range(12)] + [f"d{i}/x" for i in range(4)] + ["d0/y"]
    for k in keys:
        store.create_upload(DX, k)
    seen, marker = [], None
    while True:
        res = store.list_uploads(DX, max_uploads=5, key_marker=marker)
        seen += [u.key for u in res.uploads]
        if not res.truncated:
            break
        marker = res.next_key_marker
        assert marker not in keys  # opaque
    assert sorted(seen) == sorted(keys)
    seen, prefixes, marker = [], [], None
    while True:
        res = store.list_uploads(DX, delimiter="/", max_uploads=2, key_marker=marker)
        seen += [u.key for u in res.uploads]
        prefixes += res.common_prefixes
        if not res.truncated:
            break
        marker = res.next_key_marker
    assert sorted(seen) == sorted(k for k in keys if "/" not in k)
    assert sorted(prefixes) == [f"d{i}/" for i in range(4)]
    res = store.list_uploads(DX, prefix="d0/")
    assert sorted(u.key for u in res.uploads) == ["d0/x", "d0/y"]
    for kwargs in (dict(prefix="d0"), dict(delimiter="x"), dict(key_marker="junk")):
        with pytest.raises(S3Error):
            store.list_uploads(DX, **kwargs)


# ------------------------------------------------------------------------------------------------
# a model-based test of listings and directories


class ListingMachine(RuleBasedStateMachine):
    keys = st.text(alphabet="ab/é", min_size=1, max_size=6)

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.store = make_store(Path(self.dir) / "s")
        self.objects: dict[str, set[str]] = {GP: set(), DX: set()}
        self.uploads: dict[str, str] = {}  # id -> key (directory bucket)

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir)

    @rule(key=keys, bucket=st.sampled_from([GP, DX]))
    def put(self, key, bucket):
        put(self.store, bucket, key, b"")
        self.objects[bucket].add(key)

    @rule(data=st.data(), bucket=st.sampled_from([GP, DX]))
    def delete(self, data, bucket):
        if self.objects[bucket]:
            key = data.draw(st.sampled_from(sorted(self.objects[bucket])))
            assert self.store.delete(bucket, key)
            self.objects[bucket].discard(key)
        else:
            assert not self.store.delete(bucket, "never")

    @rule(key=keys)
    def create_upload(self, key):
        self.uploads[self.store.create_upload(DX, key)] = key

    @rule(data=st.data())
    def abort_upload(self, data):
        if self.uploads:
            uid = data.draw(st.sampled_from(sorted(self.uploads)))
            self.store.abort_upload(DX, uid)
            del self.uploads[uid]

    @rule(data=st.data(), dst=keys)
    def rename(self, data, dst):
        if self.objects[DX]:
            src = data.draw(st.sampled_from(sorted(self.objects[DX])))
            self.store.rename(DX, src, dst)
            self.objects[DX].discard(src)
            self.objects[DX].add(dst)

    @invariant()
    def directories_match(self):
        assert dirs(self.store) == expected_dirs(self.objects[DX], self.uploads.values())

    @rule(prefix=st.sampled_from(["", "a", "a/", "é", "b/a", "/"]),
          delimiter=st.sampled_from([None, "/", "a", "b/", "é"]),
          page=st.integers(1, 4), start_after=st.sampled_from([None, "a", "a/", "b", "a/b/", "é"]))
    def list_general(self, prefix, delimiter, page, start_after):
        items = set()
        pb = prefix.encode()
        for k in self.objects[GP]:
            kb = k.encode()
            if not kb.startswith(pb):
                continue
            if delimiter and (i := kb.find(delimiter.encode(), len(pb))) >= 0:
                items.add(("p", kb[: i + len(delimiter.encode())]))
            else:
                items.add(("k", kb))
        expected = sorted(items, key=lambda t: t[1])
        if start_after:
            expected = [t for t in expected if t[1] > start_after.encode()]
        got, token = [], None
        while True:
            res = self.store.list_objects(GP, prefix=prefix, delimiter=delimiter, max_keys=page, token=token,
                                          start_after=start_after)
            got += [("k", m.key.encode()) for m in res.contents] + [("p", p.encode()) for p in res.common_prefixes]
            if not res.truncated:
                break
            token = res.next_token
        assert sorted(got, key=lambda t: t[1]) == expected
        # V1 with markers
        got, marker = [], start_after
        while True:
            res = self.store.list_objects_v1(GP, prefix=prefix, delimiter=delimiter, max_keys=page, marker=marker)
            page_items = [("k", m.key.encode()) for m in res.contents] + [("p", p.encode()) for p in res.common_prefixes]
            got += sorted(page_items, key=lambda t: t[1])
            if not res.truncated:
                break
            marker = res.next_token
        assert got == expected

    @rule(prefix=st.sampled_from(["", "a/", "a/b/", "/", "b/", "é/"]), delimited=st.booleans(),
          page=st.integers(1, 4))
    def list_directory(self, prefix, delimited, page):
        contents, prefixes = set(), set()
        for k in self.objects[DX]:
            if k.startswith(prefix):
                rest = k[len(prefix):]
                if not delimited or "/" not in rest:
                    contents.add(k)
        if delimited:
            for k in list(self.objects[DX]) + list(self.uploads.values()):
                if k.startswith(prefix) and "/" in k[len(prefix):]:
                    prefixes.add(prefix + k[len(prefix):].split("/")[0] + "/")
        keys, cps, _ = list_all(self.store, DX, prefix=prefix, delimiter="/" if delimited else None, page=page)
        assert len(keys) == len(set(keys)) and len(cps) == len(set(cps))
        assert set(keys) == contents and set(cps) == prefixes


TestListingMachine = ListingMachine.TestCase
TestListingMachine.settings = settings(max_examples=40, stateful_step_count=40, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------
# persistence and crash safety


def test_restart_persistence(small, tmp_path):
    s = small
    put(s, GP, "k", b"general", "SHA256", user_metadata={"a": "b"})
    append(s, DX, "d/log", b"one", 0, "CRC32")
    append(s, DX, "d/log", b"two", 3)
    uid = s.create_upload(DX, "u/p")
    part = s.put_part(DX, uid, 1, stage(s, b"part"))
    metas = (s.head(GP, "k"), s.head(DX, "d/log"))
    listing = list_all(s, DX, delimiter="/")
    s.close()
    with pytest.raises(RuntimeError):
        s.head(GP, "k")
    s2 = Store(tmp_path / "store", min_part_size=1)
    try:
        assert (s2.head(GP, "k"), s2.head(DX, "d/log")) == metas
        assert read_all(s2, DX, "d/log") == b"onetwo"
        assert list_all(s2, DX, delimiter="/") == listing
        assert s2.list_parts(DX, uid)[0] == [part]
        m = s2.complete_upload(DX, uid, [(1, part.etag)])
        assert read_all(s2, DX, "u/p") == b"part" and m.multipart
        assert_no_orphans(s2)
    finally:
        s2.close()


def test_startup_removes_garbage(tmp_path):
    s = make_store(tmp_path / "s")
    put(s, GP, "keep", b"keep")
    s.close()
    (tmp_path / "s" / "tmp" / "half-written").write_bytes(b"junk")
    orphan = tmp_path / "s" / "blobs" / "ab" / ("ab" + "0" * 30)
    orphan.write_bytes(b"orphan")
    s = Store(tmp_path / "s")
    assert not orphan.exists()
    assert list((tmp_path / "s" / "tmp").iterdir()) == []
    assert read_all(s, GP, "keep") == b"keep"
    assert_no_orphans(s)
    s.close()


CRASH_WRITER = textwrap.dedent("""
    import io, os, random, sys
    from s3xfs.localzone.storage import Store
    GP, DX = "general", "photos--usw2-az1--x-s3"
    s = Store(sys.argv[1], min_part_size=0, fsync=sys.argv[3] == "1")
    for name, d in ((GP, False), (DX, True)):
        if s.get_bucket(name) is None:
            s.create_bucket(name, directory=d, region="us-west-2", zone="usw2-az1" if d else None)
    rng = random.Random(int(sys.argv[2]))
    def body():
        return os.urandom(rng.choice([0, 1, 100, 4096, 70000, 300000]))
    i = 0
    while True:
        op = rng.random()
        key = f"k{rng.randrange(30)}/o{rng.randrange(5)}"
        if op < 0.3:
            s.put(GP, key, s.stage(io.BytesIO(body()), ["CRC32"]), checksum_algorithm="CRC32")
        elif op < 0.4:
            s.delete(GP if op < 0.35 else DX, key)
        elif op < 0.5:
            uid = s.create_upload(GP, key, checksum_algorithm="CRC32")
            parts = []
            for n in range(1, rng.randrange(1, 4) + 1):
                parts.append((n, s.put_part(GP, uid, n, s.stage(io.BytesIO(body()), ["CRC32"])).etag))
            if rng.random() < 0.8:
                s.complete_upload(GP, uid, parts)
        elif op < 0.85:
            cur = s.head(DX, key)
            data = body() or b"x"
            s.append(DX, key, s.stage(io.BytesIO(data), ["CRC32"]), offset=cur.size if cur else 0)
        else:
            dst = f"k{rng.randrange(30)}/r{rng.randrange(5)}"
            if s.head(DX, key):
                s.rename(DX, key, dst)
        i += 1
        if i % 10 == 0:
            print(i, flush=True)
""")


def verify_store(s: Store) -> int:
    assert_no_orphans(s)
    for name in referenced(s):
        assert (s.root / "blobs" / name[:2] / name).exists()
    seg_lengths = dict(((oid, seq), (blob, length)) for oid, seq, blob, length in
                       s._db().execute("SELECT oid, seq, blob, length FROM segments"))
    for (oid, seq), (blob, length) in seg_lengths.items():
        assert (s.root / "blobs" / blob[:2] / blob).stat().st_size == length
    count = 0
    for bucket in (GP, DX):
        keys, _, _ = list_all(s, bucket)
        for key in keys:
            count += 1
            with s.open(bucket, key) as r:
                m = r.meta
                data = r.read(0, m.size)
                assert len(data) == m.size == sum(m.part_sizes)
                if m.checksum_type == "FULL_OBJECT":
                    assert m.checksum == b64(zlib.crc32(data).to_bytes(4, "big")), (bucket, key)
                elif m.checksum_type == "COMPOSITE":
                    pos, crcs = 0, []
                    for n in m.part_sizes:
                        crcs.append(b64(zlib.crc32(data[pos:pos + n]).to_bytes(4, "big")))
                        pos += n
                    assert m.checksum == composite("CRC32", crcs)
                else:
                    assert bucket == DX  # only a renamed-over/appended object without checksum could get here
                if bucket == GP and not m.multipart:
                    assert m.etag == hashlib.md5(data).hexdigest()
    uploads = [k.decode() for (k,) in s._db().execute("SELECT key FROM uploads WHERE bucket=?", (DX,))]
    assert dirs(s) == expected_dirs(list_all(s, DX)[0], uploads)
    return count


@pytest.mark.slow
@pytest.mark.parametrize("fsync", [False, True])
def test_crash_safety_kill_9(tmp_path, fsync):
    root = tmp_path / "crash"
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    rng = random.Random(1234)
    total = 0
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(root), str(round_), "1" if fsync else "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=PROJECT)
        target = rng.randrange(30, 150)
        done = 0
        while done < target:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(proc.stderr.read().decode())
            done = int(line)
        time.sleep(rng.random() * 0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        total += done
        s = Store(root, min_part_size=1)
        try:
            n = verify_store(s)
        finally:
            s.close()
    assert n > 0 and total > 100


# ------------------------------------------------------------------------------------------------
# rough timings (printed, not asserted)


@pytest.mark.slow
def test_timings_10000_objects(tmp_path, capsys):
    s = make_store(tmp_path / "t")
    try:
        lines = []
        t0 = time.perf_counter()
        for i in range(10_000):
            put(s, DX, f"dir{i % 100}/sub{i % 7}/file{i}", b"x")
        t1 = time.perf_counter()
        for i in range(10_000):
            put(s, GP, f"dir{i % 100}/file{i}", b"x")
        t2 = time.perf_counter()
        lines.append(f"put (stage + commit): {(t1 - t0) * 100:.0f} us/object (directory), "
                     f"{(t2 - t1) * 100:.0f} us/object (general)")
        for bucket, key in ((DX, "dir5/sub5/file5"), (GP, "dir5/file5")):
            t = time.perf_counter()
            for _ in range(2000):
                assert s.head(bucket, key) is not None
            lines.append(f"head {bucket}: {(time.perf_counter() - t) / 2000 * 1e6:.1f} us")
        t = time.perf_counter()
        for _ in range(200):
            with s.open(DX, "dir5/sub5/file5") as r:
                r.read(0, 1)
        lines.append(f"open+read+close: {(time.perf_counter() - t) / 200 * 1e6:.1f} us")
        for label, bucket, kw in (("directory, no delimiter", DX, {}),
                                  ("directory, delimiter at root", DX, {"delimiter": "/"}),
                                  ("directory, prefix dir5/", DX, {"prefix": "dir5/"}),
                                  ("general, no delimiter", GP, {}),
                                  ("general, delimiter at root", GP, {"delimiter": "/"})):
            t = time.perf_counter()
            keys, prefixes, pages = list_all(s, bucket, **kw)
            dt = time.perf_counter() - t
            lines.append(f"list {label}: {len(keys)} keys + {len(prefixes)} prefixes in {pages} pages, "
                         f"{dt / pages * 1000:.1f} ms/page")
        print("\n[storage timings] " + "\n[storage timings] ".join(lines))  # shown with -s or -rA
    finally:
        s.close()


def test_precondition_may_read_the_store(small):
    s = small
    append(s, DX, "log", b"a", 0)
    append(s, DX, "log", b"b", 1)
    seen = []
    put(s, DX, "other", b"x", precondition=lambda cur: seen.append(s.head(DX, "log")))
    assert seen[0].part_sizes == (1, 1)
    with s.open(DX, "log") as r:
        assert r.read(0, 2) == b"ab"
