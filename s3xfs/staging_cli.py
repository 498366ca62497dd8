"""``s3xfs staging list|restore|discard``: find and recover what a mount left in its staging directory.

A staging directory keeps files being written out of order (``*.s3xfs``) and the data of failed
commits (``*.rescued``). A clean unmount leaves only the latter; a crash (kill -9, power cut) can
leave both. Each carries a record of its bucket and key (``s3xfs/core/staging.py``), so:

* ``list`` shows every such file: its size, whether the mount that made it still runs, and where
  its bytes belong. Needs no credentials.
* ``restore FILE...`` stores each file where it belongs, as conditional as the mount's own commit
  was: the whole content replaces the ETag it was based on (or creates a key that did not exist),
  and bytes that follow an offset are appended there if the object is still what they follow. A
  bucket that changed meanwhile refuses, and nothing is overwritten: ``--to KEY`` stores the bytes
  under another key instead, ``--force`` replaces whatever is there. The file is deleted once
  stored (``--keep`` keeps it).
* ``discard FILE...`` deletes files (and their records) that are not wanted.

Files of a mount that is still running are refused by ``restore`` and ``discard``: its own close
uploads or deletes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .config import default_staging_dir
from .core import staging

PART_SIZE = 8 * 1024 * 1024  # as a mount's default --part-size: a staged file larger than this goes up in parts
MEMORY = 64 * 1024 * 1024  # bytes of parts in flight at once while restoring one file


class RestoreError(Exception):
    """Why one file was not restored; printed as one line, the next file is tried."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list", help="show the files a staging directory holds and where they belong",
        description="Show each file in the staging directory: its size, whether the mount that made it still "
                    "runs, and the bucket, key and place its bytes belong to. Needs no credentials.")
    _staging_dir_argument(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per file, for scripts")
    restore = actions.add_parser(
        "restore", help="store staged or rescued files in their bucket",
        description="Store each FILE where its record says it belongs, under the condition the mount's own "
                    "commit had (replace the ETag it was based on, create a key that did not exist, append after "
                    "the ETag it follows), then delete it. Credentials as for s3xfs mount.")
    restore.add_argument("files", nargs="+", metavar="FILE", help="a path, or a name in the staging directory")
    _staging_dir_argument(restore)
    restore.add_argument("--to", metavar="KEY", help="store the bytes under this key of the same bucket instead "
                                                     "(only if it does not exist, unless --force); one FILE only")
    restore.add_argument("--force", action="store_true", help="replace the object whatever it is now")
    restore.add_argument("--keep", action="store_true", help="keep the file after storing it")
    restore.add_argument("--region", metavar="REGION", help="the bucket's region (default: from its zone id)")
    restore.add_argument("--endpoint-url", metavar="URL", help="talk to this endpoint instead of AWS")
    restore.add_argument("--profile", metavar="NAME", help="AWS profile for credentials")
    discard = actions.add_parser("discard", help="delete staged or rescued files that are not wanted",
                                 description="Delete each FILE and its record; refused while its mount runs.")
    discard.add_argument("files", nargs="+", metavar="FILE", help="a path, or a name in the staging directory")
    _staging_dir_argument(discard)


def _staging_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--staging-dir", metavar="DIR",
                        help=f"the mount's --staging-dir (default: {default_staging_dir()})")


def staging_command(args: argparse.Namespace) -> int:
    from .cli import UsageError

    given = Path(args.staging_dir).absolute() if args.staging_dir else default_staging_dir()
    if args.staging_dir and not given.is_dir():  # a typo must not read as "nothing staged"
        raise UsageError(f"--staging-dir {given}: " + ("not a directory" if given.exists() else "no such directory"))
    directory = staging.private_directory(str(given))
    if args.action == "list":
        try:
            return _list(given, directory, args.json)
        except BrokenPipeError:  # `s3xfs staging list | head`: the reader has all it wants
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
    found = [_entry(name, directory) for name in args.files]
    if args.action == "discard":
        return _discard(found)
    if args.to is not None and len(found) != 1:
        raise UsageError("--to names one key: restore one FILE with it")
    if args.to is not None and (not args.to or args.to.startswith("/") or len(args.to.encode()) > 1024):
        raise UsageError(f"--to must be an object key (1 to 1024 bytes, no leading /), not {args.to!r}")
    return _restore(found, args)


