"""Hostile object keys: `.`, `..`, `//`, a leading `/`, control characters, 1,024-byte keys,
components over 255 bytes, a key colliding with a prefix (`a` and `a/x`).

docs/SEMANTICS.md ("Keys, names and directories") is the contract, restated here as a small
reference model (``expected_view``): which keys show as which paths, which are hidden and logged
once. The model is checked in-process against the core on the in-memory client with hypothesis,
then through real read-only and read-write mounts of s3xfs-localzone, where nothing may ever
resolve outside the mount point and no invalid name can be created.
"""

from __future__ import annotations

import ast
import errno
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from s3xfs.client.memory import MemoryClient
from s3xfs.core.errors import FsError
from s3xfs.core.fs import Filesystem
from s3xfs.core.inodes import ROOT_INODE
from tests.support.core import run_filesystem
from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, LocalZone
from tests.support.mount import needs_fuse

NAME_MAX = 255  # bytes in one Linux path component
KEY_MAX = 1024  # bytes in one S3 key
HIDDEN = re.compile(r"object (.+) is not shown: ")  # the core's log line for a hidden key (the key is repr'd)

# --------------------------------------------------------------------------------------------
# The reference model of docs/SEMANTICS.md


def name_ok(name: str) -> bool:
    """A key component that can be a Linux file name: not empty, `.` or `..`, no NUL, at most
    255 bytes of UTF-8 (a name that is not UTF-8 cannot be part of a key)."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return False
    try:
        return len(name.encode("utf-8")) <= NAME_MAX
    except UnicodeEncodeError:
        return False


def expected_view(keys: Mapping[str, int], prefix: str = "") -> tuple[dict[str, tuple[str, int]], set[str]]:
    """What a mount of ``prefix`` shows of ``keys`` (key -> size): relative path -> ('dir', 0) or
    ('file', size); and the keys (or, for a directory that cannot be shown, its prefix) that are
    hidden and logged. A directory wins over a file of the same name; a key ending in '/' only
    makes its directory exist; keys outside the prefix are never seen."""
    shown: dict[str, tuple[str, int]] = {}
    logged: set[str] = set()

    def visit(directory: str, path: str) -> None:
        files: dict[str, tuple[str, int]] = {}
        dirs: set[str] = set()
        for key, size in keys.items():
            if key.startswith(directory) and key != directory:
                head, slash, _ = key[len(directory):].partition("/")
                if slash:
                    dirs.add(head)
                else:
                    files[head] = (key, size)
        good_dirs = {name for name in dirs if name_ok(name)}
        logged.update(directory + name + "/" for name in dirs - good_dirs)
        for name in good_dirs:
            shown[path + name] = ("dir", 0)
            visit(directory + name + "/", path + name + "/")
        for name, (key, size) in files.items():
            if name_ok(name) and name not in good_dirs:
                shown[path + name] = ("file", size)
            else:
                logged.add(key)

    visit(prefix, "")
    return shown, logged


# --------------------------------------------------------------------------------------------
# Hostile keys, as hypothesis draws them

COMPONENTS = st.one_of(
    st.sampled_from(["", ".", "..", "a", "b", "a b", " ", "\n", "\t", "\x7f", "\x01", "\r", "é", "e\u0301", "\u202e",
                     "\ufeff", "%2e%2e", "\\", "\\..", "*", "-", "~", ":", "?", "#", "\x00"]),
    st.sampled_from(["x" * NAME_MAX, "x" * (NAME_MAX + 1), "é" * 127 + "x", "é" * 128, "\U0001f600" * 64]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), max_size=6),
)


@st.composite
def hostile_keys(draw: st.DrawFn) -> str:
    parts = draw(st.lists(COMPONENTS, min_size=1, max_size=4))
    key = "/".join(parts) + ("/" if draw(st.booleans()) else "")
    if draw(st.integers(0, 4)) == 0:
        key = "p/" + key  # under the prefix that some examples mount
    return key


def fits(key: str) -> bool:
    return bool(key) and len(key.encode()) <= KEY_MAX


KEY_SETS = st.lists(hostile_keys().filter(fits), min_size=1, max_size=10).flatmap(
    lambda keys: st.lists(st.sampled_from(keys).map(lambda k: k.rstrip("/") + "/x"), max_size=2).map(
        lambda collisions: keys + [c for c in collisions if fits(c)]))  # `a` and `a/x`


class HiddenLog(logging.Handler):
    """Collects the keys the core logs as not shown."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = HIDDEN.match(record.getMessage())
        if match:
            self.keys.append(ast.literal_eval(match.group(1)))


