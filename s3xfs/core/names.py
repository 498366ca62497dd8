"""Which object keys can appear as paths, under DESIGN.md's name rules.

A key becomes a path component only if the component is a valid Linux file name: not empty
(``a//b``), not ``.`` or ``..``, no NUL, at most 255 bytes. Other keys are hidden (and logged once),
so nothing can ever resolve outside the mount's prefix. The other way round, a name the kernel
passes that is not UTF-8 (``os.fsdecode`` turns its bytes into lone surrogates) can name no key.
"""

from __future__ import annotations

NAME_MAX = 255  # Linux's limit for one path component, in bytes
KEY_MAX = 1024  # S3's limit for a whole object key, in UTF-8 bytes


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file name, or None when it can."""
    if name in ("", ".", ".."):
        return "is empty, '.' or '..'"
    if "/" in name or "\0" in name:
        return "contains '/' or NUL"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # S3 keys are UTF-8: no request could even be made for it
        return "is not valid UTF-8"
    if size > NAME_MAX:
        return f"is longer than {NAME_MAX} bytes"
    return None
