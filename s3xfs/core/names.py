"""Which object keys can appear as paths, under DESIGN.md's name rules.

A key becomes a path component only if the component is a valid Linux file name: not empty
(``a//b``), not ``.`` or ``..``, no NUL, at most 255 bytes. Other keys are hidden (and logged once),
so nothing can ever resolve outside the mount's prefix.
"""

from __future__ import annotations

NAME_MAX = 255  # Linux's limit for one path component, in bytes


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file name, or None when it can."""
    if name in ("", ".", ".."):
        return "is empty, '.' or '..'"
    if "/" in name or "\0" in name:
        return "contains '/' or NUL"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"is longer than {NAME_MAX} bytes"
    return None