def _entry(name: str, directory: str | None) -> staging.Entry:
    """The staging file named on the command line: a path, or a name in the staging directory."""
    from .cli import UsageError

    path = Path(name)
    if not path.exists() and os.sep not in name and directory is not None:
        path = Path(directory) / name
    if not path.is_file():
        raise UsageError(f"{name}: no such staging file" + (f" (nor in {directory})" if directory else ""))
    if not path.name.endswith(staging.DATA_SUFFIXES):
        raise UsageError(f"{path}: not a staging file (*.s3xfs or *.rescued)")
    try:
        record = staging.read_record(str(path))
        problem = None
    except (OSError, ValueError) as exc:
        record, problem = None, str(exc)
    info = path.stat()
    return staging.Entry(str(path.absolute()), info.st_size, info.st_mtime, record, problem,
                         record is not None and record.in_use())


# --- list ----------------------------------------------------------------------------------------


def _list(given: Path, directory: str | None, as_json: bool) -> int:
    found = list(staging.entries(directory)) if directory else []
    if as_json:
        for entry in found:
            print(json.dumps(_as_dict(entry), sort_keys=True))
        return 0
    if not found:
        print(f"{directory or given}: nothing staged")
        return 0
    print(f"{directory}: {len(found)} file{'s' if len(found) != 1 else ''}")
    for entry in found:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.modified))
        print(f"{os.path.basename(entry.path)}  {_size(entry.size)}  written {when}  {entry.state}")
        if entry.record is not None:
            print(f"    {entry.record.describe()}")
        else:
            print("    where it belongs is unknown" + (": it is empty, discard it" if entry.size == 0 else ""))
    return 0


def _as_dict(entry: staging.Entry) -> dict[str, Any]:
    record = entry.record
    return {"path": entry.path, "size": entry.size, "modified": entry.modified, "in_use": entry.in_use,
            "state": entry.state, "problem": entry.problem,
            "bucket": record.bucket if record else None, "key": record.key if record else None,
            "kind": record.kind if record else None, "offset": record.offset if record else None,
            "based_on": record.based_on if record else None, "upload_id": record.upload_id if record else None,
            "pid": record.owner.pid if record and record.owner else None,
            "description": record.describe() if record else None}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# --- discard -------------------------------------------------------------------------------------


def _discard(found: list[staging.Entry]) -> int:
    status = 0
    for entry in found:
        if entry.in_use:
            print(f"s3xfs: {entry.path}: {entry.state}: its mount uploads or deletes it when the file is closed",
                  file=sys.stderr)
            status = 1
            continue
        staging.remove_with_record(entry.path)
        print(f"s3xfs: discarded {entry.path}")
    return status


# --- restore -------------------------------------------------------------------------------------


def _restore(found: list[staging.Entry], args: argparse.Namespace) -> int:
    from .cli import UsageError
    from .client.naming import NamingError, check_endpoint_override, check_region, parse_bucket_name, region_for

    status = 0
    by_bucket: dict[str, list[staging.Entry]] = {}
    for entry in found:
        if entry.record is None:
            why = entry.problem or "no record of its bucket and key"
            print(f"s3xfs: {entry.path}: {why}: copy it where it belongs yourself, then discard it", file=sys.stderr)
            status = 1
        elif entry.in_use:
            print(f"s3xfs: {entry.path}: {entry.state}: its mount uploads it when the file is closed", file=sys.stderr)
            status = 1
        else:
            by_bucket.setdefault(entry.record.bucket, []).append(entry)
    try:
        endpoint = check_endpoint_override(args.endpoint_url) if args.endpoint_url else None
        region = check_region(args.region) if args.region else None
        buckets = {name: parse_bucket_name(name) for name in by_bucket}
        regions = {name: region or region_for(bucket, None) for name, bucket in buckets.items()}
    except NamingError as exc:
        raise UsageError(str(exc).rstrip(".")) from None
    import trio

    # Each failure is reported below in one line; the client's own log records (a refused
    # CreateSession is a WARNING) would repeat it through logging's bare last-resort handler.
    logging.getLogger().addHandler(logging.NullHandler())
    for name, entries in by_bucket.items():
        results = trio.run(_restore_bucket, buckets[name], regions[name], endpoint, args, entries)
        for entry, outcome in zip(entries, results):
            if isinstance(outcome, RestoreError):
                print(f"s3xfs: {entry.path}: {outcome}", file=sys.stderr)
                status = 1
                continue
            if not args.keep:
                staging.remove_with_record(entry.path)
            print(f"s3xfs: restored {entry.path} to {name}/{outcome}")
    return status


