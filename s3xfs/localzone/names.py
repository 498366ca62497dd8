"""Bucket-name rules of the local endpoint (its own copy: it shares no code with the client).

Directory buckets are ``<base>--<zone-id>--x-s3``; everything else is a general purpose bucket
and follows the ordinary S3 naming rules.
"""

from __future__ import annotations

import re

DIRECTORY_SUFFIX = "--x-s3"
_GENERAL = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DIRECTORY = re.compile(r"^(?P<base>[a-z0-9][a-z0-9-]*?)--(?P<zone>[a-z0-9]+(?:-[a-z0-9]+)*-az\d+)--x-s3$")
_IP_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", "--xa-s3")


def is_directory_bucket(name: str) -> bool:
    return name.endswith(DIRECTORY_SUFFIX)


def zone_of(name: str) -> str | None:
    """The zone id of a directory bucket name, or None for a general purpose bucket."""
    match = _DIRECTORY.match(name)
    return match.group("zone") if match else None


def bucket_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid bucket name, or None when it is."""
    if not 3 <= len(name) <= 63:
        return f"bucket name must be 3 to 63 characters long, got {len(name)}"
    if not _GENERAL.match(name):
        return "bucket name may contain only lowercase letters, digits, '.' and '-', and must start and end with a letter or digit"
    if ".." in name:
        return "bucket name must not contain two adjacent periods"
    if _IP_LIKE.match(name):
        return "bucket name must not be formatted as an IP address"
    if name.startswith("xn--") or name.startswith("sthree-"):
        return "bucket name must not start with 'xn--' or 'sthree-'"
    if name.endswith(_RESERVED_SUFFIXES):
        return "bucket name must not end with a reserved suffix (-s3alias, --ol-s3, --xa-s3)"
    if is_directory_bucket(name):
        if "." in name:
            return "directory bucket name must not contain '.'"
        if not _DIRECTORY.match(name):
            return "directory bucket name must have the form <base>--<zone-id>--x-s3, e.g. data--usw2-az1--x-s3"
    return None