@pytest.fixture
def hidden_log() -> Iterator[HiddenLog]:
    handler = HiddenLog()
    logger = logging.getLogger("s3xfs.core.fs")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------------------------
# In-process: the core on the in-memory client


async def walk(fs: Filesystem, ino: int, path: str, seen: dict[str, tuple[str, int]], parents: dict[int, int]) -> None:
    """Read a directory and every directory below it, as `find` would, checking `.` and `..` on the way."""
    fh = await fs.opendir(ino)
    try:
        entries = [(entry.name, entry.inode.ino) for _, entry in fs.readdir(fh, 0)]
    finally:
        fs.releasedir(fh)
    names = [name for name, _ in entries]
    assert names[:2] == [".", ".."] and len(set(names)) == len(names), names
    assert (await fs.lookup(ino, ".")).ino == ino
    assert (await fs.lookup(ino, "..")).ino == parents.get(ino, ROOT_INODE)  # the root's parent is itself
    for name, child in entries[2:]:
        assert name_ok(name), f"{path + name!r} is shown but cannot be a file name"
        attrs = await fs.lookup(ino, name)
        assert attrs.ino == child
        if attrs.is_dir:
            seen[path + name] = ("dir", 0)
            parents[child] = ino
            await walk(fs, child, path + name + "/", seen, parents)
        else:
            seen[path + name] = ("file", attrs.size)


async def lookups_of_hidden(fs: Filesystem, keys: Mapping[str, int], prefix: str, shown: Mapping[str, object]) -> None:
    """Every hidden key's last component, looked up in its (shown) parent: never a file of the bucket."""
    for key in keys:
        if not key.startswith(prefix):
            continue
        parent, _, name = key[len(prefix):].rpartition("/")
        if (parent and parent not in shown) or parent + ("/" if parent else "") + name in shown:
            continue
        ino = ROOT_INODE
        for part in filter(None, parent.split("/")):
            ino = (await fs.lookup(ino, part)).ino
        if name in ("", ".", "..") or "\0" in name or len(name.encode()) > 1024:  # never a name from the kernel
            continue
        attrs = await fs.lookup(ino, name)
        assert attrs.ino == 0 or attrs.is_dir, f"hidden key {key!r} resolved to a file"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(keys=KEY_SETS, prefix=st.sampled_from(["", "p/"]))
@example(keys=["a", "a/x", ".", "..", "../x", "b//c", "/lead", "d/./e", "f/" + "x" * 256, "g\n\t\x7f\x01",
               "m/", "p/../q", "p/ok"], prefix="")
@example(keys=["p", "p/", "p//x", "p/../x", "p/./y", "p/ok", "q/x", "p/a", "p/a/b"], prefix="p/")
def test_core_shows_and_hides_keys_as_documented(keys: list[str], prefix: str, hidden_log: HiddenLog) -> None:
    hidden_log.keys.clear()
    objects = {key: len(key.encode()) % 7 for key in keys}
    shown, logged = expected_view(objects, prefix)
    clock = Clock()

    async def check(fs: Filesystem, client: MemoryClient) -> None:
        for round_ in range(2):  # the second walk lists everything again: nothing is logged twice
            seen: dict[str, tuple[str, int]] = {}
            await walk(fs, ROOT_INODE, "", seen, {})
            assert seen == shown
            await lookups_of_hidden(fs, objects, prefix, shown)
            clock.now += 120

    run_filesystem(check, MemoryClient(seed=3), keys={key: b"z" * size for key, size in objects.items()},
                   clock=clock, prefix=prefix, metadata_ttl=60, negative_ttl=60)
    assert sorted(hidden_log.keys) == sorted(logged), "each hidden key is logged exactly once"