async def _restore_bucket(bucket: Any, region: str, endpoint: str | None, args: argparse.Namespace,
                          entries: list[staging.Entry]) -> list[str | RestoreError]:
    """Each entry's outcome: what it became (``key (N bytes, ETag E)``) or why not."""
    from .client import errors as client_errors
    from .client.s3 import ClientOptions, open_client

    outcomes: list[str | RestoreError] = []
    options = ClientOptions(region=region, endpoint_url=endpoint, profile=args.profile)
    try:
        async with open_client(bucket, options) as client:
            for entry in entries:
                try:
                    outcomes.append(await _restore_one(client, entry, args))
                except RestoreError as exc:
                    outcomes.append(exc)
    except client_errors.ClientError as exc:  # the client itself could not start (credentials, profile)
        outcomes += [RestoreError(str(exc))] * (len(entries) - len(outcomes))
    except Exception as exc:  # noqa: BLE001 - e.g. botocore's ProfileNotFound: one line, never a traceback
        outcomes += [RestoreError(f"cannot connect to the bucket: {exc}")] * (len(entries) - len(outcomes))
    return outcomes


async def _restore_one(client: Any, entry: staging.Entry, args: argparse.Namespace) -> str:
    from .client import errors as client_errors
    from .core.prefetch import MemoryBudget
    from .core.upload import Condition, StagedFile

    record = entry.record
    assert record is not None
    key = args.to or record.key
    whole = record.offset == 0 and record.upload_id is None
    if not whole and not args.to:
        if record.upload_id:
            raise RestoreError(
                f"{record.describe()}: s3xfs cannot complete that upload; store these bytes alone with --to KEY, "
                f"or complete it yourself (ListParts, UploadPart of this file, CompleteMultipartUpload)")
        if args.force:
            raise RestoreError(f"{record.describe()}: --force applies to whole contents only; use --to KEY")
    if args.force:
        condition = Condition()  # whatever is there
    elif args.to:
        condition = Condition(if_none_match=True)  # never replace something else
    else:
        condition = Condition.based_on(record.based_on)
    fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if whole or args.to:
            staged = StagedFile(client, key, condition, entry.path, fd, part_size=PART_SIZE,
                                budget=MemoryBudget(MEMORY))
            staged.size = entry.size
            result = await staged.upload()
        else:
            data = os.pread(fd, entry.size, 0)
            result = await client.append(key, data, offset=record.offset, if_match=record.based_on)
    except client_errors.PreconditionFailed:
        if args.to:
            raise RestoreError(f"{client.bucket}/{key} exists: name another key, or --force to replace it") from None
        then = f"was ETag {record.based_on}" if record.based_on else "did not exist"
        raise RestoreError(f"{client.bucket}/{key} changed since this file was staged (it {then}): "
                           f"restore it --to another key, or --force to replace it") from None
    except client_errors.NotFound:
        raise RestoreError(f"{client.bucket}/{key} no longer exists (it was ETag {record.based_on}): "
                           "restore it --to a key, or --force to create it again") from None
    except client_errors.ClientError as exc:
        raise RestoreError(str(exc)) from None
    except OSError as exc:
        raise RestoreError(f"cannot read it: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return f"{key} ({result.size} bytes, ETag {result.etag})"


__all__ = ["add_arguments", "staging_command"]
