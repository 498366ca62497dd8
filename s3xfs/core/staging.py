"""What ties a file in the staging directory to its bucket and key, so it survives a crash.

The staging directory (``--staging-dir``) holds staged files (``*.s3xfs``: files being written out
of order) and rescued data (``*.rescued``: what a failed commit could not store). Their names are
made from the key's last component only, which cannot say where the content belongs. So every such
file carries a *record*, written when the file is created, before any data: the bucket, the full
key, where the bytes go (the whole object, or the bytes that follow an offset), the ETag the
content was based on, and which process made it. ``s3xfs staging list|restore|discard`` read it
(see docs/SEMANTICS.md, "Writing").

Where the record lives: the extended attribute ``user.s3xfs.staged`` of the file itself (it moves
with the file and adds no file to the directory); on a filesystem without user extended
attributes, a sidecar file ``FILE.record`` next to it. Either way it is JSON, and holds no
credential.

A record's process (pid, its start time, the boot id) tells a file in use by a running mount from
one left by a process that is gone: a pid alone could have been reused.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

log = logging.getLogger(__name__)

XATTR = "user.s3xfs.staged"
SIDECAR_SUFFIX = ".record"  # FILE.record: the record when the filesystem has no user xattrs
DATA_SUFFIXES = (".s3xfs", ".rescued")  # staged content, rescued content
STAGED, RESCUED = "staged", "rescued"
FORMAT = 1  # the record's version; a reader refuses a newer one rather than misread it


@dataclass(frozen=True)
class Owner:
    """The process that made a staging file: alive means the file may still change."""
    pid: int
    start: int  # the process's start time in clock ticks after boot (/proc/PID/stat field 22)
    boot: str  # /proc/sys/kernel/random/boot_id: a pid from an earlier boot is surely gone
    host: str

    @classmethod
    def current(cls) -> "Owner":
        return cls(os.getpid(), _start_time(os.getpid()) or 0, _boot_id(), socket.gethostname())

    def alive(self) -> bool:
        """Whether that very process still runs (on this host, in this boot)."""
        if self.host != socket.gethostname() or self.boot != _boot_id():
            return False
        return _start_time(self.pid) == self.start


@dataclass(frozen=True)
class Record:
    """Where a staging file's bytes belong."""
    bucket: str
    key: str
    kind: str  # STAGED (the file being written) or RESCUED (kept from a failed commit)
    offset: int = 0  # the bytes go at this offset of the object: 0 is the whole content
    based_on: str | None = None  # the ETag the content replaces (or follows); None: the key did not exist
    upload_id: str | None = None  # rescued bytes that follow the parts of this multipart upload
    created: float = 0.0
    owner: Owner | None = None
    format: int = FORMAT

    def in_use(self) -> bool:
        """Whether a running mount still writes the file (rescued data is final once saved)."""
        return self.kind == STAGED and self.owner is not None and self.owner.alive()

    def describe(self) -> str:
        """What the bytes are, in words."""
        where = f"{self.bucket}/{self.key}"
        if self.upload_id:
            return f"bytes from offset {self.offset} of {where}, after the parts of multipart upload {self.upload_id}"
        if self.offset:
            return f"bytes to append to {where} at offset {self.offset} (after ETag {self.based_on})"
        if self.based_on:
            return f"the whole new content of {where}, replacing ETag {self.based_on}"
        return f"the whole content of {where}, a new object"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Record":
        """Parse a record; ValueError if it is not one this version understands."""
        try:
            values = json.loads(data)
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
            if values.get("format", FORMAT) > FORMAT:
                raise ValueError(f"record format {values['format']} is newer than this s3xfs understands")
            owner = values.pop("owner", None)
            record = cls(**values, owner=Owner(**owner) if owner else None)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a staging record: {exc}") from None
        if not isinstance(record.bucket, str) or not isinstance(record.key, str) \
                or record.kind not in (STAGED, RESCUED):
            raise ValueError("not a staging record: bucket, key or kind missing")
        if not isinstance(record.offset, int) or record.offset < 0:
            raise ValueError("not a staging record: bad offset")
        return record


def new_record(bucket: str, key: str, kind: str, *, offset: int = 0, based_on: str | None = None,
               upload_id: str | None = None) -> Record:
    """A record made now, by this process."""
    return Record(bucket, key, kind, offset, based_on, upload_id, time.time(), Owner.current())