NEW_NAMES = st.one_of(COMPONENTS, st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))


def expected_errno(name: str) -> int | None:
    """docs/SEMANTICS.md: a new name longer than 255 bytes is ENAMETOOLONG; one that cannot be an object name EINVAL."""
    if len(name.encode()) > NAME_MAX:
        return errno.ENAMETOOLONG
    return None if name_ok(name) else errno.EINVAL


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NEW_NAMES)
@example(name="new\nline\t\x7f\x01")
@example(name="..")
@example(name="x" * NAME_MAX)
@example(name="é" * 128)
def test_core_creates_only_names_that_can_be_keys(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    assume(name not in ("existing", "sub"))
    staging = tmp_path_factory.mktemp("staging")

    async def check(fs: Filesystem, client: MemoryClient) -> None:
        want = expected_errno(name)
        existing = (await fs.lookup(ROOT_INODE, "existing")).ino
        sub = (await fs.mkdir(ROOT_INODE, "sub")).ino  # a file, a directory and a rename target of the same name
        for operation in ("create", "mkdir", "rename"):
            try:
                if operation == "create":
                    result, _ = await fs.create(ROOT_INODE, name, os.O_WRONLY | os.O_CREAT)
                    await fs.write(result.fh, 0, b"data")
                    await fs.release(result.fh)
                elif operation == "mkdir":
                    await fs.mkdir(sub, name)
                else:
                    await fs.rename(ROOT_INODE, "existing", ROOT_INODE, name, 0)
            except FsError as exc:
                assert exc.errno == want, (operation, name, exc)
            else:
                assert want is None, f"{operation} of {name!r} should fail with {errno.errorcode[want]}"
        snapshot = client.snapshot()
        if want is None:  # the rename replaced the new file: the key holds the old content
            assert snapshot == {name: b"old"}
        else:
            assert snapshot == {"existing": b"old"}
            assert (await fs.lookup(ROOT_INODE, "existing")).ino == existing

    run_filesystem(check, MemoryClient(seed=4), keys={"existing": b"old"}, staging_dir=str(staging))


def test_core_lookup_of_a_name_that_is_not_utf8_asks_nothing_and_finds_nothing() -> None:
    """The kernel may pass any bytes (os.fsdecode makes b'\\xff' '\\udcff'); S3 keys are UTF-8,
    so no key can match: ENOENT without a request (the real client cannot even encode it)."""
    async def check(fs: Filesystem, client: MemoryClient) -> None:
        client.calls.clear()
        for name in ("\udcff", "a\udcffb", "\udce9t\udce9"):
            assert (await fs.lookup(ROOT_INODE, name)).ino == 0
        assert sum(client.calls.values()) == 0

    run_filesystem(check, MemoryClient(seed=5), keys={"a": b"1"})


def test_core_refuses_to_create_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    async def check(fs: Filesystem, client: MemoryClient) -> None:
        with pytest.raises(FsError) as failure:
            await fs.create(ROOT_INODE, "\udcff", os.O_WRONLY | os.O_CREAT)
        assert failure.value.errno == errno.EINVAL

    run_filesystem(check, MemoryClient(seed=6), staging_dir=str(tmp_path))


def test_core_refuses_a_new_key_longer_than_s3_allows(tmp_path: Path) -> None:
    """SEMANTICS.md's error table: key too long is ENAMETOOLONG, at the create, not EIO at close."""
    async def check(fs: Filesystem, client: MemoryClient) -> None:
        ino = ROOT_INODE
        for _ in range(4):
            ino = (await fs.mkdir(ino, "d" * 250)).ino  # 4 x 251 = 1,004 bytes of prefix
        with pytest.raises(FsError) as failure:
            await fs.create(ino, "f" * 30, os.O_WRONLY | os.O_CREAT)
        assert failure.value.errno == errno.ENAMETOOLONG
        with pytest.raises(FsError) as failure:
            await fs.mkdir(ino, "g" * 30)
        assert failure.value.errno == errno.ENAMETOOLONG

    run_filesystem(check, MemoryClient(seed=7), staging_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------
# Through real mounts of s3xfs-localzone

# Every case of the keys section; contents differ so that a wrong mapping shows.
MOUNT_KEYS = [
    ".", "..", "./x", "../x", "../../etc/passwd", "a/../b", "c/./d", "e//f", "/lead", "/", "//", "g/..", "h/.",
    "ctl\n\t\x7f\x01", "dir\x01/in\nside", "\r", "long/" + "x" * 256, "long/" + "é" * 128, "long/" + "é" * 127 + "x",
    "long/" + "x" * NAME_MAX, "/".join(["k" * 204] * 5), "k" * KEY_MAX, "clash", "clash/x", "m/", "é", "e\u0301",
    "\ufeffbom", "\u202eevil", "sp ace ", "%2e%2e", "\\..\\w", "q?x#y", "p/..", "p/ok",
]


@pytest.fixture(scope="module")
def hostile_bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalZone, dict[str, bytes]]]:
    """An endpoint of its own (these keys would show up in other tests' listings) holding MOUNT_KEYS."""
    server = LocalZone(tmp_path_factory.mktemp("hostile-keys"), "--bucket", BUCKET).start()
    try:
        s3 = server.client()
        contents = {key: b"" if key.endswith("/") else f"content of {key!r}\n".encode() for key in MOUNT_KEYS}
        contents["nz/"] = b"a non-empty key ending in /"
        for key, data in contents.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        listed = {item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                  for item in page.get("Contents", [])}
        assert listed == set(contents)  # the endpoint kept every key exactly
        yield server, contents
    finally:
        server.stop()


