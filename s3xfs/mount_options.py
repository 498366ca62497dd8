"""The ``-o`` vocabulary shared by ``s3xfs mount -o`` and ``mount.s3xfs -o`` (fstab, systemd).

Four kinds of option, each handled the way the tool that writes it expects:

- s3xfs's own: every long option of ``s3xfs mount`` as ``key=value`` (or a bare flag);
- kernel mount flags (``nosuid``, ``noexec``, ``noatime``...) passed on to the FUSE mount: mount(8)
  adds ``nosuid,nodev,noexec`` itself for fstab lines marked ``user``;
- options meant for mount(8) and systemd themselves (``_netdev``, ``nofail``, ``x-systemd.*``...):
  they have done their job before the helper runs, so they are accepted and ignored;
- anything else is a mistake, and an error (unless mount(8)'s ``-s`` asked for sloppiness).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

# Bare flags -> (attribute of the parsed `s3xfs mount` arguments, value). `rw` undoes `ro`.
FLAG_OPTIONS: dict[str, tuple[str, bool]] = {
    "ro": ("read_only", True), "rw": ("read_only", False), "read-only": ("read_only", True),
    "foreground": ("foreground", True), "allow-other": ("allow_other", True), "allow-root": ("allow_root", True),
}
# key=value options: the long option of the same name.
VALUE_OPTIONS = frozenset({
    "region", "endpoint-url", "profile", "prefix", "uid", "gid", "file-mode", "dir-mode", "metadata-ttl",
    "negative-ttl", "max-cached-entries", "max-threads", "part-size", "staging-dir", "cache", "max-cache-size", "cache-block-size",
    "log-level", "log-file", "debug",
})
# Kernel mount flags a FUSE mount accepts; passed on as they are (libfuse turns them into MS_* flags).
KERNEL_FLAGS = frozenset({
    "nosuid", "suid", "nodev", "dev", "noexec", "exec", "noatime", "atime", "nodiratime", "diratime",
    "relatime", "norelatime", "strictatime", "nostrictatime", "sync", "async", "dirsync", "lazytime", "nolazytime",
})
# Read by mount(8) or systemd before the helper runs; meaningless to the daemon.
MOUNT_TOOL_OPTIONS = frozenset({"defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser",
                                "owner", "group", "nousers"})
MOUNT_TOOL_PREFIXES = ("x-", "comment=")  # x-systemd.*, x-mount.*, x-gvfs-*; comment=systemd.*


class OptionError(Exception):
    """An ``-o`` item s3xfs cannot accept; the message names it."""


@dataclass
class FoldedOptions:
    """What ``-o`` contributed beyond the long options."""

    kernel_flags: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # mount(8)/systemd's own, and (with -s) unknown ones


def split(values: list[str]) -> list[str]:
    """``["ro,region=x", "cache=/c"]`` -> ``["ro", "region=x", "cache=/c"]`` (empty items dropped)."""
    return [item for group in values for item in (part.strip() for part in group.split(",")) if item]


def fold(args: argparse.Namespace, values: list[str], *, sloppy: bool = False,
         warn: Callable[[str], None] | None = None) -> FoldedOptions:
    """Fold ``-o`` items into the parsed long options; an explicit long option wins over its ``-o`` key,
    and among ``-o`` items the last wins (mount(8) appends ``mount -o`` options to the fstab line's).

    ``sloppy`` (mount(8)'s ``-s``) turns unknown items into a warning instead of an error.
    """
    folded = FoldedOptions()
    explicit = {attr for attr, _ in FLAG_OPTIONS.values() if getattr(args, attr, None) is not None}
    explicit |= {key.replace("-", "_") for key in VALUE_OPTIONS if getattr(args, key.replace("-", "_"), None) is not None}
    for item in split(values):
        name, has_value, value = item.partition("=")
        if name in MOUNT_TOOL_OPTIONS or item.startswith(MOUNT_TOOL_PREFIXES):
            folded.ignored.append(item)
            continue
        if name in KERNEL_FLAGS and not has_value:
            folded.kernel_flags.append(name)
            continue
        key = name.replace("_", "-")
        if key in FLAG_OPTIONS and not has_value:
            attr, flag = FLAG_OPTIONS[key]
            if attr not in explicit:  # among -o items the last wins (ro,rw is rw), as in mount(8)
                setattr(args, attr, flag)
        elif key in VALUE_OPTIONS and value:
            attr = key.replace("-", "_")
            if attr not in explicit:
                setattr(args, attr, value)
        elif key in VALUE_OPTIONS:  # `cache=` must not quietly mean "the current directory", nor `region=` "guess"
            raise OptionError(f"-o {key} needs a value: -o {key}=VALUE")
        elif key in FLAG_OPTIONS or name in KERNEL_FLAGS:
            raise OptionError(f"-o {name} takes no value, not {item!r}")
        elif sloppy:
            folded.ignored.append(item)
            if warn is not None:
                warn(f"ignoring unknown mount option {item!r} (-s)")
        else:
            raise OptionError(f"unknown mount option -o {item!r}")
    return folded


def documented_keys() -> set[str]:
    """Every ``-o`` key s3xfs knows, for the tests that hold the docs to the code."""
    return set(FLAG_OPTIONS) | set(VALUE_OPTIONS) | set(KERNEL_FLAGS) | set(MOUNT_TOOL_OPTIONS)
