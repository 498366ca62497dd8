"""``mount.s3xfs``: the helper mount(8) runs for ``mount -t s3xfs``, fstab lines and systemd .mount units.

mount(8)'s convention: ``mount.s3xfs SOURCE DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]``, exit 0 when
mounted, 1 for a usage or permission mistake, 32 when the mount itself failed (mount(8) passes the
status on). The options are ``s3xfs mount``'s, fstab style (see ``mount_options``); the helper
returns once the mount is usable, with the daemon running detached, exactly like ``s3xfs mount``.

``s3xfs install-helper`` links this script where mount(8) looks for helpers (``/sbin``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import NoReturn

from . import __version__
from .cli import UsageError, mount_config
from .cli import build_parser as s3xfs_parser

NAME = "mount.s3xfs"
TYPES = ("s3xfs", "fuse.s3xfs")  # what mount(8) may pass with -t
EXIT_USAGE = 1  # mount(8): incorrect invocation or permissions
EXIT_MOUNT_FAILED = 32  # mount(8): mount failure
DEFAULT_HELPER_DIRECTORY = Path("/sbin")  # where mount(8) looks for mount.TYPE (/usr/sbin on merged-/usr systems)


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is mount(8)'s status 1 with one line, not argparse's 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=NAME, description="Mount an S3 Express One Zone directory bucket (helper for mount(8)).")
    parser.add_argument("source", metavar="SOURCE", help="BUCKET[/PREFIX/] or s3://BUCKET/PREFIX/")
    parser.add_argument("directory", metavar="DIR", help="the mount point")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                        help="comma-separated mount options: ro, rw, s3xfs mount's long options as key=value, "
                             "kernel flags (nosuid, noatime...); mount(8)/systemd options are accepted and ignored")
    parser.add_argument("-s", dest="sloppy", action="store_true", help="ignore unknown options (with a warning)")
    parser.add_argument("-f", dest="fake", action="store_true", help="check everything, but do not mount")
    parser.add_argument("-n", dest="no_mtab", action="store_true", help="accepted: s3xfs never writes /etc/mtab")
    parser.add_argument("-v", dest="verbose", action="store_true", help="say what is being mounted")
    parser.add_argument("-t", dest="type", metavar="TYPE", help="s3xfs or fuse.s3xfs (as mount(8) passes it)")
    parser.add_argument("-N", dest="namespace", metavar="NS", help="not supported: mount in the caller's namespace")
    parser.add_argument("--version", action="version", version=f"{NAME} {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.namespace is not None:
            raise UsageError("-N (mounting in another mount namespace) is not supported")
        if args.type is not None and args.type not in TYPES:
            raise UsageError(f"-t must be s3xfs or fuse.s3xfs, not {args.type!r}")
        mount_args = s3xfs_parser().parse_args(["mount", "--", args.source, args.directory])
        mount_args.o = args.options
        config = mount_config(mount_args, sloppy=args.sloppy, program=NAME)
    except UsageError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.verbose:
        mode = "read-only" if config.read_only else "read-write"
        print(f"{NAME}: mounting {config.fsname} at {config.mountpoint} ({mode})", file=sys.stderr)
    if args.fake:
        return 0
    from .daemon import run  # imports pyfuse3/boto3: only once the arguments are known good

    return 0 if run(config, NAME) == 0 else EXIT_MOUNT_FAILED


def _script() -> Path:
    """This installation's ``mount.s3xfs`` console script (beside ``s3xfs``, or on PATH)."""
    candidates = [Path(sys.argv[0]).absolute().parent, Path(sysconfig.get_path("scripts"))]
    for directory in candidates:
        path = directory / NAME
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which(NAME)
    if found is None:
        raise UsageError(f"cannot find the {NAME} script of this installation (is s3xfs installed with pip?)")
    return Path(found).absolute()


def install(directory: Path, *, remove: bool = False, force: bool = False) -> str:
    """Link (or unlink) ``directory/mount.s3xfs`` to this installation's script; returns what was done."""
    link = directory / NAME
    if remove:
        if not link.is_symlink() and not link.exists():
            return f"{link} is not installed"
        if not link.is_symlink() or Path(os.readlink(link)).name != NAME:
            raise UsageError(f"{link} is not a link to a {NAME} script; remove it by hand if it should go")
        link.unlink()
        return f"removed {link}"
    target = _script()
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return f"{link} -> {target} (already installed)"
    if link.is_symlink() or link.exists():
        dangling = link.is_symlink() and not link.exists()
        if not (force or dangling):
            raise UsageError(f"{link} exists and is not this installation's helper; --force replaces it")
        link.unlink()
    try:
        link.symlink_to(target)
    except OSError as exc:
        raise UsageError(f"cannot create {link}: {exc.strerror}") from None
    return f"{link} -> {target}"


if __name__ == "__main__":
    raise SystemExit(main())