def mount_view(root: Path) -> dict[str, tuple[str, int]]:
    """What os.walk sees, checking that every path stays inside the mount."""
    seen: dict[str, tuple[str, int]] = {}
    real_root = os.path.realpath(root)
    for directory, dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        assert os.path.realpath(directory).startswith(real_root)
        assert os.stat(os.path.join(directory, "..")).st_ino == (
            os.stat(os.path.dirname(directory)).st_ino), directory  # '..' is the kernel's parent, never a key
        for name in dirs:
            seen[os.path.normpath(os.path.join(rel, name))] = ("dir", 0)
        for name in files:
            path = os.path.join(directory, name)
            assert os.path.realpath(path).startswith(real_root + os.sep)
            seen[os.path.normpath(os.path.join(rel, name))] = ("file", os.stat(path).st_size)
    return seen


def logged_hidden(log: Path) -> list[str]:
    return [ast.literal_eval(match.group(1)) for line in log.read_text(errors="replace").splitlines()
            if (match := HIDDEN.search(line))]


@pytest.mark.fuse
@needs_fuse
def test_read_only_mount_shows_exactly_the_documented_keys(hostile_bucket, mount_factory) -> None:
    server, contents = hostile_bucket
    shown, logged = expected_view({key: len(data) for key, data in contents.items()})
    server.reset_stats()
    mount = mount_factory(server, BUCKET, "--read-only", "--metadata-ttl", "0")
    for _ in range(2):  # listed twice (TTL 0): hidden keys are still logged once
        assert mount_view(mount.path) == shown
    for rel, (kind, _) in shown.items():
        if kind == "file":  # each visible file is its own key's content
            assert (mount.path / rel).read_bytes() == contents[rel]
    # `..` and `.` are the kernel's: the bucket's '../x' and '../../etc/passwd' are never reached.
    outside = mount.path.parent
    assert not (outside / "x").exists()
    with pytest.raises(FileNotFoundError):
        (mount.path / ".." / "x").read_bytes()
    assert os.stat(mount.path / "a" / ".." / "..").st_ino == os.stat(outside).st_ino
    assert os.stat(mount.path / "clash" / "..").st_ino == os.stat(mount.path).st_ino
    # Not UTF-8 (no request can even be made), too long, and 'e//f', which the kernel reads as 'e/f'.
    for name in ["\udcff", "long/" + "x" * 256, "e//f"]:
        with pytest.raises(FileNotFoundError):
            os.stat(os.fsencode(mount.path) + b"/" + os.fsencode(name))
    assert os.path.isdir(mount.path / "clash")  # the directory wins over the file 'clash'
    hidden = logged_hidden(mount.log)
    assert sorted(hidden) == sorted(logged), "each hidden key is logged exactly once"
    assert "Traceback" not in mount.log.read_text(errors="replace")
    assert server.stats()["mutating_requests"] == 0