_warned: set[str] = set()  # directories already warned about, so a failing one logs once


def write_record(path: str, record: Record, fd: int | None = None, *, durable: bool = False) -> bool:
    """Attach ``record`` to the staging file ``path`` (replacing any earlier one); False if it could
    not be kept anywhere (logged once per directory): the data still works, only a crash would leave
    it unnamed. ``durable``: a sidecar is fsynced too (an xattr is covered by the file's fsync)."""
    data = record.to_json()
    try:
        if fd is not None:
            os.setxattr(fd, XATTR, data)
        else:
            os.setxattr(path, XATTR, data)
        return True
    except OSError:
        pass  # no user xattrs here (tmpfs before Linux 6.6, some network filesystems): a sidecar
    try:
        temporary = path + SIDECAR_SUFFIX + ".tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(descriptor, data)
            if durable:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path + SIDECAR_SUFFIX)  # never a half-written record
        return True
    except OSError as exc:
        directory = os.path.dirname(path)
        if directory not in _warned:
            _warned.add(directory)
            log.warning("cannot record the bucket and key of staging files in %s (%s): after a crash, "
                        "s3xfs staging list cannot tell where they belong", directory, exc.strerror or exc)
        return False


def read_record(path: str) -> Record | None:
    """The record of a staging file; None if it has none; ValueError if it is unreadable."""
    try:
        return Record.from_json(os.getxattr(path, XATTR))
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    try:
        with open(path + SIDECAR_SUFFIX, "rb") as sidecar:
            return Record.from_json(sidecar.read())
    except FileNotFoundError:
        return None


def remove_with_record(path: str) -> None:
    """Delete a staging file and its sidecar record, if any."""
    for name in (path, path + SIDECAR_SUFFIX):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def private_directory(directory: str) -> str | None:
    """Where :class:`~s3xfs.core.upload.Staging` keeps its files for ``directory``, without creating
    anything: the directory itself when it is ours and private (0700), else its ``s3xfs-UID``
    subdirectory (a shared /var/tmp, or someone else's). None if neither exists yet."""
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return None
    if info.st_uid == os.getuid() and not info.st_mode & 0o077:
        return directory
    inner = os.path.join(directory, f"s3xfs-{os.getuid()}")
    return inner if os.path.isdir(inner) else None


@dataclass(frozen=True)
class Entry:
    """One data file of a staging directory, and what is known about it."""
    path: str
    size: int
    modified: float
    record: Record | None = None
    problem: str | None = None  # why the record could not be read
    in_use: bool = False  # a staged file whose mount still runs: it may still change

    @property
    def state(self) -> str:
        if self.record is None:
            return "no record" if self.problem is None else f"unreadable record ({self.problem})"
        owner = self.record.owner
        if owner is None:
            return "made by an unknown process"
        if self.in_use:
            return f"in use by pid {owner.pid}"
        if owner.alive():
            return f"kept by pid {owner.pid} (still running) after a failed upload"
        return f"left by pid {owner.pid}, which has exited"


def entries(directory: str) -> Iterator[Entry]:
    """The data files of a staging directory (as resolved by :func:`private_directory`), oldest first."""
    found = []
    with os.scandir(directory) as scan:
        for item in scan:
            if not item.name.endswith(DATA_SUFFIXES) or not item.is_file(follow_symlinks=False):
                continue
            try:
                info = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # committed and removed meanwhile
            record, problem = None, None
            try:
                record = read_record(item.path)
            except (OSError, ValueError) as exc:
                problem = str(exc)
            in_use = record is not None and record.in_use()
            found.append(Entry(item.path, info.st_size, info.st_mtime, record, problem, in_use))
    yield from sorted(found, key=lambda entry: (entry.modified, entry.path))


def with_key(record: Record, key: str) -> Record:
    return replace(record, key=key)


def with_base(record: Record, etag: str | None) -> Record:
    return replace(record, based_on=etag)


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    fields = text[text.rfind(b")") + 2:].split()
    try:
        return int(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return boot.read().strip()
    except OSError:
        return ""


__all__ = ["DATA_SUFFIXES", "Entry", "Owner", "RESCUED", "Record", "STAGED", "entries", "new_record",
           "private_directory", "read_record", "remove_with_record", "with_base", "with_key", "write_record"]
