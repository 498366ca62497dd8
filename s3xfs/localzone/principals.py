"""Who may call the endpoint, and which session modes each principal may create per bucket.

This emulates IAM/bucket policies reduced to what matters for S3 Express: the
``s3express:SessionMode`` condition. A principal's ``buckets`` maps a bucket name (or ``*``) to
the modes allowed there. For general purpose buckets the same table decides whether the
principal may read (``ReadOnly``) or also write (``ReadWrite``).

Users file (JSON)::

    {"principals": [
       {"name": "trainer", "access_key": "AKIA...", "secret_key": "...",
        "buckets": {"data--usw2-az1--x-s3": ["ReadOnly"], "*": ["ReadOnly", "ReadWrite"]}}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("ReadOnly", "ReadWrite")
# The AWS documentation's example key pair: recognisably fake, and what every tutorial uses.
DEFAULT_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
DEFAULT_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@dataclass(frozen=True)
class Principal:
    name: str
    access_key: str
    secret_key: str = field(repr=False)
    buckets: dict[str, tuple[str, ...]]

    def modes_for(self, bucket: str) -> tuple[str, ...]:
        """Session modes allowed on ``bucket`` (an exact entry wins over ``*``)."""
        if bucket in self.buckets:
            return self.buckets[bucket]
        return self.buckets.get("*", ())


class UsersFileError(ValueError):
    """The users file is unreadable or malformed (message says where)."""


def default_principal(access_key: str, secret_key: str) -> Principal:
    return Principal("default", access_key, secret_key, {"*": MODES})


def load_principals(path: Path) -> list[Principal]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsersFileError(f"cannot read users file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsersFileError(f"users file {path} is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise UsersFileError(f"users file {path} is not UTF-8 text") from None
    entries = document.get("principals") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UsersFileError(f"users file {path}: expected a non-empty list under \"principals\"")
    principals: list[Principal] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"users file {path}, principal #{index + 1}"
        if not isinstance(entry, dict):
            raise UsersFileError(f"{where}: expected an object")
        access_key, secret_key = entry.get("access_key"), entry.get("secret_key")
        if not isinstance(access_key, str) or not access_key or not isinstance(secret_key, str) or not secret_key:
            raise UsersFileError(f"{where}: \"access_key\" and \"secret_key\" must be non-empty strings")
        if access_key in seen:
            raise UsersFileError(f"{where}: access key {access_key} appears twice")
        seen.add(access_key)
        buckets = entry.get("buckets", {"*": list(MODES)})
        if not isinstance(buckets, dict):
            raise UsersFileError(f"{where}: \"buckets\" must map bucket names to lists of modes")
        table: dict[str, tuple[str, ...]] = {}
        for bucket, modes in buckets.items():
            if not isinstance(modes, list) or any(mode not in MODES for mode in modes):
                raise UsersFileError(f"{where}: modes for {bucket!r} must be a list drawn from {list(MODES)}")
            table[bucket] = tuple(modes)
        principals.append(Principal(str(entry.get("name") or access_key), access_key, secret_key, table))
    return principals