@pytest.mark.fuse
@needs_fuse
def test_read_write_mount_creates_only_names_that_can_be_keys(hostile_bucket, mount_factory, tmp_path: Path) -> None:
    server, contents = hostile_bucket
    shown, _ = expected_view({key: len(data) for key, data in contents.items()})
    mount = mount_factory(server, BUCKET, "--metadata-ttl", "0", "--staging-dir", str(tmp_path / "staging"))
    assert mount_view(mount.path) == shown
    root = os.fsencode(mount.path)
    refused = {b"x" * (NAME_MAX + 1): errno.ENAMETOOLONG, ("é" * 128).encode(): errno.ENAMETOOLONG}
    for name, code in refused.items():
        for attempt in (lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)), os.mkdir,
                        lambda p: os.rename(os.path.join(root, b"sp ace "), p)):
            with pytest.raises(OSError) as failure:
                attempt(os.path.join(root, name))
            assert failure.value.errno == code, (name, attempt)
    # The file 'clash' is hidden by the directory: it can be neither reached nor replaced from here.
    with pytest.raises(OSError) as failure:
        os.open(os.path.join(root, b"clash"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert failure.value.errno == errno.EEXIST
    with pytest.raises(IsADirectoryError):
        os.open(os.path.join(root, b"clash"), os.O_WRONLY | os.O_TRUNC)
    # Control characters and 255-byte names are valid object names: stored under exactly that key.
    made = {"new\nline": b"1", "tab\there": b"2", "\x7fdel": b"3", "\x01ctl": b"4", "y" * NAME_MAX: b"5",
            "é" * 127 + "x": b"6", "dir\x01/new\x02": b"7"}
    for name, data in made.items():
        with open(os.path.join(root, os.fsencode(name)), "wb") as f:
            f.write(data)
    s3 = server.client()
    for name, data in made.items():
        assert s3.get_object(Bucket=BUCKET, Key=name)["Body"].read() == data
    for key, data in contents.items():  # nothing that was there changed
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    for name in made:  # leave the bucket as the other tests expect it
        s3.delete_object(Bucket=BUCKET, Key=name)
    assert "Traceback" not in mount.log.read_text(errors="replace")


@pytest.mark.fuse
@needs_fuse
def test_read_write_mount_refuses_a_name_that_is_not_utf8(hostile_bucket, mount_factory, tmp_path: Path) -> None:
    server, _ = hostile_bucket
    mount = mount_factory(server, BUCKET, "--staging-dir", str(tmp_path / "staging"))
    with pytest.raises(OSError) as failure:
        os.close(os.open(os.fsencode(mount.path) + b"/bad\xff", os.O_WRONLY | os.O_CREAT, 0o644))
    assert failure.value.errno == errno.EINVAL
