"""The kernel's mount table (/proc/self/mountinfo), read without touching the mounts themselves.

Commands ask it rather than stat() a mount point: a stat could hang on a dead or slow FUSE mount,
call into the daemon before it serves, or trigger the very automount that is waiting for us.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

FSTYPE = "fuse.s3xfs"  # the daemon mounts with subtype=s3xfs
MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str = ""
    options: dict[str, str] = field(default_factory=dict)  # the superblock options (FUSE: user_id=...)
    device: str = ""  # major:minor, as in /sys/class/bdi/

    @property
    def owner(self) -> int | None:
        """The uid of the process that made a FUSE mount (its ``user_id``), if the table says."""
        value = self.options.get("user_id", "")
        return int(value) if value.isdigit() else None


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a mountinfo text, in mount order."""
    entries = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        options = {}
        for item in (tail[2] if len(tail) > 2 else "").split(","):
            name, _, value = item.partition("=")
            options[name] = value
        source = _unescape(tail[1]) if len(tail) > 1 else ""
        entries.append(MountEntry(_unescape(fields[4]), tail[0], source, options, device=fields[2]))
    return entries


def read_mountinfo() -> list[MountEntry]:
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as table:
        return parse_mountinfo(table.read())


def mounted_on(path: str, entries: Iterable[MountEntry]) -> MountEntry | None:
    """The visible mount whose mount point is exactly ``path`` (resolved): the last one stacked there."""
    found = None
    for entry in entries:
        if entry.mountpoint == path:
            found = entry
    return found


def mount_of(path: str, entries: Iterable[MountEntry]) -> MountEntry | None:
    """The mount that holds the absolute, resolved ``path``: the longest mount point above it
    (the later one when two are stacked on the same point, as that is the one visible)."""
    best: MountEntry | None = None
    for entry in entries:
        point = entry.mountpoint.rstrip("/") or "/"
        inside = path == point or path.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.mountpoint.rstrip("/") or "/")):
            best = entry
    return best
